"""Time the moving-ball distractor per frame: step + render + composite (target 0.3 ms at 84x84).

Run: .venv/bin/python benchmarks/distractors.py [--frames N] [--size S] [--no-mujoco]

The headline number is the whole per-frame path the training env and the simulated camera
take, DistractorCompositor(frame, segmentation): step the balls, draw them, build the mask from
the segmentation and paste. A synthetic frame and segmentation are used (a robot-shaped blob in
the middle); if dm_control is installed, a real cartpole render is timed too, together with the
two MuJoCo renders themselves for scale (these are not part of the target). The last line of
output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_name  # noqa: E402

from distractors import BallDistractor, DistractorCompositor, background_mask_from_segmentation, composite  # noqa: E402

TARGET_MS = 0.3


def _time(fn: Callable[[], object], frames: int, warmup: int = 100) -> np.ndarray:
    """Per-call wall times in ms."""
    for _ in range(warmup):
        fn()
    times = np.empty(frames)
    clock = time.perf_counter_ns
    for k in range(frames):
        start = clock()
        fn()
        times[k] = clock() - start
    return times / 1e6


def _summary(times: np.ndarray) -> dict[str, float]:
    return {"median": round(float(np.median(times)), 4), "p99": round(float(np.percentile(times, 99)), 4)}


def _synthetic(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured frame and a segmentation with a robot-like ellipse plus a pole (about 20%)."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    y, x = np.mgrid[:size, :size] / size
    robot = (((x - 0.5) / 0.25) ** 2 + ((y - 0.6) / 0.12) ** 2 < 1) | ((abs(x - 0.5) < 0.03) & (y < 0.6))
    seg = np.full((size, size, 2), -1, dtype=np.int32)
    seg[robot] = (3, 5)
    return frame, seg


def _mujoco(size: int, frames: int) -> dict[str, object] | None:
    """Time the compositor on a real cartpole render, and the two MuJoCo renders for scale."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from dm_control import suite
    except ImportError:
        return None
    env = suite.load("cartpole", "swingup", task_kwargs={"random": 0})
    try:
        env.reset()
        physics = env.physics
        rgb = physics.render(size, size, camera_id=0)
        seg = physics.render(size, size, camera_id=0, segmentation=True)
        compositor = DistractorCompositor(size, size, seed=0)
        step_times = _time(lambda: compositor(rgb, seg), frames)
        render_times = _time(lambda: (physics.render(size, size, camera_id=0),
                                      physics.render(size, size, camera_id=0, segmentation=True)), 50, warmup=5)
    finally:
        env.close()
    background = float(background_mask_from_segmentation(seg).mean())
    summary = _summary(step_times)
    return {"ms_per_frame": summary["median"], "ms_per_frame_p99": summary["p99"],
            "background_fraction": round(background, 3),
            "mujoco_rgb_plus_segmentation_ms": _summary(render_times)["median"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--no-mujoco", action="store_true", help="skip the real dm_control frame")
    args = parser.parse_args()
    if args.frames < 1:
        parser.error("--frames must be >= 1")

    size = args.size
    frame, seg = _synthetic(size)
    compositor = DistractorCompositor(size, size, seed=0)
    total = _time(lambda: compositor(frame, seg), args.frames)

    balls = BallDistractor(size, size, seed=0)
    mask = background_mask_from_segmentation(seg)
    background = balls.render()
    parts = {
        name: _summary(_time(fn, args.frames))["median"]
        for name, fn in [
            ("step", balls.step),
            ("render", balls.render),
            ("mask_from_segmentation", lambda: background_mask_from_segmentation(seg)),
            ("composite", lambda: composite(frame, background, mask)),
        ]
    }
    real = None if args.no_mujoco else _mujoco(size, args.frames)

    headline = _summary(total)
    result = {
        "benchmark": "distractors",
        "size": f"{size}x{size}",
        "num_balls": balls.num_balls,
        "frames": args.frames,
        "ms_per_frame": headline["median"],
        "ms_per_frame_p99": headline["p99"],
        "target_ms": TARGET_MS,
        "meets_target": headline["median"] <= TARGET_MS,
        "breakdown_ms": parts,
        "real_cartpole": real,
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None},
    }
    print(f"distractors: step + render + mask + composite, {size}x{size}, {balls.num_balls} balls, "
          f"{args.frames} frames")
    print(f"  per frame: median {result['ms_per_frame']:.3f} ms, p99 {result['ms_per_frame_p99']:.3f} ms "
          f"(target {TARGET_MS} ms: {'met' if result['meets_target'] else 'MISSED'})")
    print("  parts (median ms): " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    if real is not None:
        print(f"  real cartpole frame: median {real['ms_per_frame']:.3f} ms "
              f"(background {real['background_fraction']:.0%}); MuJoCo rgb + segmentation renders "
              f"{real['mujoco_rgb_plus_segmentation_ms']:.3f} ms, not counted")
    print(f"  machine: {result['machine']['cpu']}, {os.cpu_count()} cpus, "
          f"load {result['machine']['loadavg_1min']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
