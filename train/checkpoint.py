"""Crash-safe checkpoints: each one is a new directory, published by an atomic rename and an atomic
`latest` pointer, so a `kill -9` at any moment leaves the previous checkpoint intact.

    DIR/checkpoints/step_000010000/agent.pt   agent + optimizer state, torch RNG (torch.save)
                                  /state.json  counters and the numpy RNG state
                                  /replay/     the replay buffer (chunked; unchanged chunks hard-linked)
    DIR/checkpoints/latest                     name of the newest complete checkpoint
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from sacae_deploy.errors import SacaeError
from sacae_deploy.files import atomic_write_text


class CheckpointError(SacaeError, RuntimeError):
    """A checkpoint that is missing or cannot be read."""



def latest(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def save(run_dir: Path, env_step: int, agent_state: dict[str, Any], state: dict[str, Any], replay: Any) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{env_step:09d}"
    final, tmp = root / name, root / f".{name}.tmp"
    for stale in (tmp, final):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    previous = latest(run_dir)
    rng = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # the GPU's generator draws on-device noise
        rng["cuda_rng"] = torch.cuda.get_rng_state()
    torch.save({**agent_state, **rng}, tmp / "agent.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    if replay is not None:
        replay.save(tmp / "replay", previous / "replay" if previous is not None else None)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", name)
    for old in root.iterdir():  # older checkpoints (and their hard links) are no longer needed
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, device: torch.device | str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (agent state incl. torch_rng, counters). Safe: weights_only=True rejects pickled code."""
    try:
        agent_state = torch.load(path / "agent.pt", map_location=device, weights_only=True)
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    return agent_state, state


def load_agent_weights(run_dir: Path, device: torch.device | str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    path = latest(run_dir)
    if path is None:
        raise CheckpointError(f"{run_dir} has no checkpoint (is it a `sacae train` output directory?)")
    return load(path, device)
