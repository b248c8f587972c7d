"""Batch-1 acting latency: the exported policy through `sacae_deploy.Policy` (onnxruntime) vs torch
eager (`agent.act` / SLAC's HistoryPolicy) on the same weights, measured in one run.

Paper-size networks, untrained (latency does not depend on the weights' values): SAC+AE at 84x84,
frame stack 3, feature 50, hidden 1024 on cheetah-run (6 actions); SLAC at 64x64, history 8, both
history graphs. Configurations are measured in interleaved blocks so that load from other processes
spreads over all of them alike; CPU time of the calling thread is reported next to wall time (for
one intra-op thread it is the inference cost with other processes' preemption taken out).

    .venv/bin/python benchmarks/policy_latency.py [--steps 2000] [--no-slac]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from export import export_agent  # noqa: E402
from export.metadata import env_facts  # noqa: E402
from sacae_deploy import Policy  # noqa: E402
from train import config as TC  # noqa: E402
from train.workspace import make_agent  # noqa: E402
from machine import cpu_name  # noqa: E402

TARGETS = {"p50_ms": 0.7, "p99_ms": 1.2, "speedup_vs_torch": 2.5}  # SAC+AE on the 2-core dev CPU
BLOCK = 250  # steps per interleaved block


def agents(algo: str, env: str, obs_shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """(training-layout agent for torch eager, the same weights in the export layout, cfg)."""
    torch.manual_seed(0)
    cfg = TC.resolve(algo, "paper", env=env)
    facts = env_facts(cfg)
    trained = make_agent(cfg, obs_shape, facts.action_dim, torch.device("cpu"))
    plain_cfg = dataclasses.replace(cfg, channels_last=False, bf16=False)
    plain = make_agent(plain_cfg, obs_shape, facts.action_dim, torch.device("cpu"))
    plain.load_state_dict(trained.state_dict())
    for a in (trained, plain):
        a.train_mode(False)
    return trained, plain, (plain_cfg, facts)


def measure(configs: dict[str, tuple[Callable[[], None], Callable[[int], None]]], steps: int) -> dict[str, dict[str, float]]:
    """configs: name -> (setup, step(t)); every config runs `steps` steps in interleaved blocks."""
    wall: dict[str, list[float]] = {k: [] for k in configs}
    cpu: dict[str, list[float]] = {k: [] for k in configs}
    for start in range(0, steps, BLOCK):
        for name, (setup, step) in configs.items():
            setup()
            for t in range(start, min(start + BLOCK, steps)):
                c, w = time.thread_time_ns(), time.perf_counter_ns()
                step(t)
                wall[name].append(time.perf_counter_ns() - w)
                cpu[name].append(time.thread_time_ns() - c)
    out = {}
    for name in configs:
        w, c = np.asarray(wall[name]) / 1e6, np.asarray(cpu[name]) / 1e6
        out[name] = {"p50_ms": round(float(np.percentile(w, 50)), 3), "p99_ms": round(float(np.percentile(w, 99)), 3),
                     "cpu_p50_ms": round(float(np.percentile(c, 50)), 3)}
        print(f"  {name:28s} p50 {out[name]['p50_ms']:7.3f} ms  p99 {out[name]['p99_ms']:7.3f} ms  "
              f"(thread cpu p50 {out[name]['cpu_p50_ms']:.3f} ms)", file=sys.stderr)
    return out


def policy_configs(path: Path, frames: np.ndarray, label: str) -> dict[str, Any]:
    configs = {}
    for threads in (1, 2):
        policy = Policy.load(path, device="cpu", threads=threads)

        def step(t: int, p: Policy = policy) -> None:
            if t % 500 == 0:
                p.reset()
            p.act(frames[t % len(frames)])

        configs[f"{label} onnx threads={threads}"] = (lambda: None, step)
    return configs


def torch_configs(step: Callable[[int], None], label: str) -> dict[str, Any]:
    default = torch.get_num_threads()
    return {f"{label} torch threads={n}": (lambda n=n: torch.set_num_threads(n), step) for n in sorted({1, default})}


def summarize(results: dict[str, dict[str, float]], label: str, torch_label: str) -> dict[str, Any]:
    onnx = {k.split()[-1]: v for k, v in results.items() if k.startswith(f"{label} onnx")}
    eager = {k.split()[-1]: v for k, v in results.items() if k.startswith(f"{torch_label} torch")}
    best_onnx = min(onnx, key=lambda k: onnx[k]["p50_ms"])
    best_torch = min(eager, key=lambda k: eager[k]["p50_ms"])
    return {"onnx": onnx, "torch_eager": eager, "best_onnx": best_onnx, "best_torch": best_torch,
            "speedup_p50": round(eager[best_torch]["p50_ms"] / onnx[best_onnx]["p50_ms"], 2),
            "speedup_p99": round(eager[best_torch]["p99_ms"] / onnx[best_onnx]["p99_ms"], 2),
            "speedup_cpu_p50_1thread": round(eager["threads=1"]["cpu_p50_ms"] / onnx["threads=1"]["cpu_p50_ms"], 2)}


def split_timing(path: Path, frames: np.ndarray, steps: int, threads: int = 2) -> dict[str, Any]:
    """Where SAC+AE's batch-1 time goes: the exported graph cut at its flatten into the conv part
    and the dense part (fc 39200x50, LayerNorm, the 1024-wide MLP), each timed alone through
    onnxruntime. At batch 1 the dense layers are matrix-vector products, bound by reading their
    weights (bytes / time = the bandwidth they get); the conv part by FLOPs / conv throughput.
    The two run one after the other, so their sum is what the whole graph can at best reach here."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper, shape_inference, utils

    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    flat = next(node for node in graph.node if node.op_type == "Gemm").input[0]
    conv_out = producer[flat].input[0]
    parts = {"conv": (path.with_suffix(".conv.onnx"), [graph.input[0].name], [conv_out]),
             "dense": (path.with_suffix(".dense.onnx"), [flat], [graph.output[0].name])}
    for part, inputs, outputs in parts.values():
        utils.extract_model(str(path), str(part), inputs, outputs)
    conv = shape_inference.infer_shapes(onnx.load(str(parts["conv"][0]))).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*conv.value_info, *conv.output]}
    weights = {t.name: numpy_helper.to_array(t) for t in conv.initializer}
    conv_flop = sum(2 * int(np.prod(shapes[n.output[0]][1:])) * int(np.prod(weights[n.input[1]].shape[1:]))
                    for n in conv.node if n.op_type == "Conv")
    dense_bytes = sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(parts["dense"][0])).graph.initializer)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {name: ort.InferenceSession(str(part), opts, providers=["CPUExecutionProvider"])
                for name, (part, _, _) in parts.items()}
    feeds = {"conv": {parts["conv"][1][0]: frames[:1][None].repeat(3, axis=1)},
             "dense": {flat: np.random.default_rng(2).random((1, shapes[conv_out][1] * shapes[conv_out][2]
                                                                  * shapes[conv_out][3]), dtype=np.float32)}}
    configs = {f"sac-ae {name} part onnx threads={threads}": (lambda: None, lambda t, n=name: sessions[n].run(None, feeds[n]))
               for name in parts}
    results = {k.split()[1]: v for k, v in measure(configs, steps).items()}
    conv_ms, dense_ms = results["conv"]["p50_ms"], results["dense"]["p50_ms"]
    return {"conv_p50_ms": conv_ms, "conv_gflop": round(conv_flop / 1e9, 4),
            "conv_gflop_per_s": round(conv_flop / conv_ms / 1e6, 1),
            "dense_p50_ms": dense_ms, "dense_weight_mb": round(dense_bytes / 1e6, 2),
            "dense_gb_per_s": round(dense_bytes / dense_ms / 1e6, 1), "sum_p50_ms": round(conv_ms + dense_ms, 3),
            "threads": threads}


def bench_sac_ae(tmp: Path, steps: int) -> dict[str, Any]:
    k, size = 3, 84
    trained, plain, (cfg, facts) = agents("sac-ae", "cheetah-run", (3 * k, size, size))
    result = export_agent(plain, cfg, facts, tmp / "sac_ae.onnx")
    print(f"sac-ae: {result.checks[0]}", file=sys.stderr)
    frames = np.random.default_rng(0).integers(0, 256, (64, size, size, 3), dtype=np.uint8)
    # Torch eager gets its stacked observations precomputed (its side of the comparison skips stacking).
    stacks = [np.concatenate([frames[(t - j) % 64].transpose(2, 0, 1) for j in (2, 1, 0)]) for t in range(64)]
    configs = {**policy_configs(result.path, frames, "sac-ae"),
               **torch_configs(lambda t: trained.act(stacks[t % 64], mean=True), "sac-ae")}
    summary = summarize(measure(configs, steps), "sac-ae", "sac-ae")
    best = summary["onnx"][summary["best_onnx"]]
    summary["split"] = split_timing(result.path, frames, steps)
    summary["targets"] = TARGETS
    summary["targets_met"] = {"p50": best["p50_ms"] <= TARGETS["p50_ms"], "p99": best["p99_ms"] <= TARGETS["p99_ms"],
                              "speedup": summary["speedup_p50"] >= TARGETS["speedup_vs_torch"]}
    return summary


def bench_slac(tmp: Path, steps: int) -> dict[str, Any]:
    trained, plain, (cfg, facts) = agents("slac", "cheetah-run", (3, 64, 64))
    frames = np.random.default_rng(1).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
    configs: dict[str, Any] = {}
    for history in ("stateful", "stateless"):
        result = export_agent(plain, cfg, facts, tmp / f"slac_{history}.onnx", history=history)
        print(f"slac {history}: {result.checks[1]}", file=sys.stderr)
        configs.update(policy_configs(result.path, frames, f"slac-{history}"))
    episode = trained.episode_policy(mean=True)

    def step(t: int) -> None:
        obs = frames[t % 64].transpose(2, 0, 1)
        if t % 500 == 0:
            episode.reset(obs)
        episode.act(obs)

    results = measure({**configs, **torch_configs(step, "slac-HistoryPolicy")}, steps)
    return {h: summarize(results, f"slac-{h}", "slac-HistoryPolicy") for h in ("stateful", "stateless")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="acting steps per configuration (>= 1000)")
    parser.add_argument("--no-slac", action="store_true", help="skip the SLAC graphs")
    args = parser.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        report: dict[str, Any] = {"benchmark": "policy_latency", "cpu": cpu_name(), "cores": os.cpu_count(),
                                  "onnxruntime_device": "cpu", "steps": args.steps, "batch": 1}
        print("SAC+AE (paper size, cheetah-run):", file=sys.stderr)
        report["sac_ae"] = bench_sac_ae(Path(d), args.steps)
        if not args.no_slac:
            print("SLAC (paper size, cheetah-run):", file=sys.stderr)
            report["slac"] = bench_slac(Path(d), max(1000, args.steps // 2))
    report["loadavg_1min"] = {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
