"""Helpers shared by test modules (tests/ is on sys.path under pytest, so `from helpers import ...`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SACAE = [sys.executable, "-m", "sacae_deploy.cli"]


def sacae(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, capturing output."""
    proc = subprocess.run([*SACAE, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl")))
    if check and proc.returncode != 0:
        raise AssertionError(f"sacae {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def export_tiny_sac(path: Path, env: str = "cartpole-swingup", size: int = 32,
                    action_repeat: int = 8) -> tuple[Any, Any]:
    """An untrained smoke-size SAC+AE agent exported to `path` (a fixed random policy: parity, not skill)."""
    import torch

    from export import export_agent
    from export.metadata import env_facts
    from train.config import resolve
    from train.sac import SacAgent

    torch.manual_seed(0)
    cfg = resolve("sac-ae", "smoke", env=env, image_size=size, action_repeat=action_repeat)
    agent = SacAgent(cfg, (3 * cfg.frame_stack, size, size), 1, torch.device("cpu"))
    agent.train_mode(False)
    export_agent(agent, cfg, env_facts(cfg), path)
    return cfg, agent


@dataclass
class Run:
    """A `sacae train`-shaped run directory built without training (see make_run)."""

    algo: str
    dir: Path
    cfg: Any
    agent: Any  # the agent whose weights the checkpoint holds (training layout, untouched by export)


def make_run(root: Path, algo: str) -> Run:
    """A `sacae train`-shaped directory under root/algo: config.json + checkpoints/ with non-trivial weights.

    Smoke networks on cartpole-swingup, weights perturbed (zero biases and unit LayerNorms would leave
    parts of an exported graph untested), a real checkpoint via train.checkpoint.
    """
    import torch

    from train import checkpoint
    from train import config as TC
    from train.workspace import make_agent

    cfg = TC.resolve(algo, "smoke", env="cartpole-swingup")
    shape = {"sac-state": (5,), "slac": (3, 64, 64)}.get(algo, (3 * cfg.frame_stack, cfg.image_size, cfg.image_size))
    torch.manual_seed(0)
    agent = make_agent(cfg, shape, 1, torch.device("cpu"))
    with torch.no_grad():
        for module in agent.modules().values():
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    agent.train_mode(False)
    run_dir = root / algo
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(TC.to_dict(cfg)))
    checkpoint.save(run_dir, 400, agent.state_dict(), {"env_step": 400}, None)
    return Run(algo, run_dir, cfg, agent)


class Exports:
    """Runs per algorithm (make_run) and their ONNX exports, each built on first use under `root`.

    One instance per directory: the cache belongs to the instance, so two roots never share (or
    silently reuse) each other's runs. The session's instance is conftest's `exports` fixture.
    Exports use the default (dynamo) exporter, except SLAC's stateless graph (legacy: a second
    exporter covered).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._runs: dict[str, Run] = {}
        self._paths: dict[tuple[str, str | None], Path] = {}

    def run(self, algo: str) -> Run:
        if algo not in self._runs:
            self._runs[algo] = make_run(self.root, algo)
        return self._runs[algo]

    def __call__(self, algo: str, history: str | None = None) -> tuple[Run, Path]:
        """The run of `algo` and its export (`history`: SLAC's graph, None = the default stateful one)."""
        from export import export_run

        run = self.run(algo)
        if (algo, history) not in self._paths:
            out = run.dir / ("policy.onnx" if history is None else f"{history}.onnx")
            self._paths[algo, history] = export_run(run.dir, out, history, legacy=history == "stateless").path
        return run, self._paths[algo, history]
