"""`sacae run`'s own cost: decisions/s through the whole loop vs `Policy.act` alone.

Run: .venv/bin/python benchmarks/run_loop.py [--frames N] [--rounds R] [--threads T]

A paper-size SAC+AE policy (train.config.resolve('sac-ae') + train.sac.SacAgent, untrained: the
cost does not depend on the weights) is exported with the exporter in a subprocess, so this
process stays torch-free like a deployment. A temporary 84x84 mp4 of N frames is written, then,
interleaved over R rounds so machine noise hits both alike:
  act    Policy.act over the pre-decoded frames (the floor),
  loop   run_loop on video:PATH with --action-repeat 1 (every frame a decision) writing JSON lines:
         read + check + preprocess + stack + act + output.
decisions/s are wall-clock (medians over rounds; best rounds too). The overhead is measured in this
thread's CPU time (the loop runs on an injected thread_time clock), which stays meaningful when
other processes share the cores: overhead = (loop CPU - CPU inside Policy.act) / CPU inside
Policy.act, medians over rounds; against act alone and in wall time it is reported too. A 168x168
video (one integer-factor area resize per decision) is timed the same way for scale. With
onnxruntime on one intra-op thread (Policy's default) act runs on the calling thread, so its CPU
time is this thread's.
Targets: overhead <= 15% and >= 500 decisions/s. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import describe  # noqa: E402

TARGET_OVERHEAD = 0.15
TARGET_RATE = 500.0
ENV = "cartpole-swingup"

_EXPORT = """
import sys, torch
from pathlib import Path
from export import export_agent
from export.metadata import env_facts
from train.config import resolve
from train.sac import SacAgent
torch.manual_seed(0)
cfg = resolve("sac-ae", "paper", env=sys.argv[2], backend="plain")
agent = SacAgent(cfg, (3 * cfg.frame_stack, cfg.image_size, cfg.image_size), 1, torch.device("cpu"))
agent.train_mode(False)
export_agent(agent, cfg, env_facts(cfg), Path(sys.argv[1]))
"""


def export_policy(path: Path) -> str | None:
    """Export the paper-size policy; returns why not if the exporter is unavailable."""
    try:
        import export  # noqa: F401
    except ImportError:
        return "blocked: the export package is missing"
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    proc = subprocess.run([sys.executable, "-c", _EXPORT, str(path), ENV], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        return "blocked: export failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None


def write_clip(path: Path, frames: int, size: int) -> None:
    """A smooth moving pattern (codec-friendly, not constant) at `size` x `size`."""
    from sacae_deploy.video import VideoWriter

    y, x = np.mgrid[:size, :size].astype(np.float32) / size
    with VideoWriter(path, fps=100) as writer:
        for i in range(frames):
            t = i / 50.0
            r = 127.5 + 127.5 * np.sin(6.0 * x + t)
            g = 127.5 + 127.5 * np.sin(5.0 * y - 1.3 * t)
            b = 127.5 + 127.5 * np.sin(4.0 * (x + y) + 0.7 * t)
            writer.append(np.stack([r, g, b], axis=-1).astype(np.uint8))


def time_act(policy: object, frames: list[np.ndarray]) -> tuple[float, float]:
    """(wall, thread CPU) seconds per Policy.act over frames already in memory."""
    policy.reset()  # type: ignore[attr-defined]
    act = policy.act  # type: ignore[attr-defined]
    wall, cpu = time.perf_counter(), time.thread_time()
    for frame in frames:
        act(frame)
    return (time.perf_counter() - wall) / len(frames), (time.thread_time() - cpu) / len(frames)


def time_loop(policy: object, clip: Path, jsonl: Path) -> tuple[float, float, float]:
    """(wall, thread CPU, thread CPU inside Policy.act) seconds per frame of the whole loop.

    The loop runs on the thread-CPU clock (run_loop's clock is injectable), so its own accounting
    splits this thread's CPU between Policy.act and everything else, whatever else the machine
    runs; ffmpeg decodes in its own process, as it does under `sacae run`."""
    from sacae_deploy.run_loop import JsonLines, run_loop
    from sacae_deploy.sources import VideoSource

    writer = JsonLines(jsonl)
    with VideoSource(clip) as source:
        wall = time.perf_counter()
        summary = run_loop(policy, source, action_repeat=1, on_frame=writer, clock=time.thread_time)  # type: ignore[arg-type]
        wall = time.perf_counter() - wall
    writer.close()
    n = summary.frames
    return wall / n, summary.wall_s / n, summary.act_s / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: Policy's)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        model = tmpdir / "sac_ae_paper.onnx"
        blocked = export_policy(model)
        if blocked is not None:
            print(json.dumps({"benchmark": "run_loop", "status": blocked}))
            return
        from sacae_deploy.policy import Policy
        from sacae_deploy.sources import AreaResize, VideoSource

        load_before = os.getloadavg()[0]
        policy = Policy.load(model, device="cpu", threads=args.threads)
        print(policy.describe(), file=sys.stderr)
        results = {}
        for size in (84, 168):
            clip = tmpdir / f"clip{size}.mp4"
            write_clip(clip, args.frames, size)
            with VideoSource(clip) as source:
                resize = AreaResize(policy.image_size)
                decoded = [resize(f) for f in source]
            act_wall, act_cpu, loop_wall, loop_cpu, in_act = (np.empty(args.rounds) for _ in range(5))
            for r in range(args.rounds):  # interleaved: load from other processes hits both alike
                act_wall[r], act_cpu[r] = time_act(policy, decoded)
                loop_wall[r], loop_cpu[r], in_act[r] = time_loop(policy, clip, tmpdir / "out.jsonl")
            med = lambda x: float(np.median(x))  # noqa: E731
            results[size] = {
                "loop_decisions_per_s": round(1.0 / med(loop_wall), 1),
                "act_only_per_s": round(1.0 / med(act_wall), 1),
                "loop_decisions_per_s_best": round(1.0 / float(loop_wall.min()), 1),
                "act_only_per_s_best": round(1.0 / float(act_wall.min()), 1),
                # CPU time of this thread: the loop's own work against Policy.act's
                "overhead_pct": round(100.0 * med((loop_cpu - in_act) / in_act), 2),
                "overhead_us_per_frame": round(1e6 * med(loop_cpu - in_act), 1),
                "act_cpu_ms": round(1e3 * med(in_act), 4),
                # the same against act alone over pre-decoded frames (a separate run)
                "overhead_vs_act_alone_pct": round(100.0 * med((loop_cpu - act_cpu) / act_cpu), 2),
                "overhead_wall_pct": round(100.0 * med((loop_wall - act_wall) / act_wall), 2),
            }
            print(f"{size}x{size} video: {json.dumps(results[size])}", file=sys.stderr)
    main84 = results[84]
    print(json.dumps({
        "benchmark": "run_loop",
        "model": f"sac-ae paper ({ENV}, 84x84, frame stack 3) via {policy.describe().split(' via ')[-1]}",
        "machine": describe(),
        "frames": args.frames, "rounds": args.rounds, "action_repeat": 1,
        **main84,
        "video_168_resized": {k: results[168][k]
                              for k in ("loop_decisions_per_s", "overhead_pct", "overhead_us_per_frame")},
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "target": {"overhead_pct_max": 100 * TARGET_OVERHEAD, "decisions_per_s_min": TARGET_RATE},
        "meets_target": (main84["overhead_pct"] <= 100 * TARGET_OVERHEAD
                         and main84["loop_decisions_per_s"] >= TARGET_RATE),
    }))


if __name__ == "__main__":
    main()
