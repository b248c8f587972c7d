"""Helpers shared by test modules (tests/ is on sys.path under pytest, so `from helpers import ...`)."""

from __future__ import annotations

import os
import subprocess
import sys
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


def export_tiny_sac(path: Path, env: str = "cartpole-swingup", size: int = 32, action_repeat: int = 8) -> tuple[Any, Any]:
    """An untrained smoke-size SAC+AE agent exported to `path` (a fixed random policy: parity, not skill)."""
    import torch

    from export import export_agent
    from export.metadata import env_facts
    from train.config import resolve
    from train.sac import SacAgent

    torch.manual_seed(0)
    cfg = resolve("sac-ae", "smoke", env=env, image_size=size, action_repeat=action_repeat, channels_last=False)
    agent = SacAgent(cfg, (3 * cfg.frame_stack, size, size), 1, torch.device("cpu"))
    agent.train_mode(False)
    export_agent(agent, cfg, env_facts(cfg), path)
    return cfg, agent
