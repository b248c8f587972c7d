"""`sacae eval` (clean vs distractor robustness table) and `sacae distractors preview`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sacae_deploy.commands.train import Device
from sacae_deploy.contract import MAX_SEED

distractors_app = typer.Typer(help="Moving-ball distractor backgrounds (SAC+AE section 5.2).", no_args_is_help=True)


def _progress(label: str) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal)


def register(app: typer.Typer) -> None:
    from sacae_deploy.cli import user_errors

    @app.command(name="eval")
    @user_errors
    def eval_(
        policies: Annotated[list[Path], typer.Argument(help="Exported policies (.onnx, or run directories holding policy.onnx).")],
        env: Annotated[Optional[str], typer.Option(help="DOMAIN-TASK to evaluate on (default: the policies' own task).")] = None,
        episodes: Annotated[int, typer.Option(min=1, help="Episodes per policy and background (the paper uses 10).")] = 10,
        distractors: Annotated[str, typer.Option(help="Comma-separated backgrounds to compare; the first is the baseline.")] = "none,balls",
        out: Annotated[Path, typer.Option(help="Directory for results.md, results.json, returns.png and videos/.")] = Path("runs/eval"),
        seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Episode e of every condition starts from seed + e.")] = 0,
        device: Annotated[Device, typer.Option(help="Where ONNX Runtime runs the policies.")] = Device.auto,
        video: Annotated[bool, typer.Option(help="Write a GIF per policy of what it saw (backgrounds side by side).")] = True,
    ) -> None:
        """Evaluate policies clean and with moving-ball backgrounds: a table (mean ± sd, relative drop), a plot, videos."""
        evaluate_policies(policies, env=env, episodes=episodes, distractors=distractors, out=out, seed=seed,
                          device=device.value, video=video)

    @distractors_app.command()
    @user_errors
    def preview(
        env: Annotated[str, typer.Option(help="DOMAIN-TASK whose background is replaced.")] = "cartpole-swingup",
        out: Annotated[Path, typer.Option(help="GIF (or mp4) to write: clean | balls side by side.")] = Path("distractors.gif"),
        steps: Annotated[int, typer.Option(min=1, help="Agent steps (random actions) to show.")] = 100,
        size: Annotated[int, typer.Option(min=16, help="Rendered frame size (the policies' 84 by default).")] = 84,
        action_repeat: Annotated[Optional[int], typer.Option(min=1, help="Control steps per frame (default: the paper's for the domain).")] = None,
        seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seeds the task and the balls.")] = 0,
    ) -> None:
        """See the moving-ball background on a task before training on it."""
        import numpy as np

        from distractors import make_background
        from sacae_deploy.evaluation import side_by_side
        from sacae_deploy.video import write_video
        from train.config import SAC_AE_ACTION_REPEAT, DEFAULT_ACTION_REPEAT
        from train.envs import check_env_name, make_env

        check_env_name(env)
        k = action_repeat or SAC_AE_ACTION_REPEAT.get(env.split("-")[0], DEFAULT_ACTION_REPEAT)
        envs = [make_env(env, seed, pixels=True, action_repeat=k, image_size=size, frame_stack=1,
                         render=make_background(name, seed)) for name in ("none", "balls")]
        rng = np.random.default_rng(seed)
        clips: list[list[Any]] = [[], []]
        try:
            obs = [e.reset(seed=seed) for e in envs]
            with _progress("preview") as bar:
                task = bar.add_task("", total=steps)
                for _ in range(steps):
                    for clip, o in zip(clips, obs):
                        clip.append(o.transpose(1, 2, 0))
                    action = rng.uniform(-1, 1, envs[0].action_dim)
                    # Same physics and actions in both: only the background differs.
                    results = [e.step(action) for e in envs]
                    obs = [e.reset() if r.last else r.obs for e, r in zip(envs, results)]
                    bar.advance(task)
        finally:
            for e in envs:
                e.close()
        fps = max(1, round(1.0 / (envs[0].control_timestep * k)))
        write_video(out, side_by_side(clips), fps=fps)
        typer.echo(f"wrote {out} ({steps} frames, clean | balls, {size}x{size} shown x3, action repeat {k})")

    app.add_typer(distractors_app, name="distractors")


def evaluate_policies(policies: list[Path], *, env: str | None = None, episodes: int = 10,
                      distractors: str = "none,balls", out: Path = Path("runs/eval"), seed: int = 0,
                      device: str = "auto", video: bool = True) -> dict[str, Path]:
    """`sacae eval` without the CLI (the demo calls it too); returns the report's paths."""
    from sacae_deploy import evaluation as E
    from sacae_deploy.policy import Policy
    from sacae_deploy.video import write_video

    conditions = E.check_conditions(distractors.split(","))
    loaded = [Policy.load(p, device=device) for p in policies]
    env_name = env or loaded[0].env
    for pol in loaded:
        if pol.env != env_name:
            typer.echo(f"warning: {pol.path} was trained on {pol.env}, evaluating it on {env_name}", err=True)
    from train.envs import check_env_name  # dm_control, no torch

    check_env_name(env_name)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    names = [E.policy_name(pol.path, taken) for pol in loaded]
    results: list[E.ConditionResult] = []
    with _progress("eval") as bar:
        task = bar.add_task("", total=len(loaded) * len(conditions) * episodes)
        for name, pol in zip(names, loaded):
            clips: list[list[Any]] = []
            for cond in conditions:
                bar.update(task, description=f"{name} / {cond}")
                frames: list[Any] | None = [] if video else None
                returns = E.run_episodes(pol, env_name, cond, episodes, seed, video=frames,
                                         on_episode=lambda _r: bar.advance(task))
                results.append(E.ConditionResult(name, pol.algo, env_name, cond, returns))
                typer.echo(f"{name:>16} {cond:>6}: {results[-1].mean:8.1f} ± {results[-1].std:.1f}", err=True)
                if frames:
                    clips.append(frames)
            if clips:
                write_video(out / "videos" / f"{name}.gif", E.side_by_side(clips), fps=E.fps_of(pol))
    paths = E.write_report(out, results, conditions, episodes, seed)
    typer.echo(paths["markdown"].read_text())
    typer.echo(f"wrote {paths['markdown']}, {paths['json']}, {paths['plot']}"
               + (f" and {out / 'videos'}/*.gif ({' | '.join(conditions)})" if video else ""))
    return paths
