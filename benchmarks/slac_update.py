"""SLAC update cost on the CPU at the paper's sizes: one model update (32 windows of 9 frames) and
one SAC update (256 windows), this implementation against a naive variant measured in the same run.

    .venv/bin/python benchmarks/slac_update.py [--steps 16] [--threads 2] [--episodes 100] [--bf16] [--device cuda]

naive:       what the reference PyTorch port does: backend plain (NCHW float32 convolutions everywhere,
             the 1x1-output layers as convolutions too, PyTorch's own transposed-conv backward, Adam's
             for-loop), each window's 9 frames encoded once, and, set here (benchmark-only agent
             attributes), all 2,304 frames of the SAC batch in one pass, every window position's
             frame; glibc left to return activation buffers to the OS after each update (as that
             port runs);
naive_tuned: the same with this project's allocator setting, to show how much of the gap that is;
optimized:   the agent's defaults (backend auto: fast-cpu), the same math: channels_last
             convolutions, the 1x1-output layers as the GEMMs they are, transposed-conv gradients
             as convolutions, each conv's leaky ReLU fused into it (with and without grad), the
             decoder's RGB output layer as a sub-pixel conv, no-grad encoding in chunks of 512
             frames, each distinct frame of the SAC batch's overlapping windows gathered from the
             replay and encoded once (their share depends on the replay's size: `--episodes`), each
             frame converted once, in-place activation gradients, fused Adam, tuned allocator; on a
             GPU (backend auto: plain) each update replays as one CUDA graph (which encodes every
             window position).
Each variant runs in its own process (the allocator setting is process-wide) and the variants run
in lockstep (benchmarks/lockstep.py: step i of every variant back to back, the order rotating), so a
burst of CPU steal slows one step's variants alike; the speedup is the median of the per-step
paired ratios, medians and minima of the times are reported. All variants start from the same
weights and seeds; their first model and critic losses are compared (same math up to fp32 rounding)
before anything is timed.

`--device cuda` runs the variants on the GPU, the replay's frames on the device as in training;
each update is timed to the end of its GPU work.

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The repository root goes first: this folder's distractors.py would otherwise shadow the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lockstep  # noqa: E402
from lockstep import serve  # noqa: E402
from machine import StealMeter, cpu_name  # noqa: E402

from train import config as train_config  # noqa: E402
from train.replay import FrameReplay  # noqa: E402
from train.slac import SlacAgent  # noqa: E402
from train.torch_utils import tune_allocator  # noqa: E402

ENV, ACTION_DIM = "cheetah-run", 6


def make_replay(rng: np.random.Generator, device: torch.device, episodes: int = 12, length: int = 250) -> FrameReplay:
    """`episodes` episodes of random frames and actions (250 agent steps: cheetah-run's 1000 env
    steps at action repeat 4)."""
    replay = FrameReplay(episodes * (length + 1), (3, 64, 64), np.uint8, ACTION_DIM, check_memory=False,
                         device=device if device.type == "cuda" else None)
    for _ in range(episodes):
        replay.add_first(rng.integers(0, 256, (3, 64, 64), dtype=np.uint8))
        for _ in range(length):
            replay.add(rng.integers(0, 256, (3, 64, 64), dtype=np.uint8),
                       np.tanh(rng.normal(0, 2, ACTION_DIM)).astype(np.float32), float(rng.uniform()), 1.0)
    return replay


def make_agent(variant: str, device: torch.device) -> SlacAgent:
    """The variant's agent; built right after torch.manual_seed(0), every variant has the same weights."""
    overrides: dict[str, Any] = {"naive": dict(backend="plain"), "optimized": {},
                                 "optimized_bf16": dict(bf16=True)}[variant.removesuffix("_tuned")]
    cfg = train_config.resolve("slac", "paper", env=ENV, **overrides)
    agent = SlacAgent(cfg, (3, 64, 64), ACTION_DIM, device)  # type: ignore[arg-type]
    if variant.startswith("naive"):  # the reference's passes: one encoder pass, every window position
        agent.encode_chunk = None
        agent.distinct_frames = False
        agent.graphs = False
        agent._model_step.enabled = agent._sac_step.enabled = False
    return agent


def worker(variant: str, threads: int, device_name: str, episodes: int) -> None:
    """One variant in this process: first losses (the same-math check, also the warm-up), then a
    timed model + SAC update per `step` request (lockstep.serve)."""
    if variant != "naive":
        tune_allocator()  # as the workspace does; the reference port leaves glibc alone
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    device = torch.device(device_name)
    replay = make_replay(rng, device, episodes)
    agent = make_agent(variant, device)

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    cfg = agent.cfg
    check_rng = np.random.default_rng(7)
    torch.manual_seed(7)
    m = agent.update_model(replay.sample_windows(cfg.model_batch_size, check_rng, cfg.sequence_length))
    q = agent.update_sac(agent.sample_sac_batch(replay, check_rng))

    def step(command: list[str]) -> dict[str, float]:
        t0 = now()
        agent.update_model(replay.sample_windows(cfg.model_batch_size, rng, cfg.sequence_length))
        t1 = now()
        batch = agent.sample_sac_batch(replay, rng)
        agent.update_sac(batch)
        t2 = now()
        slots = batch["frame_slots"]
        return {"model": 1000 * (t1 - t0), "sac": 1000 * (t2 - t1), "distinct": len(np.unique(slots)) / slots.size}

    serve({"losses": [float(m["model_loss"]), float(q["critic_loss"])], "replay_frames": len(replay),
           "sizes": {"model_batch": cfg.model_batch_size, "sac_batch": cfg.batch_size,
                     "sequence_length": cfg.sequence_length, "frames": 64, "z1": cfg.z1_dim, "z2": cfg.z2_dim,
                     "hidden": cfg.model_hidden, "features": agent.feature_dim, "action_dim": ACTION_DIM}}, step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=lockstep.step_count, default=16, help="timed model + SAC updates per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true",
                        help="also time the bf16-autocast variant (not the same rounding)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the variants run")
    parser.add_argument("--episodes", type=int, default=100,
                        help="episodes in the replay (100: its size at the end of the paper's 100k-step cheetah-run; "
                             "fewer episodes, more overlapping windows)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.threads, args.device, args.episodes)
        return
    variants = ["naive", "naive_tuned", "optimized"] + (["optimized_bf16"] if args.bf16 else [])
    steal = StealMeter()
    t_start = time.perf_counter()
    runs, ready = lockstep.run(__file__, variants, args.steps, "--threads", str(args.threads), "--device", args.device,
                               "--episodes", str(args.episodes),
                               show=lambda r: ", ".join(f"{v} {r[v]['model']:.0f}+{r[v]['sac']:.0f} ms"
                                                        for v in variants))

    def summary(v: str) -> dict[str, float]:
        m, s = [r["model"] for r in runs[v]], [r["sac"] for r in runs[v]]
        combined = [a + b for a, b in zip(m, s)]
        return {"ms_per_model_update": round(statistics.median(m), 1),
                "ms_per_sac_update": round(statistics.median(s), 1),
                "ms_per_combined_step": round(statistics.median(combined), 1),
                "min_ms_per_combined_step": round(min(combined), 1)}

    results = {v: summary(v) for v in variants}
    ref_losses = ready["naive"]["losses"]
    rel_diff = {v: max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ready[v]["losses"], ref_losses))
                for v in variants}
    for v, r in results.items():
        print(f"{v:>15}: model {r['ms_per_model_update']:8.1f} ms  sac {r['ms_per_sac_update']:8.1f} ms  "
              f"combined {r['ms_per_combined_step']:8.1f} ms (min {r['min_ms_per_combined_step']:.1f})  "
              f"loss rel. diff vs naive {rel_diff[v]:.1e}", file=sys.stderr)
    opt, naive = results["optimized"], results["naive"]

    def combined(v: str) -> list[float]:
        return [r["model"] + r["sac"] for r in runs[v]]

    paired = lockstep.paired(combined("naive"), combined("optimized"))
    out: dict[str, Any] = {
        "benchmark": "slac_update",
        **opt,
        "naive": naive,
        "naive_tuned": results["naive_tuned"],
        # The median of the per-step paired ratios (robust to the host's bursts), their quartiles,
        # and the ratio of the mean times.
        "speedup_combined": paired["median"],
        "speedup_combined_quartiles": paired["quartiles"],
        "speedup_combined_of_means": paired["of_means"],
        "speedup_model": round(naive["ms_per_model_update"] / opt["ms_per_model_update"], 2),
        "speedup_sac": round(naive["ms_per_sac_update"] / opt["ms_per_sac_update"], 2),
        "speedup_combined_vs_naive_tuned": round(results["naive_tuned"]["ms_per_combined_step"]
                                                 / opt["ms_per_combined_step"], 2),
        "loss_rel_diff_vs_naive": {k: float(f"{v:.2e}") for k, v in rel_diff.items()},
        "sizes": ready["optimized"]["sizes"],
        "replay_frames": ready["optimized"]["replay_frames"],
        # Distinct frames among the SAC batch's 2,304 window positions (the optimized step encodes those).
        "sac_distinct_frame_fraction": round(statistics.mean(r["distinct"] for r in runs["optimized"]), 3),
        "steps": args.steps,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "threads": args.threads,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.version.__version__,
        "cpu_steal": steal.fraction(),  # CPU time the hypervisor gave to other guests
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if args.bf16:
        bf = results["optimized_bf16"]
        out["optimized_bf16"] = bf
        out["speedup_combined_bf16"] = lockstep.paired(combined("naive"), combined("optimized_bf16"))["median"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
