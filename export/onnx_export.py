"""A training run directory -> ONE self-contained, self-checked ONNX policy (opset 18).

    load_run(run_dir)                       config.json + latest checkpoint + env facts -> agent
    build_spec(agent, cfg, facts, history)  which graph the algorithm exports (export.graphs)
    export_agent(...)                       torch.onnx.export -> metadata -> checker -> parity
                                            (SLAC: + stateful vs stateless vs training rollout) -> publish

The file is written next to its destination and renamed over it only after every check passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import onnx
import torch

from export.errors import ExportError
from export.graphs import GraphSpec, frame_stack_spec, slac_spec, state_spec
from export.metadata import EnvFacts, env_facts, policy_metadata
from export.precision import PrecisionOptions, make_variant
from export.verify import Parity, Rollout, check_history_rollout, check_model, check_parity
from sacae_deploy import contract

HISTORY_MODES = ("stateful", "stateless")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the policy file, its interface and precision, and the checks it passed."""

    path: Path
    interface: str
    exporter: str
    checks: tuple[str, ...]  # one line per self-check (parity; SLAC: the history rollout; a variant's gate)
    size_bytes: int
    precision: str = "fp32"


@dataclass
class LoadedRun:
    """A training run's config, agent and env facts, restored from its checkpoint for export."""

    cfg: Any
    agent: Any
    facts: EnvFacts
    env_steps: int


def _read_config(run_dir: Path) -> Any:
    from train import config

    path = run_dir / "config.json"
    if not run_dir.exists():
        raise ExportError(f"{run_dir} does not exist (expected a `sacae train` run directory)")
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is a file, not a `sacae train` run directory")
    if not path.is_file():
        raise ExportError(f"{run_dir} is not a `sacae train` run directory (no config.json)")
    try:
        return config.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExportError(f"{path} is not a readable run config ({type(exc).__name__}: {exc})") from None


def load_run(run_dir: Path) -> LoadedRun:
    """The run's agent with its latest weights, on the CPU, in the plain (NCHW, fp32) layout."""
    from train.checkpoint import load_agent_weights
    from train.workspace import make_agent

    cfg = _read_config(run_dir)
    agent_state, state = load_agent_weights(run_dir)
    facts = env_facts(cfg)
    # Same math, export-friendly: the plain backend (no CPU kernels, standard layouts), no autocast.
    plain = dataclasses.replace(cfg, backend="plain", bf16=False)
    pixels = cfg.algo != "sac-state"
    obs_shape = (3 * cfg.frame_stack, cfg.image_size, cfg.image_size) if pixels else (facts.state_dim,)
    agent = make_agent(plain, obs_shape, facts.action_dim, torch.device("cpu"))
    for rng in ("torch_rng", "cuda_rng"):  # the training run's generators: nothing to export
        agent_state.pop(rng, None)
    agent.load_state_dict(agent_state)
    agent.train_mode(False)
    return LoadedRun(cfg, agent, facts, int(state.get("env_step", 0)))


def build_spec(agent: Any, cfg: Any, facts: EnvFacts, history: str | None = None) -> GraphSpec:
    """Pick the graph an algorithm exports; `history` (stateful/stateless) applies to SLAC only."""
    if cfg.algo == "slac":
        return slac_spec(agent, cfg, facts, history or "stateful")
    if history is not None:
        raise ExportError(f"--history applies to slac runs only; this is a {cfg.algo} run")
    if cfg.algo == "sac-state":
        return state_spec(agent, cfg, facts)
    return frame_stack_spec(agent, cfg, facts)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' deprecation notes and registry warnings are not the user's business."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _torch_export(spec: GraphSpec, path: Path, legacy: bool) -> None:
    names = dict(input_names=list(spec.input_names), output_names=list(spec.output_names))
    with _quiet(), torch.no_grad():
        if legacy:
            axes = {n: {0: "batch"} for n in (*spec.input_names, *spec.output_names)} if spec.dynamic_batch else None
            torch.onnx.export(spec.module, spec.example, str(path), dynamo=False, opset_version=contract.OPSET,
                              dynamic_axes=axes, **names)
        else:
            batch = torch.export.Dim("batch")
            shapes = tuple({0: batch} for _ in spec.example) if spec.dynamic_batch else None
            torch.onnx.export(spec.module, spec.example, str(path), dynamo=True, opset_version=contract.OPSET,
                              dynamic_shapes=shapes, external_data=False, verbose=False, **names)


def _write(spec: GraphSpec, cfg: Any, facts: EnvFacts, path: Path, env_steps: int, legacy: bool) -> Parity:
    """Export one graph to `path` with its metadata, then run the checker and the parity check."""
    _torch_export(spec, path, legacy)
    model = onnx.load(str(path))
    meta = policy_metadata(cfg, facts, interface=spec.interface, frame_stack=spec.frame_stack,
                           image_size=spec.image_size, env_steps=env_steps,
                           exporter="legacy" if legacy else "dynamo", torch_version=torch.__version__,
                           extra=spec.metadata)
    onnx.helper.set_model_props(model, meta)
    model.doc_string = f"sacae {cfg.algo} policy for {cfg.env} ({spec.interface}); see sacae_deploy/contract.py"
    onnx.save_model(model, str(path), save_as_external_data=False)
    check_model(path)
    return check_parity(path, spec)


def _slac_rollout(agent: Any, cfg: Any, facts: EnvFacts, spec: GraphSpec, path: Path, env_steps: int,
                  legacy: bool) -> Rollout:
    """Export the other history mode next to `path` and run both against SlacAgent's HistoryPolicy."""
    other = "stateless" if spec.interface == contract.I_SLAC_STATEFUL else "stateful"
    with tempfile.TemporaryDirectory() as tmp:
        sibling = Path(tmp) / f"{other}.onnx"
        _write(slac_spec(agent, cfg, facts, other), cfg, facts, sibling, env_steps, legacy)
        stateless, stateful = (sibling, path) if other == "stateless" else (path, sibling)
        return check_history_rollout(stateless, stateful, agent.episode_policy(mean=True), facts)


def export_agent(agent: Any, cfg: Any, facts: EnvFacts, out: Path, env_steps: int = 0,
                 history: str | None = None, legacy: bool = False, precision: PrecisionOptions = PrecisionOptions(),
                 replay: Path | None = None) -> ExportResult:
    """Export, describe, check and publish one policy file (SLAC: plus the stateful/stateless rollout).
    A lower `precision` is converted from the checked fp32 graph and published only if the behaviour
    gate passes; `replay` (a checkpoint's replay folder) supplies its calibration frames."""
    precision.check()
    spec = build_spec(agent, cfg, facts, history)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, variant = out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.variant.tmp")
    try:
        checks = [_write(spec, cfg, facts, tmp, env_steps, legacy).line()]
        if cfg.algo == "slac":
            checks.append(_slac_rollout(agent, cfg, facts, spec, tmp, env_steps, legacy).line())
        if precision.precision != "fp32":
            checks += make_variant(tmp, variant, precision, replay=replay, env=cfg.env,
                                   episode_length=cfg.episode_length)
            os.replace(variant, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        variant.unlink(missing_ok=True)
    return ExportResult(out, spec.interface, "legacy" if legacy else "dynamo", tuple(checks), out.stat().st_size,
                        precision.precision)


def export_run(run_dir: Path, out: Path | None = None, history: str | None = None,
               legacy: bool = False, precision: PrecisionOptions = PrecisionOptions()) -> ExportResult:
    """`sacae export`: RUN_DIR/policy.onnx (or `out`) from the run's latest checkpoint, at `precision`
    (calibrated on that checkpoint's replay where it has one)."""
    from train.checkpoint import candidates

    if history is not None and history not in HISTORY_MODES:
        raise ExportError(f"--history must be one of {', '.join(HISTORY_MODES)}, got {history!r}")
    precision.check()
    run = load_run(run_dir)
    replay = candidates(run_dir)[0][0] / "replay"  # the checkpoint load_run read
    return export_agent(run.agent, run.cfg, run.facts, out or run_dir / "policy.onnx", run.env_steps, history, legacy,
                        precision, replay if replay.is_dir() else None)
