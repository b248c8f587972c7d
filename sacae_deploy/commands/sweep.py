"""`sacae sweep` (algo x task x seed grids of training runs on Ray) and `sacae report` (their table)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sacae_deploy.commands.common import Distractors, Preset, user_errors


class Board:
    """One line per trial (state, env step, last eval return, env steps/s): a live table on a
    terminal, else a line per eval, retry and end (logs stay short)."""

    def __init__(self, planned: list[Any], console: Any) -> None:
        from train.report import read_eval

        self.console = console
        self.start = time.monotonic()
        self.rows = {p.trial.name: {"state": "done earlier" if p.done else "pending", "env_step": p.env_steps * p.done,
                                    "env_steps": p.env_steps, "eval": None, "sps": None, "retries": 0}
                     for p in planned}
        for p in planned:
            returns = read_eval(p.folder / "eval.csv")[1] if p.done else []
            if len(returns):
                self.rows[p.trial.name]["eval"] = float(returns[-1])
        self.live: Any = None

    def table(self, title: str = "sweep") -> Any:
        from rich.table import Table

        table = Table(title=f"{title}  ({time.monotonic() - self.start:.0f} s)", title_justify="left")
        for column in ("trial", "state", "env step", "eval return", "env steps/s", "retries"):
            table.add_column(column, justify="left" if column in ("trial", "state") else "right")
        for name, row in self.rows.items():
            table.add_row(name, row["state"], f"{row['env_step']:,}/{row['env_steps']:,}",
                          "-" if row["eval"] is None else f"{row['eval']:.1f}",
                          "-" if row["sps"] is None else f"{row['sps']:.0f}", str(row["retries"]))
        return table

    def __rich__(self) -> Any:
        """What the live display redraws (twice a second: the elapsed time moves on between events)."""
        return self.table()

    def __call__(self, name: str, event: str, result: dict[str, Any]) -> None:
        row = self.rows[name]
        before = row["eval"]
        if result.get("env_step") is not None:
            row["env_step"] = int(result["env_step"])
        if result.get("eval_return") is not None:
            row["eval"] = float(result["eval_return"])
        if result.get("steps_per_s"):
            row["sps"] = float(result["steps_per_s"])
        row["state"] = {"result": "running", "retry": "retrying", "done": "done", "failed": "failed"}[event]
        row["retries"] += event == "retry"
        if self.live is None and (event != "result" or (row["eval"] is not None and row["eval"] != before)):
            self.console.print(f"{name}  {row['state']}  env_step={row['env_step']:,}  eval="
                               f"{'-' if row['eval'] is None else format(row['eval'], '.1f')}", highlight=False)

    def __enter__(self) -> "Board":
        from rich.live import Live

        if self.console.is_terminal:
            self.live = Live(self, console=self.console, refresh_per_second=2, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def sweep(
        algo: Annotated[str, typer.Option(help="Comma-separated algorithms, e.g. sac-ae,slac.")],
        env: Annotated[str, typer.Option(help="Comma-separated DOMAIN-TASK names, e.g. cartpole-swingup,cheetah-run.")],
        seeds: Annotated[int, typer.Option(help="Seeds per (algo, task): 1..N.")],
        out: Annotated[Path, typer.Option(help="Sweep directory: sweep.json, trials/ALGO/ENV/seed_S/ (ordinary run folders).")],
        env_steps: Annotated[Optional[int], typer.Option(help="Environment steps per trial (default: the preset's).")] = None,
        preset: Annotated[Preset, typer.Option(help="paper: the published hyper-parameters; smoke: tiny, for tests.")] = Preset.paper,
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config field in every trial, KEY=VALUE (repeatable).")] = None,
        distractors: Annotated[Optional[Distractors], typer.Option(help="Moving-ball backgrounds in every trial.")] = None,
        cpus_per_run: Annotated[float, typer.Option(help="CPUs Ray reserves per trial (its torch threads).")] = 1.0,
        gpus_per_run: Annotated[float, typer.Option(help="GPUs per trial; a fraction such as 0.25 packs runs on one GPU.")] = 0.0,
        max_concurrent: Annotated[Optional[int], typer.Option(help="At most this many trials at once (default: as resources allow).")] = None,
        address: Annotated[Optional[str], typer.Option(help="Join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: Ray embedded here).")] = None,
        storage: Annotated[Optional[str], typer.Option(help="With --address: a path every node mounts; the trial folders live there.")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue a sweep in --out: skip finished trials, resume the others.")] = False,
        verbose: Annotated[bool, typer.Option("--verbose", help="Show Ray's own logs.")] = False,
    ) -> None:
        """Train every (algo, task, seed) as an ordinary run folder, several at once on Ray; resumable."""
        from rich.console import Console

        from train.sweep import SweepError, SweepSpec, plan, run_sweep, split_list

        spec = SweepSpec(split_list(algo, "algo"), split_list(env, "env"), seeds, out, env_steps, preset.value,
                         list(set_ or []), distractors.value if distractors else None, cpus_per_run, gpus_per_run,
                         max_concurrent, address, storage, resume, verbose)
        _require_ray()
        planned = plan(spec)
        console = Console(stderr=True)
        if not console.is_terminal:
            console.width = 120  # logs: whole trial names, not rich's 80-column default
        board = Board(planned, console)
        with board:
            outcome = run_sweep(spec, planned, board)
        for name, state in outcome.items():
            board.rows[name]["state"] = state.partition(":")[0]
        console.print(board.table("sweep summary"))
        failed = {name: state for name, state in outcome.items() if state.startswith("failed")}
        stopped = sorted(name for name, state in outcome.items() if state == "stopped")
        summary = {"out": str(out), "trials_root": str(spec.root), "trials": len(planned),
                   "done_earlier": sum(p.done for p in planned), "ran": len(outcome), "failed": sorted(failed),
                   "stopped": stopped}
        typer.echo(json.dumps(summary))
        if stopped and not failed:
            typer.echo(f"interrupted: {len(stopped)} trial(s) unfinished; continue with --resume", err=True)
            raise typer.Exit(130)
        if failed:
            name, state = next(iter(failed.items()))
            raise SweepError(f"{len(failed)} trial(s) failed after retries, e.g. {name}: {state} "
                             f"(logs under {spec.root / '.ray'}); rerun with --resume")

    @app.command()
    @user_errors
    def report(
        directory: Annotated[Path, typer.Argument(help="A sweep directory (or a folder of `sacae train` runs).")],
        out: Annotated[Optional[Path], typer.Option(help="Where results.md/json/csv and curves.png go (default: DIR/report).")] = None,
        at: Annotated[Optional[str], typer.Option(help="Comma-separated env steps to tabulate (default: the trials' final steps).")] = None,
    ) -> None:
        """Tabulate a sweep: mean, sd and 95% bootstrap CI over seeds beside the published returns; curves.png."""
        from train.report import parse_steps, write_report

        document = write_report(directory, out, parse_steps(at))
        typer.echo((Path(out or directory / "report") / "results.md").read_text(), nl=False)
        unfinished = [t for t in document["trials"] if not t["finished"]]
        typer.echo(json.dumps({"report": str(out or directory / "report"), "trials": len(document["trials"]),
                               "unfinished": len(unfinished), "not_started": len(document["not_started"])}))


def _require_ray() -> None:
    """One line, before any work, when the `sweep` extra is missing."""
    import importlib.util

    from train.sweep import INSTALL_HINT, SweepError

    try:
        found = importlib.util.find_spec("ray") is not None
    except ValueError:  # sys.modules["ray"] is None: treated as absent
        found = False
    if not found:
        raise SweepError(INSTALL_HINT)
