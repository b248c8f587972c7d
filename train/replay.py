"""Frame-once replay: every rendered frame is stored once (uint8); stacks and sequence windows are
rebuilt at sample time.

Layout: a ring of `capacity` slots. Each agent step writes one slot: the observation it produced
(a (3, H, W) frame, or a state vector), the action that led to it, the reward and discount, and the
slot's step index within its episode (0 for the first observation after a reset). A transition
(o_t, a, r, o_{t+1}) is the pair of consecutive slots (g, g+1) with step(g+1) > 0, so a reset never
joins two episodes. History before an episode's start is padded by one rule, shared by stacks and
SLAC windows and the runtime: repeat the episode's first frame, zero the actions and rewards
(`sacae_deploy.history.history_index`, the contract's PADDING_RULE).

Per slot at 84x84: 21,168 B of frame + 4*A (action) + 4 (reward) + 4 (discount) + 4 (step).
The reference implementation stores obs and next_obs stacks per transition (127,040 B).

On a GPU the observations are mirrored on the device (`device=`): an update gathers its batch
there from indices drawn on the host, so no pixels cross the bus and nothing waits for the GPU
inside an update. The host copy stays the one that checkpoints read.

Checkpoints are chunked: a chunk file that did not change since the previous checkpoint is
hard-linked instead of written again, so saving a large buffer costs only what is new. Loading
checks every chunk's arrays against the buffer's shapes, and numpy's zip reader their CRC-32.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sacae_deploy.errors import SacaeError
from sacae_deploy.files import fsync_dir, synced
from sacae_deploy.history import history_index
from train.checkpoint import CheckpointError

CHUNK_SLOTS = 4096


class ReplayError(SacaeError, ValueError):
    """A replay size that cannot work (e.g. does not fit in memory)."""


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); a very large number where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


class FrameReplay:
    """`sample` and `sample_windows` return observations as numpy arrays, or as torch tensors on
    `device` where one is given (the other fields stay small numpy arrays)."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: Any, action_dim: int,
                 check_memory: bool = True, headroom_bytes: int = 2 << 30, device: torch.device | None = None,
                 max_writes: int | None = None) -> None:
        """`max_writes`: the most slots the run will ever write (None: unknown). Host memory is
        committed only as slots are written, so the memory check counts min(capacity, max_writes)."""
        if capacity < 2:
            raise ReplayError(f"replay capacity must be at least 2, got {capacity}")
        self.capacity = capacity
        self.obs_shape = tuple(obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.action_dim = action_dim
        need = capacity * self.bytes_per_slot()
        used = min(capacity, max_writes or capacity)  # slots this run can fill
        committed = used * self.bytes_per_slot()
        avail = available_memory_bytes()
        if check_memory and committed > avail - headroom_bytes:
            filled = "" if used == capacity else f" (this run fills {used:,} of them)"
            raise ReplayError(
                f"replay of {capacity:,} transitions{filled} needs {committed / 2**30:.1f} GiB but only "
                f"{max(avail - headroom_bytes, 0) / 2**30:.1f} GiB is available "
                f"(after {headroom_bytes / 2**30:.0f} GiB headroom); lower it with --set replay_capacity=N")
        # np.zeros maps pages lazily: memory is committed as slots are written.
        self.obs = np.zeros((capacity, *self.obs_shape), dtype=self.obs_dtype)
        self.device_obs = None if device is None else self._device_mirror(device, need, check_memory)
        self.action = np.zeros((capacity, action_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.discount = np.zeros(capacity, dtype=np.float32)
        self.step = np.zeros(capacity, dtype=np.int32)  # index of the slot within its episode
        self.total = 0  # slots ever written; slot of global index g is g % capacity
        self._dirty: set[int] = set()  # chunks written since the last save

    def _device_mirror(self, device: torch.device, need: int, check_memory: bool) -> torch.Tensor:
        if check_memory and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if need > free // 2:  # the other half is for the networks' weights and activations
                raise ReplayError(f"replay of {self.capacity:,} transitions needs {need / 2**30:.1f} GiB of GPU memory "
                                  f"but {free / 2**30:.1f} GiB is free; lower it with --set replay_capacity=N")
        dtype = torch.from_numpy(self.obs[:0]).dtype
        return torch.zeros((self.capacity, *self.obs_shape), dtype=dtype, device=device)

    def _observations(self, index: np.ndarray) -> np.ndarray | torch.Tensor:
        """obs[index] (any index shape), gathered where the observations live."""
        if self.device_obs is None:
            return self.obs[index]
        return self.device_obs[torch.from_numpy(index).to(self.device_obs.device, non_blocking=True)]

    # ------------------------------------------------------------------ writing
    def bytes_per_slot(self) -> int:
        return int(np.prod(self.obs_shape)) * self.obs_dtype.itemsize + 4 * self.action_dim + 4 + 4 + 4

    def _write(self, obs: np.ndarray, action: np.ndarray | None, reward: float, discount: float, step: int) -> None:
        i = self.total % self.capacity
        self.obs[i] = obs
        if self.device_obs is not None:
            self.device_obs[i].copy_(torch.from_numpy(self.obs[i]))
        self.action[i] = 0.0 if action is None else action
        self.reward[i] = reward
        self.discount[i] = discount
        self.step[i] = step
        self._dirty.add(i // CHUNK_SLOTS)
        self.total += 1

    def add_first(self, obs: np.ndarray) -> None:
        """The first observation of an episode (no action led to it)."""
        self._write(obs, None, 0.0, 1.0, 0)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, discount: float) -> None:
        """The observation produced by `action`, with its reward and discount (0 only at a terminal)."""
        if self.total == 0:
            raise ReplayError("add_first must start an episode before add")
        prev = self.step[(self.total - 1) % self.capacity]
        self._write(obs, action, reward, discount, int(prev) + 1)

    def __len__(self) -> int:
        """Number of transitions currently sampleable (approximately: slots minus episode starts)."""
        return min(self.total, self.capacity)

    # ------------------------------------------------------------------ sampling
    def _oldest(self) -> int:
        return max(0, self.total - self.capacity)

    def _draw(self, rng: np.random.Generator, batch: int, history: int, need_next: bool) -> np.ndarray:
        """Global indices g whose history back to g-history (clamped at the episode start) is still stored."""
        lo, hi = self._oldest(), self.total - (2 if need_next else 1)
        if hi < lo:
            raise ReplayError("replay holds no complete transition yet")
        out: list[np.ndarray] = []
        got = 0
        for _ in range(1000):
            g = rng.integers(lo, hi + 1, size=2 * batch + 8)
            s = self.step[g % self.capacity]
            ok = g - np.minimum(history, s) >= lo
            if need_next:
                ok &= self.step[(g + 1) % self.capacity] > 0
            g = g[ok]
            out.append(g)
            got += len(g)
            if got >= batch:
                return np.concatenate(out)[:batch]
        raise ReplayError("could not draw valid transitions (are all episodes a single step?)")

    def _history_index(self, g: np.ndarray, back: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots of frames g-back..g (oldest first), repeating the episode's first frame before its
        start, and which of the `back` actions between them are real (the padding rule)."""
        steps_back, real = history_index(self.step[g % self.capacity], back + 1)
        return (g[:, None] - steps_back) % self.capacity, real

    def sample(self, batch: int, rng: np.random.Generator, stack: int) -> dict[str, Any]:
        """SAC batch: obs and next_obs as (B, stack*C, H, W) (or (B, S) for states), action, reward, discount."""
        g = self._draw(rng, batch, stack - 1, need_next=True)
        idx, _ = self._history_index(g, stack - 1)
        nxt = (g + 1) % self.capacity
        frames = self._observations(np.concatenate([idx, nxt[:, None]], axis=1))  # (B, stack+1, ...)
        b = len(g)
        obs = frames[:, :stack].reshape(b, -1, *self.obs_shape[1:])
        next_obs = frames[:, 1:].reshape(b, -1, *self.obs_shape[1:])
        return {
            "obs": obs,
            "action": self.action[nxt],
            "reward": self.reward[nxt],
            "discount": self.discount[nxt],
            "next_obs": next_obs,
        }

    def sample_windows(self, batch: int, rng: np.random.Generator, length: int,
                       distinct: bool = False) -> dict[str, Any]:
        """SLAC windows ending at a random slot g: frames g-length..g (B, length+1, *obs_shape) and the
        `length` actions/rewards/discounts leading to frames g-length+1..g. Before the episode start the
        first frame is repeated and actions/rewards are zero (PADDING_RULE); `valid` marks real steps;
        `frame_slots` (B, length+1) says which stored frame each one is (windows share frames where
        they overlap, and padding repeats one).

        `distinct=True` gathers each of those stored frames once, for a consumer that encodes each
        frame once: "frames" is then (K, *obs_shape), the distinct frames in slot order, and
        "frame_of" (B, length+1) each window position's row in it. The same windows from the same rng."""
        g = self._draw(rng, batch, length, need_next=False)
        idx, valid = self._history_index(g, length)
        step_idx = idx[:, 1:]
        # Action/reward at a padded position, or at an episode's first slot, is not a real step.
        mask = valid.astype(np.float32)
        out = {
            "action": self.action[step_idx] * mask[..., None],
            "reward": self.reward[step_idx] * mask,
            "discount": np.where(valid, self.discount[step_idx], 1.0).astype(np.float32),
            "valid": valid,
            "frame_slots": idx,
        }
        if distinct:
            slots, frame_of = np.unique(idx, return_inverse=True)
            out["frames"], out["frame_of"] = self._observations(slots), frame_of.reshape(idx.shape)
        else:
            out["frames"] = self._observations(idx)
        return out

    # ------------------------------------------------------------------ checkpointing
    _ARRAYS = ("obs", "action", "reward", "discount", "step")

    @staticmethod
    def _layout(filled: int) -> list[tuple[str, slice]]:
        """File name and slots of each chunk that holds `filled` slots."""
        return [(f"chunk{c:05d}.npz", slice(c * CHUNK_SLOTS, min((c + 1) * CHUNK_SLOTS, filled)))
                for c in range((filled + CHUNK_SLOTS - 1) // CHUNK_SLOTS)]

    def _chunks(self, previous: Path | None) -> list[tuple[str, slice, Path | None]]:
        """The chunks to save, each with the file of `previous` to hard-link instead (None: write it)."""
        out = []
        for c, (name, sl) in enumerate(self._layout(min(self.total, self.capacity))):
            old = previous / name if previous is not None and c not in self._dirty else None
            out.append((name, sl, old if old is not None and old.exists() else None))
        return out

    def save_size(self, previous: Path | None = None) -> int:
        """Bytes `save` writes (npz and meta.json headers aside): what a disk must have free."""
        written = [sl for _, sl, link in self._chunks(previous) if link is None]
        return sum(sl.stop - sl.start for sl in written) * self.bytes_per_slot()

    def save(self, directory: Path, previous: Path | None = None) -> None:
        """Write the buffer into `directory` (new), fsynced; unchanged chunks are hard-linked from `previous`."""
        directory.mkdir(parents=True, exist_ok=False)
        chunks = self._chunks(previous)
        for name, sl, link in chunks:
            if link is not None:
                os.link(link, directory / name)
                continue
            with synced(directory / name) as fh:
                np.savez(fh, **{a: getattr(self, a)[sl] for a in self._ARRAYS})
        meta = {"total": self.total, "capacity": self.capacity, "obs_shape": list(self.obs_shape),
                "obs_dtype": self.obs_dtype.str, "action_dim": self.action_dim, "chunks": len(chunks)}
        with synced(directory / "meta.json") as fh:
            fh.write(json.dumps(meta).encode())
        fsync_dir(directory)
        self._dirty.clear()

    def load(self, directory: Path) -> None:
        """Fill the buffer from a checkpoint; a damaged one is a one-line CheckpointError (numpy's zip
        reader checks each chunk's CRC-32), one of another shape a ReplayError."""
        def damaged(why: str) -> CheckpointError:
            return CheckpointError(f"checkpoint replay {directory} is damaged: {why}")

        try:
            meta = json.loads((directory / "meta.json").read_text())
            total, chunks, capacity, obs_shape = meta["total"], meta["chunks"], meta["capacity"], meta["obs_shape"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise damaged(f"meta.json is unreadable ({type(exc).__name__})") from None
        if capacity != self.capacity or not isinstance(obs_shape, list) or tuple(obs_shape) != self.obs_shape:
            raise ReplayError(f"checkpointed replay {directory} has capacity {capacity} and obs "
                              f"{obs_shape}, this run expects {self.capacity} and {list(self.obs_shape)}")
        if type(total) is not int or total < 0:
            raise damaged(f"meta.json total is {total!r}, not a count of slots")
        layout = self._layout(min(total, self.capacity))
        if chunks != len(layout):
            raise damaged(f"meta.json lists {chunks!r} chunks, its total of {total} slots needs {len(layout)}")
        for name, sl in layout:
            try:
                with np.load(directory / name, allow_pickle=False) as data:
                    for a in self._ARRAYS:
                        arr, into = data[a], getattr(self, a)
                        want = (sl.stop - sl.start, *into.shape[1:])
                        if arr.dtype != into.dtype or arr.shape != want:
                            raise damaged(f"{name} holds {a} as {arr.dtype} {list(arr.shape)}, "
                                          f"expected {into.dtype} {list(want)}")
                        into[sl] = arr
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                raise damaged(f"{name} is unreadable ({type(exc).__name__})") from None
        if self.device_obs is not None:
            self.device_obs.copy_(torch.from_numpy(self.obs))
        self.total = total
        self._dirty.clear()
