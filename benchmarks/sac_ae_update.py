"""SAC+AE update speed, paper configuration (9x84x84 stacks, batch 128, hidden 1024), on this machine.

Three modes, each in its own process (the allocator setting is process-wide and cannot be undone):
- reference: the reference implementation's way (denisyarats/pytorch_sac_ae): backend plain (NCHW,
  per-tensor Adam, each ReLU writing a new map, the reconstruction loss pass by pass: F.mse_loss on
  the 5-bit target) and, patched in here (`reference_style`), pixels made float at sampling and
  divided by 255 in every encoder pass and the actor update re-encoding obs; glibc left to return
  activation buffers to the OS after each update. The reference also re-encodes obs for the actor
  update's critic head, and its 5-bit target makes three more float passes over the batch than
  ours (its floor and divisions): left out, so the speedups err low;
- optimized: this project's defaults (backend auto: fast-cpu), same math (channels_last, pixels
  scaled once per batch, fused Adam, one shared trunk pass, each conv and its ReLU one oneDNN op,
  transposed-conv backward as convolutions, the flattening linear layers reading channels_last maps
  in place, the reconstruction loss fused per sample in parallel threads, tuned allocator);
- bf16: optimized plus bf16 autocast (`--set bf16=true`): fast only on a CPU with bf16 units
  (AMX or AVX512-BF16, `cpu_bf16_units` in the JSON); emulated, and slower than f32, without.
The three processes stay alive and run in lockstep: update i of every mode runs back to back (the
order rotating), so a busy host (this VM's CPU steal swings the speed by 2x within minutes) slows
the modes of one step alike, and each step gives a paired ratio. The headline speedups are the
medians of those per-step ratios; the ratios of the mean times are reported beside them. Each update
includes sampling the batch from a filled frame-once replay. Where CUDA is present, the optimized
mode is also timed on the GPU (updates/s). `--device cuda` runs all three modes on the GPU instead,
with the replay's frames on the device as training keeps them there; GPU updates are timed as a
block (they queue without waiting for each other) and their phase split in a separate pass, since
timing a phase means waiting for the GPU at its edges.

    python benchmarks/sac_ae_update.py [--updates 24] [--device cuda] [--no-bf16]

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import lockstep  # noqa: E402
from lockstep import serve  # noqa: E402
from machine import StealMeter, cpu_bf16_units, describe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODES = {
    "reference": dict(backend="plain"),
    "optimized": {},
    "bf16": dict(bf16=True),
}
PHASES = ("sample", "critic", "actor", "target", "decoder")


def reference_style(agent: Any) -> None:
    """The reference implementation's passes, patched into a plain-backend agent (a benchmark-only
    switch): the batch made float at sampling and divided by 255 in every encoder pass, and the
    actor update encoding obs afresh instead of sharing the decoder's trunk pass (same values)."""
    for trunk in (agent.critic.encoder.trunk, agent.critic_target.encoder.trunk):
        trunk.prepare = lambda obs: obs.float()
        trunk.run = lambda x, net=trunk.net: net(x / 255.0)
    update_actor = agent.update_actor_and_alpha
    agent.update_actor_and_alpha = lambda x, trunk_out: update_actor(x, None)


def worker(mode: str, device_name: str) -> None:
    """Serve `step` (one update, timed by phase) and `block N` (N updates timed as one block: the
    GPU's rate) requests (lockstep.serve)."""
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
    if mode == "reference":
        reference_style(agent)
    times: dict[str, float] = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def section(name: str) -> Iterator[None]:
        sync()
        start = time.perf_counter()
        yield
        sync()
        times[name] = times.get(name, 0.0) + time.perf_counter() - start

    step = 0
    for step in range(4):  # warm-up: allocator, kernels, both parities of the actor schedule
        agent.update(replay, rng, step)

    def handle(command: list[str]) -> dict[str, Any]:
        nonlocal step
        times.clear()
        n = int(command[1]) if command[0] == "block" else 1
        sync()
        start = time.perf_counter()
        for _ in range(n):
            step += 1
            agent.update(replay, rng, step, section=section if command[0] == "step" else None)
        sync()
        return {"ms": (time.perf_counter() - start) * 1e3 / n, "split_ms": {k: v * 1e3 for k, v in times.items()}}

    serve({"threads": torch.get_num_threads()}, handle)


def gpu_rate(mode: str, updates: int) -> float:
    """Updates per second of one mode on the GPU, timed as one block."""
    w = lockstep.start(__file__, [mode], "--device", "cuda")[mode]
    rate = 1e3 / w.ask(f"block {updates}")["ms"]
    w.close()
    return round(rate, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=lockstep.step_count, default=24,
                        help="timed updates per mode (even: the actor runs every 2nd)")
    parser.add_argument("--worker", choices=sorted(MODES))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the modes run")
    parser.add_argument("--no-bf16", action="store_true",
                        help="leave the bf16 mode out (emulated bf16 is many times slower: a shorter run)")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.device)
        return

    modes = [m for m in MODES if not (args.no_bf16 and m == "bf16")]
    steal = StealMeter()
    runs, ready = lockstep.run(__file__, modes, args.updates, "--device", args.device,
                               show=lambda r: ", ".join(f"{m} {r[m]['ms']:.0f} ms" for m in modes))
    ms = {m: statistics.mean(r["ms"] for r in runs[m]) for m in modes}
    split = {m: {k: statistics.mean(r["split_ms"].get(k, 0.0) for r in runs[m]) for k in PHASES} for m in modes}
    f32 = lockstep.paired([r["ms"] for r in runs["reference"]], [r["ms"] for r in runs["optimized"]])

    result: dict[str, Any] = {
        "benchmark": "sac_ae_update",
        "config": "paper: 9x84x84 stacks, batch 128, hidden 1024, feature 50, 4 conv x 32 filters",
        "machine": describe(),
        "cpu_steal": steal.fraction(),
        "cpu_bf16_units": cpu_bf16_units(),  # None: bf16 emulated, the bf16 mode slower than f32
        "device": args.device,
        "threads": ready["optimized"]["threads"],
        "updates_timed": args.updates,
        "ms_per_update": round(ms["optimized"], 1),
        "ms_per_update_reference": round(ms["reference"], 1),
        # Medians of the per-step paired ratios (robust to the host's bursts), and their quartiles.
        "speedup_f32": f32["median"],
        "speedup_f32_quartiles": f32["quartiles"],
        "speedup_f32_of_means": f32["of_means"],
        "split_ms": {k: round(v, 1) for k, v in split["optimized"].items()},
        "split_ms_reference": {k: round(v, 1) for k, v in split["reference"].items()},
        "targets": {"speedup_f32": 1.6, "speedup_bf16": 2.5},
    }
    if "bf16" in modes:
        bf16 = lockstep.paired([r["ms"] for r in runs["reference"]], [r["ms"] for r in runs["bf16"]])
        result.update({"ms_per_update_bf16": round(ms["bf16"], 1), "speedup_bf16": bf16["median"],
                       "speedup_bf16_quartiles": bf16["quartiles"], "speedup_bf16_of_means": bf16["of_means"],
                       "split_ms_bf16": {k: round(v, 1) for k, v in split["bf16"].items()}})
    import torch

    if args.device == "cuda":
        result["updates_per_s"] = {m: gpu_rate(m, max(args.updates, 50)) for m in modes}
        result["cuda_device"] = torch.cuda.get_device_name(0)
        del result["targets"]  # the speed targets are the CPU's
    elif torch.cuda.is_available():
        result["cuda_updates_per_s"] = gpu_rate("optimized", max(args.updates, 50))
        result["cuda_device"] = torch.cuda.get_device_name(0)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
