"""What SAC+AE and SLAC share as torch agents: named networks and optimizers, a learned
temperature, checkpoint state, train/eval mode and the optional bf16 autocast."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from train.checkpoint import CheckpointError


class SacFamilyAgent:
    """Subclasses set cfg, device, log_alpha and define modules() and optimizers()."""

    cfg: Any
    device: torch.device
    log_alpha: torch.Tensor

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: m.state_dict() for k, m in self.modules().items()}
        out.update({k: o.state_dict() for k, o in self.optimizers().items()})
        out["log_alpha"] = self.log_alpha.detach().clone()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            own = m.state_dict()
            if any(own[n].dim() == 2 and t.dim() == 4 for n, t in state.get(k, {}).items() if n in own):
                raise CheckpointError(f"the checkpoint's {k} weights come from a version whose fast layers kept 4-d "
                                      f"linear weights (before `backend`); resume or export it with that version")
            try:
                m.load_state_dict(state[k])
            except RuntimeError as exc:  # shapes or names that are not this agent's
                first = str(exc).strip().splitlines()[-1].strip()
                raise CheckpointError(f"the checkpoint's {k} weights do not fit this run's networks "
                                      f"(another configuration, or a version before a layer change): {first}") from None
        for k, o in self.optimizers().items():
            o.load_state_dict(state[k])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])

    def train_mode(self, training: bool) -> None:
        for m in self.modules().values():
            m.train(training)

    @staticmethod
    def _descend(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """One step of `opt` on `loss`, the gradients computed for opt's parameters only: the actor
        loss runs through the critic, whose gradients it would otherwise compute and then discard."""
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=[p for group in opt.param_groups for p in group["params"]])
        opt.step()

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast where cfg.bf16 asks for it (each agent decides which passes run under it)."""
        if self.cfg.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
