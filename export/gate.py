"""The behaviour gate: a lower-precision policy is published only if it behaves like its fp32 original.

Both policies run closed-loop in the simulator on the same seeded episodes (`sacae eval`'s
`run_episodes`: episode e starts from seed + e), and the variant passes when

  - returns: |mean_variant - mean_fp32| <= max(5% of |mean_fp32|, one fp32 standard error
    (sample sd / sqrt(episodes))): the noise of the fp32 estimate itself, or 5% where that is smaller;
  - actions: at every decision of the fp32 policy's own trajectories, the variant's action for the
    very input the fp32 graph got differs from fp32's by at most ACTION_BOUND of the action range
    (high - low) in every dimension: 0.1 is 0.2 in DeepMind Control's [-1, 1], a visible but not a
    qualitative change of a motor command; a variant that crosses it somewhere acts differently
    there, whatever the returns say.

The tensor error (the same difference on the calibration decisions) is reported with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.precision import Inputs, recording_policy
from export.verify import cpu_session
from sacae_deploy import contract

SEED = 0  # `sacae eval`'s default: episode e from seed e
RETURN_FRACTION = 0.05
ACTION_BOUND = 0.1  # of the action range, per dimension, at every decision


def _number(x: float | None) -> float | None:
    """A JSON-safe number to 4 significant digits: None for a missing, NaN or infinite one (a broken variant)."""
    return float(f"{x:.4g}") if x is not None and math.isfinite(x) else None


class ActionDiff:
    """|variant - fp32| action for the same graph inputs, per dimension as a fraction of the action
    range, accumulated over calls (batch-1 inputs, as `Policy` feeds them)."""

    def __init__(self, reference: Path, variant: Path, span: np.ndarray) -> None:
        self.reference, self.variant, self.span = cpu_session(reference), cpu_session(variant), span
        self.diffs: list[np.ndarray] = []

    def add(self, inputs: Inputs) -> None:
        """Run both graphs on one decision's inputs and record their action difference."""
        want = self.reference.run([contract.OUT_ACTION], inputs)[0][0]
        self.diffs.append(np.abs(self.variant.run([contract.OUT_ACTION], inputs)[0][0] - want) / self.span)

    def stats(self) -> dict[str, Any]:
        """Max and mean difference over the recorded decisions (None for both if any was not finite)."""
        d = np.stack(self.diffs)
        finite = bool(np.isfinite(d).all())
        return {"max": _number(float(d.max())) if finite else None,
                "mean": _number(float(d.mean())) if finite else None, "decisions": len(self.diffs)}


@dataclass
class GateResult:
    """The behaviour gate's verdict on a lower-precision variant, with the evidence behind it."""

    precision: str
    env: str
    episodes: int
    seed: int
    returns_fp32: list[float | None]  # None: an episode the policy failed (a non-finite action)
    returns_variant: list[float | None]
    mean_fp32: float | None
    mean_variant: float | None
    stderr_fp32: float | None
    return_tolerance: float | None
    action_bound: float
    action_diff: dict[str, Any]  # max, mean (fraction of the action range), decisions: the fp32 trajectories
    tensor_error: dict[str, Any]  # the same on the calibration decisions
    passed: bool

    def to_json(self) -> dict[str, Any]:
        """The result as stored in the variant's metadata, with the unit of the action differences."""
        return {**asdict(self), "action_unit": "fraction of the action range (high - low)"}

    def line(self) -> str:
        """A one-line human summary of the gate, for the export's report."""
        def num(x: float | None, fmt: str) -> str:
            return "n/a" if x is None else format(x, fmt)

        d, t = self.action_diff, self.tensor_error
        return (f"gate ({self.precision}, {self.episodes} episodes of {self.env}): return "
                f"{num(self.mean_variant, '.1f')} vs fp32 {num(self.mean_fp32, '.1f')} (tolerance "
                f"±{num(self.return_tolerance, '.1f')}); action diff on the fp32 trajectories max "
                f"{num(d['max'], '.2g')} mean {num(d['mean'], '.2g')} of the range (bound {self.action_bound}); "
                f"tensor error on {t['decisions']} calibration decisions max {num(t['max'], '.2g')} "
                f"mean {num(t['mean'], '.2g')}: {'passed' if self.passed else 'REFUSED'}")


def return_tolerance(returns: list[float]) -> tuple[float, float]:
    """(standard error of the mean, tolerance = max(5% of |mean|, standard error))."""
    stderr = float(np.std(returns, ddof=1) / math.sqrt(len(returns))) if len(returns) > 1 else 0.0
    return stderr, max(RETURN_FRACTION * abs(float(np.mean(returns))), stderr)


def run_gate(fp32: Path, variant: Path, precision: str, env: str, episodes: int, episode_length: int,
             calibration: list[Inputs]) -> GateResult:
    """Run both policies on the same seeded episodes of `env` and judge the variant (see above)."""
    from sacae_deploy.evaluation import run_episodes
    from sacae_deploy.policy import Policy

    candidate = Policy.load(variant, device="cpu")
    span = candidate.action_high - candidate.action_low
    trajectory, tensor = ActionDiff(fp32, variant, span), ActionDiff(fp32, variant, span)
    for inputs in calibration:
        tensor.add(inputs)
    returns_fp32 = run_episodes(recording_policy(fp32, trajectory.add), env, "none", episodes, SEED,
                                episode_length=episode_length)
    returns_variant = run_episodes(candidate, env, "none", episodes, SEED, episode_length=episode_length)
    action = trajectory.stats()
    done_fp32 = [r for r in returns_fp32 if r is not None]
    done_variant = [r for r in returns_variant if r is not None]
    stats: tuple[float | None, ...] = (None, None, None, None)  # means, stderr, tolerance
    returns_ok = False
    if len(done_fp32) == len(done_variant) == episodes:  # a failed episode (non-finite action) refuses
        stderr, tolerance = return_tolerance(done_fp32)
        mean_fp32, mean_variant = float(np.mean(done_fp32)), float(np.mean(done_variant))
        stats, returns_ok = (mean_fp32, mean_variant, stderr, tolerance), abs(mean_variant - mean_fp32) <= tolerance
    passed = returns_ok and action["max"] is not None and action["max"] <= ACTION_BOUND
    return GateResult(precision, env, episodes, SEED, returns_fp32, returns_variant, *map(_number, stats),
                      ACTION_BOUND, action, tensor.stats(), passed)
