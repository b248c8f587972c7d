"""Shared test set-up: headless rendering and the path to the `sacae` executable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

SACAE = [sys.executable, "-m", "sacae_deploy.cli"]


def sacae(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, capturing output."""
    proc = subprocess.run([*SACAE, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, MUJOCO_GL=os.environ["MUJOCO_GL"]))
    if check and proc.returncode != 0:
        raise AssertionError(f"sacae {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
