"""Robustness evaluation (`sacae eval`): exported policies on a DeepMind Control task, clean and
with moving-ball backgrounds (SAC+AE section 5.2), summarised as a table, a plot and videos.

Episodes run in the simulator's layers, the ones training uses (sacae_deploy.sim: ActionRepeat, then
ONE render per decision), so a policy sees exactly the frames `sacae run --source dmc:ENV` would
hand it at decision times, at a K-th of the rendering cost. Episode e of every condition starts
from seed + e: the clean and the distractor runs of one policy face the same initial states, so the
drop measures the background.
An episode in which the policy gives a non-finite action fails (nothing reaches the simulator): the
report counts it in `failed` and means are over the episodes that completed.
Needs dm_control (the `train` extra) but never torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sacae_deploy.actions import ActionBounds
from sacae_deploy.errors import NonFiniteActionError, SacaeError
from sacae_deploy.files import atomic_write_text
from sacae_deploy.policy import Policy

VIDEO_SCALE = 3  # policy-size frames (84 px) are upscaled for people to look at
VIDEO_MAX_DECISIONS = 200


class EvalError(SacaeError, ValueError):
    """Policies or settings `sacae eval` cannot compare."""


@dataclass
class ConditionResult:
    """One policy under one background: its episodes' returns and the statistics of those that completed."""

    policy: str
    algo: str
    env: str
    condition: str
    returns: list[float | None]  # per episode, in seed order; None: the episode failed
    failures: list[str] = field(default_factory=list)  # why, one line per failed episode
    completed: int = field(init=False)
    failed: int = field(init=False)
    mean: float | None = field(init=False)  # over the completed episodes; None when none completed
    std: float | None = field(init=False)

    def __post_init__(self) -> None:
        done = [r for r in self.returns if r is not None]
        self.completed, self.failed = len(done), len(self.returns) - len(done)
        self.mean = float(np.mean(done)) if done else None
        self.std = float(np.std(done)) if done else None

    def cell(self) -> str:
        """This result as the table and `sacae eval`'s progress lines show it."""
        return cell(self.mean, self.std, self.failed, len(self.returns))


def cell(mean: float | None, std: float | None, failed: int, episodes: int) -> str:
    """'mean ± sd', with the failed count when there is one (the mean is then over fewer episodes)."""
    stats = "n/a" if mean is None or std is None else f"{mean:.1f} ± {std:.1f}"
    return stats + (f" ({failed} of {episodes} failed)" if failed else "")


def policy_name(path: Path, taken: set[str]) -> str:
    """runs/x/policy.onnx -> 'x'; other files -> their stem; made unique within one table."""
    name = path.parent.name if path.stem == "policy" and path.parent.name else path.stem
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}-{n}", n + 1
    taken.add(unique)
    return unique


def run_episodes(policy: Policy, env_name: str, condition: str, episodes: int, seed: int,
                 video: list[np.ndarray] | None = None, on_episode: Callable[[float | None], None] | None = None,
                 failures: list[str] | None = None, episode_length: int = 1000) -> list[float | None]:
    """Per-episode returns, None for an episode the policy failed (a non-finite action; `failures`
    receives why, one line each); `video` (if given) receives the first episode's decision frames.
    `episode_length` (env steps) is DeepMind Control's 1000 unless a run trained on shorter ones (the
    export's behaviour gate evaluates on its run's own length)."""
    from distractors import make_background
    from sacae_deploy.sim.envs import make_env

    pixels = policy.image_size is not None
    env = make_env(env_name, seed, pixels=pixels, action_repeat=policy.action_repeat,
                   image_size=policy.image_size or 84, frame_stack=1, episode_length=episode_length,
                   camera_id=policy.camera_id, render=make_background(condition, seed) if pixels else None)
    if env.action_dim != policy.action_dim:
        env.close()
        raise EvalError(f"{env_name} takes {env.action_dim}-d actions; "
                        f"the {policy.env} policy gives {policy.action_dim}-d")
    # The env takes [-1, 1] and maps to the task's bounds; policies emit finite actions in those
    # bounds, and Policy.load has checked that low < high.
    bounds = ActionBounds(policy.action_low, policy.action_high)
    returns: list[float | None] = []
    try:
        for ep in range(episodes):
            obs = env.reset(seed=seed + ep)
            policy.reset()
            total: float | None = 0.0
            done = False
            while not done:
                frame = obs.transpose(1, 2, 0) if pixels else obs
                if video is not None and ep == 0 and pixels and len(video) < VIDEO_MAX_DECISIONS:
                    video.append(frame)
                try:
                    action = bounds.to_unit(policy.act(frame))
                except NonFiniteActionError as exc:
                    if failures is not None:
                        failures.append(f"episode {ep}: {exc}")
                    total = None
                    break
                step = env.step(action)
                obs, total, done = step.obs, total + step.reward, step.last
            returns.append(total)
            if on_episode is not None:
                on_episode(total)
    finally:
        env.close()
    return returns


def relative_drop(clean: float | None, other: float | None) -> float | None:
    """(clean - other) / |clean|: 0.25 means a quarter of the clean return is lost; None when either
    mean is missing (no episode completed) or clean is 0."""
    return None if clean is None or other is None or clean == 0 else (clean - other) / abs(clean)


def summary_rows(results: Sequence[ConditionResult], conditions: Sequence[str]) -> list[dict[str, Any]]:
    """One row per policy: per condition the mean/sd over completed episodes and the failed count,
    the relative drop of each against the first, and the row's failed episodes in all."""
    rows = []
    for name in dict.fromkeys(r.policy for r in results):
        mine = {r.condition: r for r in results if r.policy == name}
        first = mine[conditions[0]]
        row: dict[str, Any] = {"policy": name, "algo": first.algo, "env": first.env,
                               "failed": sum(mine[c].failed for c in conditions)}
        for cond in conditions:
            r = mine[cond]
            row[cond] = {"mean": r.mean, "std": r.std, "returns": r.returns, "completed": r.completed,
                         "failed": r.failed}
            if cond != conditions[0]:
                row[f"drop_{cond}"] = relative_drop(first.mean, r.mean)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], conditions: Sequence[str], episodes: int) -> str:
    """The robustness results as a markdown table: returns per condition, their drops and failures."""
    head = (["policy", "algo"] + [f"{c} (mean ± sd of completed)" for c in conditions]
            + [f"drop {c}" for c in conditions[1:]] + ["failed"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["policy"], row["algo"]] + [cell(row[c]["mean"], row[c]["std"], row[c]["failed"],
                                                     len(row[c]["returns"])) for c in conditions]
        for c in conditions[1:]:
            drop = row[f"drop_{c}"]
            cells.append("n/a" if drop is None else f"{100 * drop:+.1f}%")
        lines.append("| " + " | ".join(cells + [str(row["failed"])]) + " |")
    env = rows[0]["env"] if rows else "?"
    note = (f"\n{env}, {episodes} episode(s) per cell, deterministic (mean) actions; episode e of every "
            f"condition starts from the same seed. Drop = (clean - distractors) / |clean|. An episode fails "
            f"when the policy gives a non-finite action: it is counted in `failed` and left out of the mean, "
            f"which is over the episodes that completed.\n")
    return "\n".join(lines) + "\n" + note


def bar_plot(path: Path, rows: list[dict[str, Any]], conditions: Sequence[str], title: str) -> None:
    """Grouped bars (one group per policy, one bar per condition) with ± sd error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(conditions)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(rows) + 2), 3.6))

    def value(row: dict[str, Any], cond: str, key: str) -> float:
        return np.nan if row[cond][key] is None else row[cond][key]  # no bar where no episode completed

    for i, cond in enumerate(conditions):
        ax.bar(x + (i - (len(conditions) - 1) / 2) * width, [value(r, cond, "mean") for r in rows], width,
               yerr=[value(r, cond, "std") for r in rows], capsize=3, label=cond)
    ax.set_xticks(x, [r["policy"] for r in rows])
    ax.set_ylabel("episode return")
    ax.set_title(title, fontsize=10)
    ax.legend(title="background")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def side_by_side(clips: Sequence[Sequence[np.ndarray]], scale: int = VIDEO_SCALE) -> list[np.ndarray]:
    """Frames of several clips next to each other (the shorter ones hold their last frame), upscaled."""
    length = max(len(c) for c in clips)
    out = []
    for t in range(length):
        row = np.concatenate([c[min(t, len(c) - 1)] for c in clips], axis=1)
        out.append(np.repeat(np.repeat(row, scale, axis=0), scale, axis=1))
    return out


def write_report(out: Path, results: Sequence[ConditionResult], conditions: Sequence[str], episodes: int,
                 seed: int) -> dict[str, Path]:
    """results.json, results.md and returns.png in `out`; returns their paths."""
    rows = summary_rows(results, conditions)
    env = rows[0]["env"]
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "returns.png"}
    payload = {"env": env, "episodes": episodes, "seed": seed, "conditions": list(conditions),
               "rows": rows, "results": [asdict(r) for r in results]}
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], f"# Robustness: {env}\n\n" + markdown_table(rows, conditions, episodes))
    bar_plot(paths["plot"], rows, conditions, f"{env}: clean vs distractor backgrounds")
    return paths


def check_conditions(items: Sequence[str]) -> list[str]:
    """Validate `--distractors` names, dropping blanks and repeats; raise EvalError on an unknown one."""
    from distractors import DISTRACTORS

    conditions = list(dict.fromkeys(c.strip() for c in items if c.strip()))
    bad = [c for c in conditions if c not in DISTRACTORS]
    if bad or not conditions:
        raise EvalError(f"--distractors takes a comma-separated list of {', '.join(DISTRACTORS)}; "
                        f"got {','.join(items)!r}")
    return conditions


def fps_of(policy: Policy) -> int:
    """Decision frames per second of simulated time (what a viewer should see in real time)."""
    return max(1, round(1.0 / (policy.control_timestep * policy.action_repeat)))
