"""CSV logs (train.csv, eval.csv), TensorBoard when installed, and the eval-curve plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from train.checkpoint import atomic_write_text

TRAIN_COLUMNS = ["env_step", "agent_step", "episode", "episode_return", "episode_length", "steps_per_s",
                 "wall_time"]
EVAL_COLUMNS = ["env_step", "episode_return", "return_std", "episodes", "wall_time"]


class CsvLog:
    """Append-only CSV with a fixed header; `truncate_after` drops rows newer than a resumed checkpoint."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        if not path.exists():
            atomic_write_text(path, ",".join(columns) + "\n")

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.columns, extrasaction="ignore").writerow(
                {k: _fmt(row.get(k, "")) for k in self.columns})

    def rows(self) -> list[dict[str, str]]:
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def truncate_after(self, env_step: int) -> None:
        kept = [r for r in self.rows() if r.get("env_step") and int(float(r["env_step"])) <= env_step]
        lines = [",".join(self.columns)] + [",".join(r.get(c, "") or "" for c in self.columns) for r in kept]
        atomic_write_text(self.path, "\n".join(lines) + "\n")


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.10g}" if math.isfinite(v) else str(v)
    return v


class Logger:
    def __init__(self, run_dir: Path, metric_names: list[str]) -> None:
        self.run_dir = run_dir
        self.train = CsvLog(run_dir / "train.csv", TRAIN_COLUMNS + metric_names)
        self.eval = CsvLog(run_dir / "eval.csv", EVAL_COLUMNS)
        self._tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: only with tensorboard installed

            self._tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            pass

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

    def truncate_after(self, env_step: int) -> None:
        self.train.truncate_after(env_step)
        self.eval.truncate_after(env_step)

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
        tmp = self.run_dir / ".eval.png.tmp.png"
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        plt.close(fig)
        tmp.replace(self.run_dir / "eval.png")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
