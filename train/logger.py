"""CSV logs (train.csv, eval.csv), TensorBoard when installed, and the eval-curve plot.

A resumed run cuts its logs back to the rows its checkpoint had seen and TensorBoard purges from
the resumed step, so each step is logged once however often a run is killed and resumed.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from sacae_deploy.files import append_text, atomic_write_bytes, atomic_write_text, crash_point

TRAIN_COLUMNS = ["env_step", "agent_step", "episode", "episode_return", "episode_length", "steps_per_s",
                 "wall_time"]
EVAL_COLUMNS = ["env_step", "episode_return", "return_std", "episodes", "wall_time"]


class CsvLog:
    """Append-only CSV with a fixed header; `keep` cuts it back to what a resumed checkpoint had seen."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        if not path.exists():
            atomic_write_text(path, self._text([], header=True))

    def _text(self, rows: list[dict[str, Any]], header: bool = False) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, self.columns, extrasaction="ignore", lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    def write(self, row: dict[str, Any]) -> None:
        append_text(self.path, self._text([{k: _fmt(row.get(k, "")) for k in self.columns}]))
        crash_point(f"log-{self.path.stem}")

    def _read(self) -> list[dict[str, str]]:
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def rows(self) -> list[dict[str, str]]:
        """The readable rows: one torn by a full disk, or garbage, is left out."""
        return [r for r in self._read() if _readable(r)]

    def keep(self, env_step: int, count: int) -> tuple[list[dict[str, str]], int, int]:
        """Keep the first `count` readable rows up to `env_step`: the rows the checkpoint of a resumed run
        had seen. Returns them, the number of unreadable rows and the number of all rows dropped."""
        rows = self._read()
        good = [r for r in rows if _readable(r)]
        kept = [r for r in good if int(r["env_step"]) <= env_step][:count]
        atomic_write_text(self.path, self._text(kept, header=True))
        return kept, len(rows) - len(good), len(rows) - len(kept)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _readable(row: dict[Any, Any]) -> bool:
    """A whole row of numbers (csv.DictReader keys extra fields None and fills missing ones with None)."""
    values = list(row.values())
    return (None not in row and None not in values and str(row.get("env_step", "")).isdigit()
            and all(v == "" or _number(v) is not None for v in values))


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.10g}" if math.isfinite(v) else str(v)
    return v


class Logger:
    """`purge_step`: a resumed run's step; TensorBoard hides what earlier writers logged from there on."""

    def __init__(self, run_dir: Path, metric_names: list[str], purge_step: int | None = None) -> None:
        self.run_dir = run_dir
        self.train = CsvLog(run_dir / "train.csv", TRAIN_COLUMNS + metric_names)
        self.eval = CsvLog(run_dir / "eval.csv", EVAL_COLUMNS)
        self._tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: only with tensorboard installed

            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)
        except ImportError:
            pass

    def resume(self, env_step: int, train_rows: int, eval_rows: int) -> list[str]:
        """Cut the logs back to a checkpoint at `env_step` that had seen `train_rows` and `eval_rows`
        rows, log the kept rows at `env_step` to TensorBoard again (purged with the rest) and redraw
        eval.png if it lost points. Returns a one-line note per log that had unreadable rows."""
        notes = []
        for prefix, log, count in (("train", self.train, train_rows), ("eval", self.eval, eval_rows)):
            kept, unreadable, dropped = log.keep(env_step, count)
            if unreadable:
                notes.append(f"note: dropped {unreadable} unreadable row(s) from {log.path}")
            for row in kept:
                if int(row["env_step"]) == env_step:
                    self._scalars(prefix, {k: int(v) if k == "env_step" else _number(v) for k, v in row.items()})
            if log is self.eval and dropped:
                self.plot()
        return notes

    def log_train(self, row: dict[str, Any]) -> None:
        self.train.write(row)
        self._scalars("train", row)

    def log_eval(self, row: dict[str, Any]) -> None:
        self.eval.write(row)
        self._scalars("eval", row)
        self.plot()

    def _scalars(self, prefix: str, row: dict[str, Any]) -> None:
        if self._tb is None:
            return
        for k, v in row.items():
            if k != "env_step" and isinstance(v, (int, float)):
                self._tb.add_scalar(f"{prefix}/{k}", v, row["env_step"])
        self._tb.flush()

    def plot(self) -> None:
        """eval.png: mean eval return (+- sd) against environment steps."""
        rows = self.eval.rows()
        if not rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = [int(r["env_step"]) for r in rows]
        y = [float(r["episode_return"]) for r in rows]
        sd = [float(r["return_std"] or 0) for r in rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(x, y, marker="o")
        ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)], alpha=0.2)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("eval return")
        ax.set_title(self.run_dir.name)
        ax.grid(alpha=0.3)
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(self.run_dir / "eval.png", png.getvalue())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
