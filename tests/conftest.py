"""Shared test set-up: headless rendering; helpers live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
