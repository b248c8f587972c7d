"""`sacae train`, `sacae envs` and `sacae demo` (the README's main job)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sacae_deploy.commands.common import Device, Distractors, Preset, user_errors
from sacae_deploy.contract import MAX_SEED
from train.config import bounds_help


class Algo(str, Enum):
    sac_ae = "sac-ae"
    sac_pixel = "sac-pixel"
    sac_state = "sac-state"
    slac = "slac"


def run_training(cfg: Any, out: Path, resume: bool) -> dict[str, Any]:
    """Train with a rich progress bar (env steps, env steps/s, last eval return)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from train.workspace import Workspace

    console = Console(stderr=True)
    ws = Workspace(cfg, out, resume=resume)
    status = {"eval": "-", "sps": 0.0}
    columns = [TextColumn(f"[bold]{cfg.algo}[/] {cfg.env}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("env steps  {task.fields[sps]:.0f}/s  eval {task.fields[eval]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("train", total=cfg.env_steps, completed=ws.env_step, sps=0.0, eval="-")

        def progress(env_step: int, info: dict[str, Any]) -> None:
            if "eval_return" in info:
                status["eval"] = f"{info['eval_return']:.1f}"
                console.print(f"eval  env_step={env_step:>9,}  return={info['eval_return']:.1f}")
            if "steps_per_s" in info:
                status["sps"] = info["steps_per_s"]
            if "message" in info:
                console.print(info["message"], soft_wrap=True, markup=False, highlight=False)
            bar.update(task, completed=env_step, sps=status["sps"], eval=status["eval"])

        result = ws.run(progress)
    return result


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def train(
        algo: Annotated[Algo, typer.Option(help="sac-ae (paper), sac-pixel / sac-state (baselines), slac.")],
        env: Annotated[str, typer.Option(help="DeepMind Control task as DOMAIN-TASK, e.g. cartpole-swingup.")],
        out: Annotated[Path, typer.Option(help="Run directory: config.json, CSV logs, checkpoints, videos.")],
        env_steps: Annotated[Optional[int], typer.Option(help="Environment steps to train for (the papers' unit; default: the preset's).")] = None,
        seed: Annotated[Optional[int], typer.Option(min=0, max=MAX_SEED, help="Seed for networks, replay sampling and environments.")] = None,
        preset: Annotated[Preset, typer.Option(help="paper: the published hyper-parameters; smoke: tiny, for tests.")] = Preset.paper,
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any config field, KEY=VALUE (repeatable). "
                                                                        f"Sizes are at most: {bounds_help()}.")] = None,
        device: Annotated[Optional[Device], typer.Option(help="Where to train (default: auto, CUDA when torch sees it).")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
        video: Annotated[bool, typer.Option("--video", help="Save an mp4 of one eval episode at every evaluation.")] = False,
        distractors: Annotated[Optional[Distractors], typer.Option(help="Replace the background with moving balls (training and eval).")] = None,
    ) -> None:
        """Train an agent on a DeepMind Control task; kill it any time and continue with --resume."""
        from train.runs import resolve_run

        sets = list(set_ or []) + (["save_video=true"] if video else [])
        cfg = resolve_run(algo.value, env, out, env_steps, seed, preset.value, sets, device.value if device else None,
                          resume, distractors.value if distractors else None)
        result = run_training(cfg, out, resume)
        typer.echo(json.dumps({"run_dir": str(out), **result}))

    @app.command()
    @user_errors
    def envs() -> None:
        """List the DeepMind Control tasks (DOMAIN-TASK) that --env accepts."""
        from sacae_deploy.sim.envs import available_envs

        for name in available_envs():
            typer.echo(name)
