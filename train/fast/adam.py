"""Fused Adam and soft updates for the fast-cpu backend."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from train import torch_utils
from train.fast import support


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """t's elements as a 1-d view in memory order where t is contiguous or channels_last; t otherwise."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return t


def _like(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """t in p's memory layout: itself, or (a gradient assigned by hand, moments loaded from another
    layout) a copy."""
    return t if t.stride() == p.stride() else torch.empty_like(p).copy_(t)


class FusedAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True): the same kernel, update and state, bit for bit. On the CPU each
    parameter reaches the kernel with its gradient and moments as 1-d views in memory order: the
    kernel copies every non-contiguous tensor (a channels_last conv weight, its gradient and
    moments) to a contiguous buffer and back otherwise. A gradient or moment laid out unlike its
    parameter is brought to the parameter's layout first: torch's CPU kernel pairs their elements in
    memory order and so updates the wrong weights (measured with torch 2.13). On a GPU, or
    capturable (CUDA graphs), torch's own step."""

    def __init__(self, params: Iterable[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, capturable: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True, capturable=capturable)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        groups = self.param_groups
        if closure is not None or self.defaults["capturable"] or any(
                p.device.type != "cpu" for g in groups for p in g["params"]):
            return super().step(closure)
        for group in groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            steps: list[torch.Tensor] = []
            self._init_group(group, params, grads, [], [], [], steps)
            if not params:
                continue
            moments = []
            for p in params:
                state = self.state[p]
                state["exp_avg"], state["exp_avg_sq"] = _like(state["exp_avg"], p), _like(state["exp_avg_sq"], p)
                moments.append((state["exp_avg"], state["exp_avg_sq"]))
            flat = [[_memory_order(t) for t in (p, _like(g, p), *m)] for p, g, m in zip(params, grads, moments)]
            torch._foreach_add_(steps, 1)  # as torch's fused path: count, then step
            beta1, beta2 = group["betas"]
            torch._fused_adam_(*(list(ts) for ts in zip(*flat)), [], steps, amsgrad=False, lr=group["lr"],
                               beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                               maximize=False, grad_scale=None, found_inf=None)
        return None


def adam(params: Iterable[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0,
         capturable: bool = False) -> torch.optim.Adam:
    """FusedAdam where this torch has its kernel; torch.optim.Adam otherwise (the same update)."""
    if support.FUSED_ADAM:
        return FusedAdam(params, lr, betas, weight_decay, capturable)
    return torch_utils.adam(params, lr, betas, weight_decay, capturable)


@torch.no_grad()
def soft_update(source: nn.Module, target: nn.Module, tau: float) -> None:
    """torch_utils.soft_update in one foreach call."""
    tgt, src = list(target.parameters()), list(source.parameters())
    if not support.FOREACH_LERP:
        torch_utils.soft_update(source, target, tau)
    elif tgt:
        torch._foreach_lerp_(tgt, src, tau)
