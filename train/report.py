"""`sacae report`: a sweep's eval returns per (algo, task) beside the published numbers.

The trial folders' own files (config.json, eval.csv, checkpoints/latest) are the truth: whatever Ray
recorded is ignored, so a report works on a sweep still running, on one whose driver was killed, and
on ordinary `sacae train` runs laid out side by side. numpy + matplotlib only (no torch, no Ray).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sacae_deploy.errors import SacaeError
from sacae_deploy.files import atomic_write_text

SWEEP_FILE = "sweep.json"  # written by `sacae sweep`: the grid and where its trial folders live
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # a report is a pure function of the files
CI_LEVEL = 0.95
CHECKPOINT_NAME = re.compile(r"step_(\d+)(?:\.\d+)?")


class ReportError(SacaeError, ValueError):
    """Nothing to report on, or an --at list that is not steps."""


@dataclass
class TrialLog:
    """One run folder: what it was asked to do, how far its published checkpoint got, its eval rows."""

    algo: str
    env: str
    seed: int
    path: Path
    env_steps: int
    done_step: int  # env step of the newest published checkpoint (0: none yet)
    steps: np.ndarray = field(repr=False)
    returns: np.ndarray = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.done_step >= self.env_steps


def checkpoint_step(run_dir: Path) -> int:
    """Env step of the run's published checkpoint, 0 if none: `checkpoints/latest` names it
    `step_%09d` (or `step_%09d.K`, a re-save; train.checkpoint's names, read here without torch)."""
    try:
        match = CHECKPOINT_NAME.fullmatch((run_dir / "checkpoints" / "latest").read_text().strip())
    except (OSError, UnicodeDecodeError):
        return 0
    return int(match[1]) if match else 0


def read_eval(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(env steps, mean eval returns) from an eval.csv; a row being appended right now is skipped."""
    steps: list[int] = []
    returns: list[float] = []
    if path.exists():
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    step, value = int(float(row["env_step"])), float(row["episode_return"])
                except (KeyError, TypeError, ValueError):
                    continue
                steps.append(step)
                returns.append(value)
    return np.asarray(steps, dtype=np.int64), np.asarray(returns, dtype=np.float64)


def trials_root(directory: Path) -> Path:
    """Where a sweep's trial folders live: its sweep.json says (shared --storage), else the directory."""
    meta = directory / SWEEP_FILE
    if meta.exists():
        return directory / json.loads(meta.read_text())["trials_root"]  # "." or an absolute --storage path
    return directory


def find_trials(directory: Path) -> list[TrialLog]:
    """Every run folder (a config.json beside an eval.csv or checkpoints/) under the directory."""
    if not directory.is_dir():
        raise ReportError(f"{directory} is not a directory")
    logs = []
    for config in sorted(trials_root(directory).rglob("config.json")):
        run_dir = config.parent
        try:
            cfg = json.loads(config.read_text())
            algo, env, seed, env_steps = cfg["algo"], cfg["env"], int(cfg["seed"]), int(cfg["env_steps"])
        except (OSError, ValueError, TypeError, KeyError):
            continue  # not a run config (or one being replaced right now)
        steps, returns = read_eval(run_dir / "eval.csv")
        logs.append(TrialLog(algo, env, seed, run_dir, env_steps, checkpoint_step(run_dir), steps, returns))
    return logs


def planned_trials(directory: Path) -> list[str]:
    """The trial names a sweep's grid holds (empty for a folder of hand-made runs)."""
    meta = directory / SWEEP_FILE
    return list(json.loads(meta.read_text()).get("trials", [])) if meta.exists() else []


def value_at(steps: np.ndarray, returns: np.ndarray, at: int) -> tuple[int, float] | None:
    """The eval row nearest `at` from below (step, return); None if the run has none that early."""
    below = np.flatnonzero(steps <= at)
    if below.size == 0:
        return None
    i = below[np.argmax(steps[below])]
    return int(steps[i]), float(returns[i])


def bootstrap_ci(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, level: float = CI_LEVEL,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds (seeds resampled with replacement)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def load_references() -> dict[str, Any]:
    """The published numbers shipped with the package (train/reference_results.json)."""
    return json.loads(resources.files("train").joinpath("reference_results.json").read_text())


def summarize(logs: list[TrialLog], at_steps: list[int], references: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (algo, task, --at step): mean, sd, bootstrap CI over seeds, and the references."""
    rows = []
    groups = sorted({(t.algo, t.env) for t in logs})
    for algo, env in groups:
        seeds = sorted((t for t in logs if (t.algo, t.env) == (algo, env)), key=lambda t: t.seed)
        for at in at_steps:
            hits = [(t.seed, value_at(t.steps, t.returns, at)) for t in seeds]
            found = [(s, h) for s, h in hits if h is not None]
            values = np.asarray([h[1] for _, h in found])
            used = sorted({h[0] for _, h in found})
            row: dict[str, Any] = {
                "algo": algo, "env": env, "at": at, "seeds": [s for s, _ in found], "n": len(found),
                "step_min": used[0] if used else None, "step_max": used[-1] if used else None,
                "mean": float(values.mean()) if values.size else None,
                "std": float(values.std(ddof=1)) if values.size > 1 else None,
                "ci95": list(bootstrap_ci(values)) if values.size else None,
                "unfinished": [t.seed for t in seeds if not t.finished],
            }
            # an unfinished seed whose newest eval is short of `at`: the ratio compares an earlier point
            row["partial"] = bool(row["unfinished"]) and row["step_min"] is not None and row["step_min"] < at
            row["references"] = [
                {**{k: r[k] for k in ("source", "mean", "std")}, **({"note": r["note"]} if "note" in r else {}),
                 "ratio": row["mean"] / r["mean"] if row["mean"] is not None and r["mean"] else None}
                for r in references["references"] if (r["algo"], r["env"], r["step"]) == (algo, env, at)]
            rows.append(row)
    return rows


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _step_text(row: dict[str, Any]) -> str:
    if row["step_min"] is None:
        return "–"
    if row["step_min"] == row["step_max"]:
        return f"{row['step_min']:,}"
    return f"{row['step_min']:,}–{row['step_max']:,}"


def to_markdown(rows: list[dict[str, Any]], logs: list[TrialLog], missing: list[str], sources: dict[str, str]) -> str:
    lines = ["# Sweep results", "",
             "Eval return per (algo, task) over seeds: mean, sample standard deviation and a 95% percentile "
             f"bootstrap interval of the mean ({BOOTSTRAP_RESAMPLES:,} resamples), from each trial's eval.csv row "
             "nearest the requested step from below (the step used is stated). ratio = ours / reference.", "",
             "| algo | task | at | step used | seeds | mean ± sd | 95% CI | reference | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        refs = row["references"]
        ref_text = " / ".join(f"{_num(r['mean'], 0)} ± {_num(r['std'], 0)} ({r['source']})" for r in refs) or "–"
        ratio = " / ".join(_num(r["ratio"], 2) for r in refs) or "–"
        ratio = f"({ratio})" if refs and row["partial"] else ratio
        ci = f"[{_num(row['ci95'][0])}, {_num(row['ci95'][1])}]" if row["ci95"] else "–"
        sd = f" ± {_num(row['std'])}" if row["std"] is not None else ""
        lines.append(f"| {row['algo']} | {row['env']} | {row['at']:,} | {_step_text(row)} | {row['n']} | "
                     f"{_num(row['mean'])}{sd} | {ci} | {ref_text} | {ratio} |")
    unfinished = [t for t in logs if not t.finished]
    if any(row["partial"] for row in rows):
        lines += ["", "(ratio): unfinished seeds have not reached that step yet; the ratio compares an earlier eval."]
    lines += ["", f"Trials: {len(logs)} found, {len(logs) - len(unfinished)} finished."]
    if unfinished or missing:
        lines.append("")
        lines += [f"- unfinished: {t.algo} {t.env} seed {t.seed} (checkpoint at {t.done_step:,} of {t.env_steps:,} "
                  f"env steps; last eval at {f'{int(t.steps[-1]):,}' if t.steps.size else '–'})" for t in unfinished]
        lines += [f"- not started: {name}" for name in missing]
    lines += ["", "Sources:"] + [f"- {key}: {text}" for key, text in sources.items()]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """One line per (algo, task, step, reference); a row without a reference has empty reference cells."""
    buf = io.StringIO()
    columns = ["algo", "env", "at", "step_min", "step_max", "n", "mean", "std", "ci95_low", "ci95_high",
               "ref_source", "ref_mean", "ref_std", "ratio"]
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        base = {k: row[k] for k in ("algo", "env", "at", "step_min", "step_max", "n", "mean", "std")}
        base.update(ci95_low=row["ci95"][0] if row["ci95"] else None, ci95_high=row["ci95"][1] if row["ci95"] else None)
        for ref in row["references"] or [{}]:
            writer.writerow({**base, "ref_source": ref.get("source"), "ref_mean": ref.get("mean"),
                             "ref_std": ref.get("std"), "ratio": ref.get("ratio")})
    return buf.getvalue()


def plot_curves(logs: list[TrialLog], references: dict[str, Any], path: Path) -> None:
    """curves.png: a panel per task, per algo the mean over seeds at each eval step with a ±sd band
    (over the seeds that reached that step), the references as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({t.env for t in logs})
    algos = sorted({t.algo for t in logs})
    colors = {a: f"C{i}" for i, a in enumerate(algos)}
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for algo in algos:
            runs = [t for t in logs if (t.algo, t.env) == (algo, env) and t.steps.size]
            if not runs:
                continue
            x = np.unique(np.concatenate([t.steps for t in runs]))
            per_step = [np.asarray([t.returns[t.steps == s][-1] for t in runs if (t.steps == s).any()]) for s in x]
            mean = np.asarray([v.mean() for v in per_step])
            sd = np.asarray([v.std(ddof=1) if v.size > 1 else 0.0 for v in per_step])
            ax.plot(x, mean, color=colors[algo], label=f"{algo} ({len(runs)} seeds)")
            ax.fill_between(x, mean - sd, mean + sd, color=colors[algo], alpha=0.2)
            for ref in (r for r in references["references"] if (r["algo"], r["env"]) == (algo, env)):
                if ref["step"] <= max(t.env_steps for t in runs):  # within what the runs set out to do
                    ax.errorbar([ref["step"]], [ref["mean"]], yerr=[ref["std"]], color=colors[algo],
                                marker="x" if ref["source"] == "curl" else "D", capsize=3, linestyle="none",
                                label=f"{algo}: {ref['source']}")
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("eval return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def parse_steps(text: str | None) -> list[int] | None:
    """`100000,500000` -> [100000, 500000]; None means the trials' final steps."""
    if text is None:
        return None
    try:
        steps = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ReportError(f"--at {text!r}: expected comma-separated env steps, e.g. 100000,500000") from None
    if not steps or steps[0] < 0:
        raise ReportError(f"--at {text!r}: expected non-negative env steps")
    return steps


def write_report(directory: Path, out: Path | None = None, at: list[int] | None = None) -> dict[str, Any]:
    """Write results.md/json/csv and curves.png; returns the JSON document."""
    logs = find_trials(directory)
    if not logs:
        raise ReportError(f"{directory} holds no run folders (config.json + eval.csv) yet")
    at_steps = at if at is not None else sorted({t.env_steps for t in logs})
    references = load_references()
    rows = summarize(logs, at_steps, references)
    found = {f"{t.algo}/{t.env}/seed_{t.seed}" for t in logs}
    missing = [name for name in planned_trials(directory) if name not in found]
    out = out or directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "directory": str(directory), "at": at_steps, "rows": rows,
        "trials": [{"algo": t.algo, "env": t.env, "seed": t.seed, "path": str(t.path), "env_steps": t.env_steps,
                    "checkpoint_step": t.done_step, "last_eval_step": int(t.steps[-1]) if t.steps.size else None,
                    "finished": t.finished} for t in logs],
        "not_started": missing, "sources": references["sources"],
    }
    atomic_write_text(out / "results.json", json.dumps(document, indent=2) + "\n")
    atomic_write_text(out / "results.csv", to_csv(rows))
    atomic_write_text(out / "results.md", to_markdown(rows, logs, missing, references["sources"]))
    plot_curves(logs, references, out / "curves.png")
    return document
