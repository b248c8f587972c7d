"""`sacae eval` (clean vs distractor robustness table) and `sacae distractors preview`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sacae_deploy import interrupts
from sacae_deploy.commands.common import Device, user_errors
from sacae_deploy.contract import MAX_SEED
from sacae_deploy.outputs import check_output_dir, check_output_file
from sacae_deploy.sim.rendering import MAX_RENDER_SIZE
from sacae_deploy.video import VIDEO_SUFFIXES

MAX_PREVIEW_STEPS = 1000  # a GIF writer keeps every frame in memory until it closes

distractors_app = typer.Typer(help="Moving-ball distractor backgrounds (SAC+AE section 5.2).", no_args_is_help=True)


def _progress(label: str) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal)


def register(app: typer.Typer) -> None:
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
        """Evaluate policies clean and with moving-ball backgrounds: a table (mean ± sd, relative drop), a plot, videos.
        Ctrl-C or SIGTERM stops it with the videos of what was seen and the report of the conditions
        finished (exit code 130 or 143)."""
        evaluate_policies(policies, env=env, episodes=episodes, distractors=distractors, out=out, seed=seed,
                          device=device.value, video=video)

    @distractors_app.command()
    @user_errors
    def preview(
        env: Annotated[str, typer.Option(help="DOMAIN-TASK whose background is replaced.")] = "cartpole-swingup",
        out: Annotated[Path, typer.Option(help="GIF (or mp4) to write: clean | balls side by side.")] = Path("distractors.gif"),
        steps: Annotated[int, typer.Option(min=1, max=MAX_PREVIEW_STEPS, help="Agent steps (random actions) to show.")] = 100,
        size: Annotated[int, typer.Option(min=16, max=MAX_RENDER_SIZE, help="Rendered frame size (the policies' 84 by default; "
                                                                         "at most MuJoCo's 480-pixel offscreen framebuffer).")] = 84,
        action_repeat: Annotated[Optional[int], typer.Option(min=1, help="Control steps per frame (default: the paper's for the domain).")] = None,
        seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seeds the task and the balls.")] = 0,
    ) -> None:
        """See the moving-ball background on a task before training on it."""
        import numpy as np

        from distractors import make_background
        from sacae_deploy.evaluation import side_by_side
        from sacae_deploy.sim.envs import DEFAULT_ACTION_REPEAT, SAC_AE_ACTION_REPEAT, check_env_name, make_env
        from sacae_deploy.video import VideoWriter

        check_output_file(out, "--out", VIDEO_SUFFIXES)
        check_env_name(env)
        k = action_repeat or SAC_AE_ACTION_REPEAT.get(env.split("-")[0], DEFAULT_ACTION_REPEAT)
        envs = [make_env(env, seed, pixels=True, action_repeat=k, image_size=size, frame_stack=1,
                         render=make_background(name, seed)) for name in ("none", "balls")]
        rng = np.random.default_rng(seed)
        fps = max(1, round(1.0 / (envs[0].control_timestep * k)))
        try:
            obs = [e.reset(seed=seed) for e in envs]
            # Streamed: on Ctrl-C the file is closed holding the steps shown so far.
            with _progress("preview") as bar, VideoWriter(out, fps) as writer:
                task = bar.add_task("", total=steps)
                for _ in range(steps):
                    writer.append(side_by_side([[o.transpose(1, 2, 0)] for o in obs])[0])
                    action = rng.uniform(-1, 1, envs[0].action_dim)
                    # Same physics and actions in both: only the background differs.
                    results = [e.step(action) for e in envs]
                    obs = [e.reset() if r.last else r.obs for e, r in zip(envs, results)]
                    bar.advance(task)
        finally:
            for e in envs:
                e.close()
        typer.echo(f"wrote {out} ({steps} frames, clean | balls, {size}x{size} shown x3, action repeat {k})")

    app.add_typer(distractors_app, name="distractors")


def evaluate_policies(policies: list[Path], *, env: str | None = None, episodes: int = 10,
                      distractors: str = "none,balls", out: Path = Path("runs/eval"), seed: int = 0,
                      device: str = "auto", video: bool = True) -> dict[str, Path]:
    """`sacae eval` without the CLI (the demo calls it too); returns the report's paths.

    Ctrl-C (or SIGTERM under the CLI) ends it on what was done: each policy's video holds the frames
    seen, the report the conditions that every policy begun finished (full episode counts, so no
    cell is a partial mean); then the interrupt is raised again."""
    from sacae_deploy import evaluation
    from sacae_deploy.policy import Policy
    from sacae_deploy.video import write_video

    check_output_dir(out, "--out")
    conditions = evaluation.check_conditions(distractors.split(","))
    loaded = [Policy.load(p, device=device) for p in policies]
    env_name = env or loaded[0].env
    for pol in loaded:
        if pol.env != env_name:
            typer.echo(f"warning: {pol.path} was trained on {pol.env}, evaluating it on {env_name}", err=True)
    from sacae_deploy.sim.envs import check_env_name
    from sacae_deploy.sim.rendering import check_render_size

    check_env_name(env_name)
    for pol in loaded:
        if pol.image_size:
            check_render_size(pol.image_size)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    names = [evaluation.policy_name(pol.path, taken) for pol in loaded]
    results: list[evaluation.ConditionResult] = []
    stop: KeyboardInterrupt | None = None
    with _progress("eval") as bar:
        task = bar.add_task("", total=len(loaded) * len(conditions) * episodes)
        try:
            for name, pol in zip(names, loaded):
                clips: list[list[Any]] = []
                try:
                    for cond in conditions:
                        bar.update(task, description=f"{name} / {cond}")
                        frames: list[Any] | None = [] if video else None
                        if frames is not None:
                            clips.append(frames)  # filled as the episode runs: an interrupted one is shown too
                        failures: list[str] = []
                        returns = evaluation.run_episodes(pol, env_name, cond, episodes, seed, video=frames,
                                                 on_episode=lambda _r: bar.advance(task), failures=failures)
                        results.append(evaluation.ConditionResult(name, pol.algo, env_name, cond, returns, failures))
                        typer.echo(f"{name:>16} {cond:>6}: {results[-1].cell()}", err=True)
                        for why in failures:  # a failed episode is reported, not fatal: the next one runs
                            typer.echo(f"warning: {name} / {cond}: {why}", err=True)
                finally:
                    seen = [clip for clip in clips if clip]
                    if seen:
                        write_video(out / "videos" / f"{name}.gif", evaluation.side_by_side(seen),
                                    fps=evaluation.fps_of(pol))
        except KeyboardInterrupt as exc:
            stop = exc
    if stop is not None:
        done = {(r.policy, r.condition) for r in results}
        begun = {policy for policy, _ in done}
        conditions = [c for c in conditions if begun and all((p, c) in done for p in begun)]
        results = [r for r in results if r.condition in conditions]
        typer.echo(f"interrupted: the report holds the conditions finished ({', '.join(conditions) or 'none'})",
                   err=True)
        if not results:
            raise stop
    with interrupts.held():
        paths = evaluation.write_report(out, results, conditions, episodes, seed)
    typer.echo(paths["markdown"].read_text())
    typer.echo(f"wrote {paths['markdown']}, {paths['json']}, {paths['plot']}"
               + (f" and {out / 'videos'}/*.gif ({' | '.join(conditions)})" if video else ""))
    if stop is not None:
        raise stop
    return paths
