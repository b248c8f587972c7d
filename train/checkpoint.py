"""Crash-safe checkpoints: write new, then switch. A `kill -9` at any instant leaves the last
published checkpoint intact, and a damaged one is named, never silently used.

    DIR/checkpoints/step_000010000/agent.pt       agent + optimizer state, torch RNG (torch.save)
                                  /state.json      counters and the numpy RNG state
                                  /replay/         the replay buffer (chunked; unchanged chunks hard-linked)
                                  /manifest.json   every file's size; blake2b of all but the replay chunks
    DIR/checkpoints/latest                         name of the published checkpoint

A save writes `.step_N.tmp/`, fsyncs it, renames it to `step_N` (`step_N.K` when that name is taken:
a re-saved step never removes the published checkpoint first), fsyncs the folder, switches `latest`,
and only then deletes the older ones. Replay chunks are checked by size here and by the CRC-32 that
numpy's zip reader verifies as they load: hashing gigabytes of replay would cost as much as writing it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from sacae_deploy.errors import SacaeError
from sacae_deploy.files import atomic_write_text, crash_point, fsync_dir, space_for, synced

MANIFEST = "manifest.json"
_NAME = re.compile(r"step_(\d{9})(?:\.(\d+))?")
_REQUIRED = ("agent.pt", "state.json")


class CheckpointError(SacaeError, RuntimeError):
    """A checkpoint that is missing or cannot be read."""


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is damaged: {why}")


def _order(name: str) -> tuple[int, int] | None:
    """(step, re-save index) of a checkpoint folder's name; None for anything else."""
    m = _NAME.fullmatch(name)
    return (int(m[1]), int(m[2] or 0)) if m else None


def _folders(root: Path) -> list[Path]:
    """The checkpoint folders under `root` (published or not), newest first."""
    found = [p for p in root.iterdir() if p.is_dir() and _order(p.name)] if root.is_dir() else []
    return sorted(found, key=lambda p: _order(p.name) or (0, 0), reverse=True)


def candidates(run_dir: Path) -> tuple[list[Path], str | None]:
    """Checkpoints to continue from, best first: the one `latest` names, then every other, newest
    first. The second value says what is wrong with `latest` (None when it names a folder, or when
    there is neither a pointer nor a checkpoint: a run killed before its first save)."""
    root = run_dir / "checkpoints"
    found = _folders(root)
    try:
        name = (root / "latest").read_text().strip()
    except FileNotFoundError:
        return found, "checkpoints/latest is missing" if found else None
    except (OSError, UnicodeDecodeError):
        name = "?"
    if _order(name) is None:
        return found, f"checkpoints/latest is not a checkpoint name ({name[:40]!r})"
    if root / name not in found:
        return found, f"checkpoints/latest names {name}, which does not exist"
    return [root / name] + [p for p in found if p.name != name], None


def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=32).hexdigest()


def _manifest(folder: Path) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = f.relative_to(folder).as_posix()
        files[rel] = {"size": f.stat().st_size}
        if not rel.startswith("replay/chunk"):
            files[rel]["blake2b"] = _digest(f)
    return {"files": files, "unhashed": "replay chunks: size here, CRC-32 of each npz member on load"}


def verify(path: Path) -> None:
    """Raise a one-line CheckpointError unless every file the manifest lists has its size and hash."""
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
        entries = [(rel, int(want["size"]), want.get("blake2b")) for rel, want in files.items()]
    except FileNotFoundError:
        raise _damaged(path, f"{MANIFEST} is missing (an unfinished save, or one from a version "
                             "before checkpoints were verified)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _damaged(path, f"{MANIFEST} is unreadable ({type(exc).__name__})") from None
    for rel in _REQUIRED:
        if rel not in files:
            raise _damaged(path, f"{MANIFEST} does not list {rel}")
    for rel, size, digest in entries:
        try:
            have = (path / rel).stat().st_size
        except OSError:
            raise _damaged(path, f"{rel} is missing") from None
        if have != size:
            raise _damaged(path, f"{rel} has {have:,} bytes, the manifest says {size:,}")
        if digest is not None and _digest(path / rel) != digest:
            raise _damaged(path, f"{rel} does not match its blake2b in the manifest")


def _free_name(root: Path, env_step: int) -> str:
    """`step_N`, or `step_N.K` past the highest K taken (a published step_N is never overwritten)."""
    orders = [_order(p.name) for p in root.iterdir()]
    taken = [o[1] for o in orders if o is not None and o[0] == env_step]
    base = f"step_{env_step:09d}"
    return f"{base}.{max(taken) + 1}" if taken else base


def _remove(path: Path) -> None:
    """Hide a folder under a dot name first, so that a kill during the removal leaves no half
    checkpoint under a checkpoint's name (dot names are cleared at the next save)."""
    hidden = path.with_name(f".{path.name}.del")
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def save(run_dir: Path, env_step: int, agent_state: dict[str, Any], state: dict[str, Any], replay: Any,
         previous: Path | None = None) -> Path:
    """Write and publish a checkpoint; `previous` (the checkpoint this run last loaded or saved) lends
    its unchanged replay chunks as hard links. Returns the new checkpoint's folder."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".*"):  # a killed save's temp folder, a killed removal, a temp pointer
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    name = _free_name(root, env_step)
    tmp, final = root / f".{name}.tmp", root / name
    rng = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # the GPU's generator draws on-device noise
        rng["cuda_rng"] = torch.cuda.get_rng_state()
    buffer = io.BytesIO()  # serialized here, written below: a full disk is then an OSError, not torch's RuntimeError
    torch.save({**agent_state, **rng}, buffer)
    weights, counters = buffer.getvalue(), json.dumps(state).encode()
    prev_replay = previous / "replay" if previous is not None and replay is not None else None
    need = len(weights) + len(counters) + (replay.save_size(prev_replay) if replay is not None else 0)
    with space_for(root, need, f"checkpoint {name}"):
        try:
            tmp.mkdir()
            with synced(tmp / "agent.pt") as fh:
                fh.write(weights)
            crash_point("ckpt-agent")
            with synced(tmp / "state.json") as fh:
                fh.write(counters)
            if replay is not None:
                replay.save(tmp / "replay", prev_replay)
                crash_point("ckpt-replay")
            manifest = json.dumps(_manifest(tmp)).encode()
            with synced(tmp / MANIFEST) as fh:
                fh.write(manifest)
            fsync_dir(tmp)
            os.replace(tmp, final)
            fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    crash_point("ckpt-renamed")
    atomic_write_text(root / "latest", name)
    crash_point("ckpt-switched")
    for old in _folders(root):  # older checkpoints (and their hard links) are no longer needed
        if old != final:
            _remove(old)
    return final


def load(path: Path, device: torch.device | str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (agent state incl. torch_rng, counters) of a verified checkpoint. Safe: weights_only=True
    rejects pickled code."""
    verify(path)
    try:
        agent_state = torch.load(path / "agent.pt", map_location=device, weights_only=True)
    except Exception as exc:  # torch's weights-only unpickler fails on foreign bytes with IndexError,
        # KeyError, UnicodeDecodeError, UnpicklingError, ... : every one means the same to the user
        raise _damaged(path, f"agent.pt is not a weights file torch can read ({type(exc).__name__})") from None
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise _damaged(path, f"state.json is unreadable ({type(exc).__name__})") from None
    if not isinstance(agent_state, dict) or not isinstance(state, dict):
        raise _damaged(path, "agent.pt or state.json does not hold a mapping")
    return agent_state, state


def load_agent_weights(run_dir: Path, device: torch.device | str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """The newest checkpoint's weights (for export): a damaged one is an error, not a quiet fallback."""
    paths, _ = candidates(run_dir)
    if not paths:
        raise CheckpointError(f"{run_dir} has no checkpoint (is it a `sacae train` output directory?)")
    return load(paths[0], device)
