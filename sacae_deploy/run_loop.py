"""The control loop behind `sacae run`: one decision every K frames, the action held in between.

Why: training saw the world through ActionRepeat + FrameStack. Consecutive stacked frames were one
agent step (K = action_repeat control steps) apart, and each action was held for K control steps.
A camera delivers one frame per control step, so the loop decides on frames 0, K, 2K, ... of each
episode (of the stream, for non-episodic sources), feeds the policy ONLY those frames (its internal
stack then holds frames K apart, exactly as in training), and repeats the last action on the K-1
frames in between. `policy.reset()` runs at the start of the stream and of every episode.

Pacing (`realtime=True`) runs on a fixed grid of slots t0 + j*dt of a monotonic clock (dt = the
control timestep). A frame is released at its slot (the loop sleeps until then), read, processed
and written, and is due by the next slot. A frame that ends after that deadline is an overrun; the
loop then re-anchors on the grid: the next frame is released at the first slot still in the
future. Slots are skipped, frames never are: every frame a source delivers is processed, one per
slot, so after a late frame the next one starts at least dt after the late one started: no bursts
of back-to-back frames to catch up (a live camera's driver decides which frames it keeps meanwhile;
a simulated camera simply runs slower than real time). A decision whose action is ready only after
its frame's deadline is late: that frame keeps the held action (an actuator could not have had the
new one in time) and the new action takes effect from the next frame.

Actions: the policy returns them finite and inside its bounds (clipping counted in `policy.stats`);
each JSON line says whether the action in effect was clipped, and a non-finite graph output ends the
run with NonFiniteActionError naming the frame, before anything reaches the source or the lines.

The first frame is fetched before the clock starts (opening a camera or building a scene is not
frame time), so t0 is the release of frame 0.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, Protocol

import numpy as np

from sacae_deploy.errors import NonFiniteActionError, SacaeError
from sacae_deploy.sources import AreaResize, FrameSource, check_frame, open_source

if TYPE_CHECKING:
    from sacae_deploy.policy import ActionStats

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class RunError(SacaeError, ValueError):
    """A loop setting the policy cannot run with."""


class PolicyLike(Protocol):
    """What the loop needs of `sacae_deploy.policy.Policy` (tests pass a fake with the same shape)."""

    action_repeat: int
    image_size: int
    control_timestep: float
    stats: "ActionStats"

    def reset(self) -> None:
        """Start an episode: the next frame is treated as the first one."""

    def act(self, frame: np.ndarray) -> np.ndarray:
        """One RGB frame in, the action to take (the task's units) out."""


@dataclass
class Summary:
    """What a run did; `latency_ms` is `policy.act` time per decision."""

    frames: int
    decisions: int
    action_repeat: int
    realtime: bool
    control_timestep: float
    wall_s: float
    rate_hz: float  # frames processed per second of wall time
    act_s: float  # total time inside policy.act (wall_s - act_s is the loop's own cost, plus pacing sleeps)
    latency_ms: dict[str, float | None]  # p50, p95, p99, max, mean
    overruns: int  # frames that ended after their deadline (realtime only)
    late_decisions: int  # decisions whose action was ready after their frame's deadline (realtime only)
    clipped: int  # decisions whose action the policy clipped to its bounds
    episode_returns: list[float] = field(default_factory=list)  # finished episodes (dmc)
    partial_return: float | None = None  # reward of an episode cut short by --max-frames or Ctrl-C
    interrupted: bool = False  # ended by Ctrl-C

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready data (`--summary-json`)."""
        return asdict(self)


def latency_stats(latencies_s: list[float]) -> dict[str, float | None]:
    """Percentiles, max and mean of the latencies in ms; all None when there were none."""
    if not latencies_s:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ms = np.asarray(latencies_s) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(ms.max()), "mean": float(ms.mean())}


class _Decided(NamedTuple):
    """A decision's action and whether the policy had to clip it (both travel while it is held)."""

    action: np.ndarray
    clipped: bool


def run_loop(policy: PolicyLike, source: FrameSource | Iterable[np.ndarray], *,
             action_repeat: int | None = None, realtime: bool = False, control_timestep: float | None = None,
             max_frames: int | None = None,
             on_frame: Callable[[dict[str, Any]], None] | None = None,
             record: Callable[[np.ndarray], None] | None = None,
             on_episode_end: Callable[[int, float], None] | None = None,
             clock: Clock = time.perf_counter, sleep: Sleep = time.sleep) -> Summary:
    """Drive `policy` on `source` until the source ends, `max_frames` frames, or Ctrl-C.

    on_frame gets one record per frame (the JSON-lines schema in docs/run.md); record gets every
    frame as the source delivered it; on_episode_end(episode, return) fires as episodes finish.
    `clock`/`sleep` are injectable so pacing can be tested on a fake clock.
    """
    k = int(action_repeat if action_repeat is not None else policy.action_repeat)
    if k < 1:
        raise RunError(f"action repeat must be at least 1, got {k}")
    dt = float(control_timestep if control_timestep is not None else policy.control_timestep)
    if realtime and not dt > 0:
        raise RunError(f"--realtime needs a positive control timestep, got {dt}")
    src = open_source(source, image_size=policy.image_size)
    resize = AreaResize(policy.image_size)
    returns: list[float] | None = getattr(src, "episode_returns", None)

    latencies: list[float] = []
    n = late_count = overruns = clipped = 0
    episode: int | None = None
    step = 0  # frame index within the episode (the stream, for non-episodic sources)
    held: _Decided | None = None  # the action in effect
    pending: _Decided | None = None  # a late decision's action, in effect from the next frame
    ep_reward, returns_seen, interrupted = 0.0, 0, False
    start = clock()
    frames = iter(src)
    try:
        raw = next(frames, None)
        if raw is None:
            raise RunError("the source delivered no frames")
        t0 = start = clock()
        slot = 0
        while raw is not None:
            deadline = t0 + (slot + 1) * dt
            if src.episode != episode:
                episode, step, held, pending = src.episode, 0, None, None
                policy.reset()
            check_frame(raw, n)
            if record is not None:
                record(raw)
            if pending is not None:
                held, pending = pending, None
            decision = step % k == 0
            latency: float | None = None
            late = False
            is_held = not decision
            if decision:
                frame = resize(raw)
                clipped_before = policy.stats.clipped
                ta = clock()
                try:
                    chosen = policy.act(frame)
                except NonFiniteActionError as exc:
                    raise NonFiniteActionError(f"frame {n}: {exc}") from None
                tb = clock()
                action = _Decided(chosen, policy.stats.clipped > clipped_before)
                clipped += action.clipped
                latency = tb - ta
                latencies.append(latency)
                late = realtime and tb > deadline
                late_count += late
                if late and held is not None:
                    pending, is_held = action, True
                else:
                    held = action
            assert held is not None  # a stream's first frame is a decision
            reward = src.apply(held.action)
            if reward is not None:  # counted before on_frame, whose output may break off (BrokenPipe)
                ep_reward += reward
            if on_frame is not None:
                rec: dict[str, Any] = {"frame": n, "decision": decision, "held": is_held,
                                       "action": held.action.tolist(), "clipped": held.clipped,
                                       "latency_ms": None if latency is None else latency * 1e3}
                if src.episodic:
                    rec.update(episode=episode, step=step, reward=reward)
                if realtime:
                    rec["late"] = late
                on_frame(rec)
            if returns is not None and len(returns) > returns_seen:
                if on_episode_end is not None:
                    on_episode_end(returns_seen, returns[returns_seen])
                returns_seen, ep_reward = len(returns), 0.0
            n += 1
            step += 1
            if realtime:
                now = clock()
                if now > deadline:
                    overruns += 1
                    slot = math.floor((now - t0) / dt) + 1  # the first slot still ahead: skip time, not frames
                else:
                    slot += 1
            if max_frames is not None and n >= max_frames:
                break
            if realtime:
                release = t0 + slot * dt
                while (now := clock()) < release:
                    sleep(release - now)
            raw = next(frames, None)
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or the JSON-lines reader went away
        interrupted = True
    wall = clock() - start
    return Summary(
        frames=n, decisions=len(latencies), action_repeat=k, realtime=realtime, control_timestep=dt,
        wall_s=wall, rate_hz=n / wall if wall > 0 else 0.0, act_s=float(sum(latencies)),
        latency_ms=latency_stats(latencies), overruns=overruns, late_decisions=late_count, clipped=clipped,
        episode_returns=list(returns or []),
        partial_return=ep_reward if src.episodic and episode is not None and returns_seen <= episode else None,
        interrupted=interrupted)


_JSON = json.JSONEncoder(allow_nan=False)  # NaN / Infinity are not JSON: a bug raises instead of writing them


class JsonLines:
    """One JSON object per frame to a file, or to stdout for '-' (flushed per line for live readers)."""

    def __init__(self, target: str | Path) -> None:
        self._own = str(target) != "-"
        if self._own:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = open(path, "w", encoding="utf-8")
        else:
            self._file = sys.stdout

    def __call__(self, record: dict[str, Any]) -> None:
        """Write one record as a JSON line (flushed at once when it goes to stdout)."""
        try:
            self._file.write(_JSON.encode(record) + "\n")
            if not self._own:
                self._file.flush()
        except BrokenPipeError:
            if not self._own:  # `sacae run ... --jsonl - | head`: the reader left; end the run quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise

    def close(self) -> None:
        """Close the file; stdout is left open."""
        if self._own:
            self._file.close()
