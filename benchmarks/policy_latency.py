"""Batch-1 acting latency per precision and interface: `sacae_deploy.Policy.act` on the fp32 export
and its fp16 / int8 variants, against a plain `torch.onnx.export` of the same network (the anchor),
all timed in one run.

Paper-size networks with random weights (latency does not depend on the weights' values; the
behaviour gate needs trained policies and is skipped here): SAC+AE at 84x84, frame stack 3,
feature 50, hidden 1024 on cheetah-run (6 actions); SLAC at 64x64, history 8, its stateful and
stateless graphs. int8 is calibrated on real frames of cheetah-run (fresh episodes of the random
policy). The anchor is the training network's own deterministic action exported as it stands
(float NCHW input in 0..255, the /255 inside, history concatenated by the caller) and run with
`session.run` on a prepared input; `Policy.act` also copies the frame into its history.

Configurations run in interleaved blocks so that load from other processes spreads over all of
them alike; thread CPU time is reported next to wall time, and /proc/stat's steal share with the
load average: on a shared host compare the ratios within one run, not absolute figures across runs.

    .venv/bin/python benchmarks/policy_latency.py [--steps 2000] [--calibration 300] [--no-slac]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from machine import StealMeter, cpu_name  # noqa: E402
from torch import nn  # noqa: E402

from export import PrecisionOptions, export_agent  # noqa: E402
from export.metadata import env_facts  # noqa: E402
from export.precision import bf16_unsupported, make_variant  # noqa: E402
from sacae_deploy import Policy  # noqa: E402
from sacae_deploy.errors import SacaeError  # noqa: E402
from train import config as TC  # noqa: E402
from train.workspace import make_agent  # noqa: E402

THREADS = 2
BLOCK = 250  # steps per interleaved block
PRECISIONS = ("fp32", "fp16", "int8")
# Targets of issue #25 on a 2-core CPU, batch 1, 2 threads.
TARGETS = {"sac_ae_int8_p50_ms": 0.5, "sac_ae_int8_speedup_vs_fp32": 2.5, "sac_ae_int8_p99_over_p50": 1.5,
           "slac_stateful_int8_p50_ms": 0.35, "fp32_over_plain_p50": 1.05}
Step = Callable[[int], None]


@dataclass
class Interface:
    """One policy interface: its exported files per precision, the plain anchor, the frames to act on."""

    name: str
    files: dict[str, Path]
    plain: Step
    frames: np.ndarray  # (n, H, W, 3) uint8


def agent(algo: str, obs_shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """A paper-size agent with random weights in the export layout, its config and env facts."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TC.resolve(algo, "paper", env="cheetah-run"), backend="plain", bf16=False)
    facts = env_facts(cfg)
    net = make_agent(cfg, obs_shape, facts.action_dim, torch.device("cpu"))
    net.train_mode(False)
    return net, cfg, facts


def plain_session(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> Callable[[], None]:
    """torch.onnx.export as it stands, and a call of `session.run` on `args` as numpy."""
    names = [f"in{i}" for i in range(len(args))]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=names, verbose=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    return lambda: session.run(None, feeds)


class PlainSacAe(nn.Module):
    """The SAC+AE actor's deterministic action on a float (1, 3K, H, W) stack in 0..255: its conv
    stack as the plain nn.Sequential it is (the training encoder's fused CPU path does not export)."""

    def __init__(self, actor: nn.Module) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        maps = self.actor.encoder.trunk.net(obs / 255.0)
        return torch.tanh(self.actor.dist_params(self.actor.encoder.head(maps))[0])


class PlainSlac(nn.Module):
    """SLAC's encoder on float (N, 3, 64, 64) frames in 0..255 and its actor over the history; the
    stateful form also takes the earlier frames' features (`cache`), the stateless one all H frames."""

    def __init__(self, encoder: nn.Module, actor: nn.Module) -> None:
        super().__init__()
        self.encoder, self.actor = encoder, actor

    def forward(self, frames: torch.Tensor, actions: torch.Tensor, *cache: torch.Tensor) -> torch.Tensor:
        features = self.encoder.net(frames / 255.0).flatten(1)[None]
        return self.actor(torch.cat([*cache, features], dim=1), actions)


def variants(fp32: Path, cfg: Any, calibration: int) -> dict[str, Path]:
    """fp32 and its fp16 / int8 variants (gate skipped: random weights), as `sacae export` makes them."""
    files = {"fp32": fp32}
    for precision in PRECISIONS[1:]:
        files[precision] = fp32.with_name(f"{fp32.stem}.{precision}.onnx")
        make_variant(fp32, files[precision], PrecisionOptions(precision, calibration, gate=False), replay=None,
                     env=cfg.env, episode_length=cfg.episode_length)
    return files


def sac_ae(tmp: Path, calibration: int) -> Interface:
    net, cfg, facts = agent("sac-ae", (9, 84, 84))
    fp32 = export_agent(net, cfg, facts, tmp / "sac_ae.onnx").path
    frames = np.random.default_rng(0).integers(0, 256, (64, 84, 84, 3), dtype=np.uint8)
    stack = torch.as_tensor(np.concatenate([f.transpose(2, 0, 1) for f in frames[:3]])[None], dtype=torch.float32)
    plain = plain_session(PlainSacAe(net.actor), (stack,), tmp / "sac_ae.plain.onnx")
    return Interface("sac_ae_frame_stack", variants(fp32, cfg, calibration), lambda t: plain(), frames)


def slac(tmp: Path, calibration: int) -> list[Interface]:
    net, cfg, facts = agent("slac", (3, 64, 64))
    frames = np.random.default_rng(1).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
    h, f, a = cfg.history_length, net.feature_dim, facts.action_dim
    module = PlainSlac(net.encoder, net.actor)
    actions = torch.zeros(1, h - 1, a)
    out = []
    for history, n_frames, cache in (("stateful", 1, (torch.zeros(1, h - 1, f),)), ("stateless", h, ())):
        fp32 = export_agent(net, cfg, facts, tmp / f"slac_{history}.onnx", history=history).path
        pixels = torch.as_tensor(frames[:n_frames].transpose(0, 3, 1, 2), dtype=torch.float32)
        plain = plain_session(module, (pixels, actions, *cache), tmp / f"slac_{history}.plain.onnx")
        out.append(Interface(f"slac_{history}", variants(fp32, cfg, calibration), lambda t, p=plain: p(), frames))
    return out


def measure(configs: dict[str, Step], steps: int) -> dict[str, dict[str, float]]:
    """Every config runs `steps` steps in interleaved blocks; p50/p99 wall and p50 thread CPU per config."""
    wall: dict[str, list[int]] = {k: [] for k in configs}
    cpu: dict[str, list[int]] = {k: [] for k in configs}
    for start in range(0, steps, BLOCK):
        for name, step in configs.items():
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
    return out


def policy_step(path: Path, frames: np.ndarray, device: str = "cpu", threads: int = THREADS, spin: bool = True) -> Step:
    policy = Policy.load(path, device=device, threads=threads, spin=spin)

    def step(t: int) -> None:
        if t % 500 == 0:
            policy.reset()
        policy.act(frames[t % len(frames)])

    return step


def table(interface: Interface, results: dict[str, dict[str, float]]) -> str:
    plain = results["plain"]["p50_ms"]
    lines = [f"{interface.name} (batch 1, {THREADS} threads)",
             "| precision | p50 ms | p99 ms | thread cpu p50 ms | p50 / plain export | size MB |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        size = f"{interface.files[name].stat().st_size / 1e6:.2f}" if name in interface.files else "-"
        lines.append(f"| {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['cpu_p50_ms']:.3f} | "
                     f"{r['p50_ms'] / plain:.2f} | {size} |")
    return "\n".join(lines)


def gpu_note(path: Path) -> str | None:
    """None when onnxruntime starts CUDA here (GPU rows are then timed), else why not."""
    try:
        Policy.load(path, device="cuda")
    except SacaeError as exc:
        return f"skipped: {exc}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="acting steps per configuration (>= 1000)")
    parser.add_argument("--calibration", type=int, default=300, help="int8 calibration decisions")
    parser.add_argument("--no-slac", action="store_true", help="skip the SLAC graphs")
    args = parser.parse_args()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporters' registry notes
    load_start = os.getloadavg()[0]
    steal = StealMeter()
    report: dict[str, Any] = {"benchmark": "policy_latency", "cpu": cpu_name(), "cores": os.cpu_count(),
                              "threads": THREADS, "batch": 1, "steps": args.steps, "calibration": args.calibration,
                              "bf16": f"refused: {bf16_unsupported() or 'no converter'}", "interfaces": {}}
    with tempfile.TemporaryDirectory() as d:
        interfaces = [sac_ae(Path(d), args.calibration)] + ([] if args.no_slac else slac(Path(d), args.calibration))
        report["gpu"] = gpu_note(interfaces[0].files["fp32"]) or "timed: rows '<precision> cuda'"
        for interface in interfaces:
            configs = {"plain": interface.plain}
            for precision, path in interface.files.items():
                configs[precision] = policy_step(path, interface.frames)
                if not report["gpu"].startswith("skipped"):
                    configs[f"{precision} cuda"] = policy_step(path, interface.frames, "cuda")
            results = measure(configs, args.steps)
            print(table(interface, results) + "\n", file=sys.stderr)
            report["interfaces"][interface.name] = results
    report["loadavg_1min"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
    report["cpu_steal"] = steal.fraction()
    sac = report["interfaces"]["sac_ae_frame_stack"]
    met = {"sac_ae_int8_p50_ms": sac["int8"]["p50_ms"] <= TARGETS["sac_ae_int8_p50_ms"],
           "sac_ae_int8_speedup_vs_fp32": (sac["fp32"]["p50_ms"] / sac["int8"]["p50_ms"]
                                           >= TARGETS["sac_ae_int8_speedup_vs_fp32"]),
           "sac_ae_int8_p99_over_p50": (sac["int8"]["p99_ms"] / sac["int8"]["p50_ms"]
                                        <= TARGETS["sac_ae_int8_p99_over_p50"]),
           "fp32_over_plain_p50": all(r["fp32"]["p50_ms"] / r["plain"]["p50_ms"] <= TARGETS["fp32_over_plain_p50"]
                                      for r in report["interfaces"].values())}
    if "slac_stateful" in report["interfaces"]:
        met["slac_stateful_int8_p50_ms"] = (report["interfaces"]["slac_stateful"]["int8"]["p50_ms"]
                                            <= TARGETS["slac_stateful_int8_p50_ms"])
    report["sac_ae_int8_speedup_vs_fp32"] = round(sac["fp32"]["p50_ms"] / sac["int8"]["p50_ms"], 2)
    report["targets"], report["targets_met"] = TARGETS, met
    print(json.dumps(report))


if __name__ == "__main__":
    main()
