"""SLAC update cost on the CPU at the paper's sizes: one model update (32 windows of 9 frames) and
one SAC update (256 windows), this implementation against a naive variant measured in the same run.

    .venv/bin/python benchmarks/slac_update.py [--reps 8] [--threads 2] [--bf16]

naive:     what the reference PyTorch port does: NCHW float32 convolutions everywhere (the 1x1-output
           layers as convolutions too, PyTorch's own transposed-conv backward), each window's 9
           frames encoded once, all 2,304 frames of the SAC batch in one pass, Adam's for-loop.
optimized: the agent's defaults, the same math: channels_last convolutions, the 1x1-output layers
           as the GEMMs they are, transposed-conv gradients as convolutions, no-grad encoding in
           chunks of 512 frames, fused Adam.
Both start from the same weights; the first update of each is compared (same loss up to fp32
rounding) before anything is timed. Variants are timed round-robin, so a busy machine slows them
alike; medians are reported (and minima, the least disturbed runs).

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# The repository root goes first: this folder's distractors.py would otherwise shadow the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train import config as C  # noqa: E402
from train.replay import FrameReplay  # noqa: E402
from train.slac import SlacAgent  # noqa: E402
from train.slac_model import DenseConv2d, DenseConvTranspose2d, UpConv2d  # noqa: E402
from train.torch_utils import tune_allocator  # noqa: E402
from machine import cpu_name  # noqa: E402

ENV, ACTION_DIM = "cheetah-run", 6


def make_replay(rng: np.random.Generator, episodes: int = 12, length: int = 250) -> FrameReplay:
    replay = FrameReplay(episodes * (length + 1), (3, 64, 64), np.uint8, ACTION_DIM, check_memory=False)
    for _ in range(episodes):
        replay.add_first(rng.integers(0, 256, (3, 64, 64), dtype=np.uint8))
        for _ in range(length):
            replay.add(rng.integers(0, 256, (3, 64, 64), dtype=np.uint8),
                       np.tanh(rng.normal(0, 2, ACTION_DIM)).astype(np.float32), float(rng.uniform()), 1.0)
    return replay


def make_agent(variant: str, weights: SlacAgent | None) -> SlacAgent:
    """The variant's agent, with `weights`' network parameters (optimizers start fresh)."""
    overrides: dict[str, Any] = {"naive": dict(channels_last=False, encode_chunk=0),
                                 "optimized": {}, "optimized_bf16": dict(bf16=True)}[variant]
    cfg = C.resolve("slac", "paper", env=ENV, **overrides)
    agent = SlacAgent(cfg, (3, 64, 64), ACTION_DIM, torch.device("cpu"))  # type: ignore[arg-type]
    if variant == "naive":  # the reference's layers and optimizer: plain convolutions, Adam's for-loop
        for m in agent.model.modules():
            if isinstance(m, DenseConv2d):
                m.forward = types.MethodType(nn.Conv2d.forward, m)  # type: ignore[method-assign]
            elif isinstance(m, (DenseConvTranspose2d, UpConv2d)):
                m.forward = types.MethodType(nn.ConvTranspose2d.forward, m)  # type: ignore[method-assign]
        for name, opt in agent.optimizers().items():
            setattr(agent, name, torch.optim.Adam(opt.param_groups[0]["params"], lr=opt.param_groups[0]["lr"],
                                                  foreach=False))
    if weights is not None:
        for name, module in agent.modules().items():
            module.load_state_dict(weights.modules()[name].state_dict())
    return agent


def same_math(agents: dict[str, SlacAgent], replay: FrameReplay) -> dict[str, float]:
    """Relative difference of the first model and critic losses against the naive variant."""
    losses: dict[str, tuple[float, float]] = {}
    for name, agent in agents.items():
        rng = np.random.default_rng(7)
        torch.manual_seed(7)
        m = agent.update_model(replay.sample_windows(agent.cfg.model_batch_size, rng, agent.cfg.sequence_length))
        s = agent.update_sac(replay.sample_windows(agent.cfg.batch_size, rng, agent.cfg.sequence_length))
        losses[name] = (float(m["model_loss"]), float(s["critic_loss"]))
    ref = losses["naive"]
    return {name: max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(v, ref)) for name, v in losses.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true",
                        help="also time the bf16-autocast variant (not the same rounding)")
    args = parser.parse_args()
    tune_allocator()  # as the workspace does; applies to both variants alike
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    replay = make_replay(rng)
    variants = ["naive", "optimized"] + (["optimized_bf16"] if args.bf16 else [])
    first = make_agent("naive", None)
    agents = {v: make_agent(v, first) for v in variants}
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    rel_diff = same_math(agents, replay)  # also the warm-up update of every variant

    cfg = first.cfg
    times: dict[str, dict[str, list[float]]] = {v: {"model": [], "sac": []} for v in variants}
    for _ in range(args.reps):
        for name, agent in agents.items():
            t0 = time.perf_counter()
            agent.update_model(replay.sample_windows(cfg.model_batch_size, rng, cfg.sequence_length))
            t1 = time.perf_counter()
            agent.update_sac(replay.sample_windows(cfg.batch_size, rng, cfg.sequence_length))
            t2 = time.perf_counter()
            times[name]["model"].append(1000 * (t1 - t0))
            times[name]["sac"].append(1000 * (t2 - t1))

    def summary(name: str) -> dict[str, float]:
        m, s = times[name]["model"], times[name]["sac"]
        combined = [a + b for a, b in zip(m, s)]
        return {"ms_per_model_update": round(statistics.median(m), 1),
                "ms_per_sac_update": round(statistics.median(s), 1),
                "ms_per_combined_step": round(statistics.median(combined), 1),
                "min_ms_per_combined_step": round(min(combined), 1)}

    results = {v: summary(v) for v in variants}
    for name, r in results.items():
        print(f"{name:>15}: model {r['ms_per_model_update']:8.1f} ms  sac {r['ms_per_sac_update']:8.1f} ms  "
              f"combined {r['ms_per_combined_step']:8.1f} ms (min {r['min_ms_per_combined_step']:.1f})  "
              f"loss rel. diff vs naive {rel_diff[name]:.1e}")
    opt, naive = results["optimized"], results["naive"]
    out: dict[str, Any] = {
        "benchmark": "slac_update",
        **opt,
        "naive": naive,
        "speedup_combined": round(naive["ms_per_combined_step"] / opt["ms_per_combined_step"], 2),
        "speedup_model": round(naive["ms_per_model_update"] / opt["ms_per_model_update"], 2),
        "speedup_sac": round(naive["ms_per_sac_update"] / opt["ms_per_sac_update"], 2),
        "loss_rel_diff_vs_naive": {k: float(f"{v:.2e}") for k, v in rel_diff.items()},
        "sizes": {"model_batch": cfg.model_batch_size, "sac_batch": cfg.batch_size,
                  "sequence_length": cfg.sequence_length,
                  "frames": 64, "z1": cfg.z1_dim, "z2": cfg.z2_dim, "hidden": cfg.model_hidden,
                  "features": first.feature_dim, "action_dim": ACTION_DIM},
        "reps": args.reps,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # other work on the machine
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if args.bf16:
        bf = results["optimized_bf16"]
        out["optimized_bf16"] = bf
        out["speedup_combined_bf16"] = round(naive["ms_per_combined_step"] / bf["ms_per_combined_step"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
