"""Every export checks itself before it is published: the ONNX checker, then onnxruntime against
the training code on random non-zero inputs. A file that fails never replaces a good one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from export.errors import ExportError
from export.graphs import GraphSpec

TOLERANCE = 1e-4


@dataclass(frozen=True)
class Parity:
    """The worst onnxruntime-vs-torch action error over random batches (the export's parity check)."""

    max_abs_error: float
    batches: int
    batch_size: int

    def line(self) -> str:
        """A one-line human summary of the parity check, for the export's report."""
        return (f"parity: max |onnxruntime - torch| = {self.max_abs_error:.2e} over {self.batches} random "
                f"batches of {self.batch_size} (limit {TOLERANCE:.0e})")


def check_model(path: Path) -> None:
    """Run the full ONNX checker on `path`; raise ExportError with its first line if it fails."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"exported graph fails the ONNX checker: {str(exc).splitlines()[0]}") from None


def cpu_session(path: Path) -> ort.InferenceSession:
    """A plain CPU session: parity is about the graph, not the provider."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_parity(path: Path, spec: GraphSpec, batches: int = 4, batch_size: int = 3, seed: int = 0) -> Parity:
    """Max abs error of onnxruntime vs the training code, over every output and several different
    random batches (batch 1 for the stateful graph, whose batch is fixed)."""
    session = cpu_session(path)
    rng = np.random.default_rng(seed)
    size = batch_size if spec.dynamic_batch else 1
    worst = 0.0
    for _ in range(batches):
        inputs = spec.sample(rng, size)
        for name, got, want in zip(spec.output_names, session.run(list(spec.output_names), inputs),
                                   spec.reference(inputs)):
            if got.shape != want.shape:
                raise ExportError(f"exported output {name!r} has shape {got.shape}, the training code {want.shape}")
            err = float(np.max(np.abs(got - want)))
            worst = max(worst, err if np.isfinite(err) else np.inf)
    result = Parity(worst, batches, size)
    if not worst <= TOLERANCE:
        raise ExportError(f"exported graph disagrees with torch: {result.line()}")
    return result


@dataclass(frozen=True)
class Rollout:
    """The SLAC history check: worst errors between the two graphs and against the training policy."""

    steps: int
    resets: tuple[int, ...]
    stateful_vs_stateless: float
    vs_training: float

    def line(self) -> str:
        """A one-line human summary of the history rollout check, for the export's report."""
        return (f"rollout: {self.steps} steps, resets at {list(self.resets)}: max |stateful - stateless| = "
                f"{self.stateful_vs_stateless:.2e}, max |onnx - training HistoryPolicy| = {self.vs_training:.2e}")


def check_history_rollout(stateless: Path, stateful: Path, training_policy: Any, facts: Any,
                          steps: int = 20, resets: tuple[int, ...] = (0, 12), seed: int = 1) -> Rollout:
    """Drive both SLAC graphs through `sacae_deploy.Policy` (the runtime's own history keeping) and
    the training code's episode policy over the same frames, with an episode reset mid-way."""
    from export.graphs import env_bounds
    from sacae_deploy.policy import Policy

    graphs = [Policy.load(stateless, device="cpu"), Policy.load(stateful, device="cpu")]
    size = graphs[0].image_size
    frames = np.random.default_rng(seed).integers(1, 256, (steps, size, size, 3), dtype=np.uint8)
    between = vs_training = 0.0
    for t, frame in enumerate(frames):
        obs = frame.transpose(2, 0, 1)  # PixelObservation's CHW frame
        if t in resets:
            training_policy.reset(obs)
            for g in graphs:
                g.reset()
        want = env_bounds(training_policy.act(obs), facts)
        got = [g.act(frame) for g in graphs]
        between = max(between, float(np.max(np.abs(got[0] - got[1]))))
        vs_training = max(vs_training, *(float(np.max(np.abs(x - want))) for x in got))
    result = Rollout(steps, resets, between, vs_training)
    if not max(between, vs_training) <= TOLERANCE:
        raise ExportError(f"SLAC history graphs disagree: {result.line()}")
    return result
