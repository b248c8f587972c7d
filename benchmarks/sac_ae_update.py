"""SAC+AE update speed, paper configuration (9x84x84 stacks, batch 128, hidden 1024), on this machine.

Three modes, each in a fresh process (the allocator setting is process-wide and cannot be undone),
interleaved over rounds so machine noise hits all of them alike:
- reference: the reference implementation's way (denisyarats/pytorch_sac_ae): NCHW, per-tensor
  Adam, every conv pass recomputed (the actor and critic heads and the decoder each re-encode obs),
  glibc left to return activation buffers to the OS after each update;
- optimized: this project's defaults, same math (channels_last, foreach Adam, one shared trunk pass,
  transposed-conv backward as convolutions, tuned allocator);
- bf16: optimized plus bf16 autocast (`--set bf16=true`).
Each update includes sampling the batch from a filled frame-once replay. Where CUDA is present, the
optimized mode is also timed on the GPU (updates/s). `--device cuda` runs all three modes on the
GPU instead, with the replay's frames on the device as training keeps them there; GPU updates are
timed as a block (they queue without waiting for each other) and their phase split in a separate
pass, since timing a phase means waiting for the GPU at its edges.

    python benchmarks/sac_ae_update.py [--updates 8] [--rounds 2] [--device cuda]

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODES = {
    "reference": dict(channels_last=False, reuse_trunk=False, foreach_adam=False, deconv_conv_grad=False),
    "optimized": {},
    "bf16": dict(bf16=True),
}
PHASES = ("sample", "critic", "actor", "target", "decoder")


def worker(mode: str, updates: int, device_name: str) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from train.config import resolve
    from train.replay import FrameReplay
    from train.sac import SacAgent
    from train.torch_utils import tune_allocator

    if mode != "reference":
        tune_allocator()
    device = torch.device(device_name)
    cfg = resolve("sac-ae", "paper", env="cartpole-swingup", **MODES[mode])
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    replay = FrameReplay(4_000, (3, 84, 84), np.uint8, 1, device=device if device.type == "cuda" else None)
    for _ in range(4):  # 4 episodes of 1000 random frames, as a filled buffer would hold
        replay.add_first(rng.integers(0, 256, (3, 84, 84), dtype=np.uint8))
        for _ in range(999):
            replay.add(rng.integers(0, 256, (3, 84, 84), dtype=np.uint8), rng.uniform(-1, 1, 1).astype(np.float32),
                       float(rng.normal()), 1.0)
    agent = SacAgent(cfg, (9, 84, 84), 1, device)
    times: dict[str, float] = collections.defaultdict(float)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def section(name: str) -> Iterator[None]:
        sync()
        start = time.perf_counter()
        yield
        sync()
        times[name] += time.perf_counter() - start

    for step in range(4):  # warm-up: allocator, kernels, both parities of the actor schedule
        agent.update(replay, rng, step)
    times.clear()
    per_update = []
    if device.type == "cuda":
        sync()
        start = time.perf_counter()
        for step in range(updates):
            agent.update(replay, rng, step)
        sync()
        per_update = [(time.perf_counter() - start) / updates] * updates
        times.clear()
        for step in range(updates):
            agent.update(replay, rng, step, section=section)
    else:
        for step in range(updates):
            sync()
            start = time.perf_counter()
            agent.update(replay, rng, step, section=section)
            sync()
            per_update.append(time.perf_counter() - start)
    return {"mode": mode, "device": device_name, "ms": [t * 1e3 for t in per_update],
            "split_ms": {k: times[k] * 1e3 / updates for k in PHASES}, "threads": torch.get_num_threads()}


def spawn(mode: str, updates: int, device: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--updates", str(updates), "--device", device],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=8, help="timed updates per mode and round (even)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=sorted(MODES))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the modes run")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.updates, args.device)))
        return

    runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in range(args.rounds):
        for mode in MODES:
            runs[mode].append(spawn(mode, args.updates, args.device))
            print(f"round {r}: {mode:9s} {statistics.mean(runs[mode][-1]['ms']):8.1f} ms/update", file=sys.stderr)
    # Each update alternates actor/no-actor steps, so the mean over an even count is the per-update cost.
    ms = {m: statistics.mean(t for run in runs[m] for t in run["ms"]) for m in MODES}
    split = {m: {k: statistics.mean(run["split_ms"][k] for run in runs[m]) for k in PHASES} for m in MODES}

    def per_round(mode: str) -> list[float]:
        return [round(statistics.mean(ref["ms"]) / statistics.mean(run["ms"]), 2)
                for ref, run in zip(runs["reference"], runs[mode])]

    result: dict[str, Any] = {
        "benchmark": "sac_ae_update",
        "config": "paper: 9x84x84 stacks, batch 128, hidden 1024, feature 50, 4 conv x 32 filters",
        "machine": describe(),
        "device": args.device,
        "threads": runs["optimized"][0]["threads"],
        "updates_timed": args.updates * args.rounds,
        "ms_per_update": round(ms["optimized"], 1),
        "ms_per_update_reference": round(ms["reference"], 1),
        "ms_per_update_bf16": round(ms["bf16"], 1),
        "speedup_f32": round(ms["reference"] / ms["optimized"], 2),
        "speedup_bf16": round(ms["reference"] / ms["bf16"], 2),
        # Side by side within each round: how much of the spread is the machine's, not the code's.
        "speedup_f32_per_round": per_round("optimized"),
        "speedup_bf16_per_round": per_round("bf16"),
        "split_ms": {k: round(v, 1) for k, v in split["optimized"].items()},
        "split_ms_reference": {k: round(v, 1) for k, v in split["reference"].items()},
        "split_ms_bf16": {k: round(v, 1) for k, v in split["bf16"].items()},
        "targets": {"speedup_f32": 1.6, "speedup_bf16": 2.5},
    }
    import torch

    if args.device == "cuda":
        result["updates_per_s"] = {m: round(1e3 / ms[m], 1) for m in MODES}
        result["cuda_device"] = torch.cuda.get_device_name(0)
        del result["targets"]  # the speed targets are the CPU's
    elif torch.cuda.is_available():
        gpu = spawn("optimized", max(args.updates, 50), "cuda")
        result["cuda_updates_per_s"] = round(1e3 / statistics.mean(gpu["ms"]), 1)
        result["cuda_device"] = torch.cuda.get_device_name(0)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
