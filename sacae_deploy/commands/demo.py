"""`sacae demo`: the README's main job, the whole pipeline on an embedded default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sacae_deploy.commands.common import user_errors

DEMO_ENV = "cartpole-swingup"


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def demo(
        out: Annotated[Path, typer.Option(help="Where the demo run goes (replaced if it holds a previous demo).")] = Path("runs/demo"),
        env_steps: Annotated[int, typer.Option(min=1, help="Environment steps of SAC+AE training.")] = 10_000,
        eval_episodes: Annotated[int, typer.Option(min=1, help="Episodes per background in the robustness evaluation.")] = 3,
    ) -> None:
        """Train SAC+AE on cartpole-swingup (paper networks, short), evaluate it, export it to ONNX (parity
        checked), drive the ONNX policy through `sacae run` on the simulated camera, and compare clean
        vs moving-ball backgrounds with `sacae eval`. It shows the pipeline end to end; learning the
        task takes ~100k+ env steps (see README)."""
        import json
        import shutil

        from export import export_run
        from sacae_deploy.commands.eval import evaluate_policies
        from sacae_deploy.commands.run import run_policy
        from sacae_deploy.commands.train import run_training
        from train.runs import resolve_run

        if (out / "config.json").exists():
            shutil.rmtree(out)
        typer.secho(f"1/4 train sac-ae on {DEMO_ENV} for {env_steps:,} env steps -> {out}", bold=True, err=True)
        cfg = resolve_run("sac-ae", DEMO_ENV, out, env_steps, 1, "paper",
                          ["eval_every=100000", "eval_episodes=5", f"checkpoint_every={env_steps}"], "auto", False)
        trained = run_training(cfg, out, resume=False)

        typer.secho("2/4 export to ONNX and check parity with torch", bold=True, err=True)
        exported = export_run(out, None, None, False)
        for line in exported.checks:
            typer.echo(line)

        typer.secho("3/4 sacae run: the ONNX policy on the simulated camera (1 episode)", bold=True, err=True)
        summary = run_policy(exported.path, "dmc", episodes=1, summary_json=out / "run_summary.json")

        typer.secho("4/4 sacae eval: clean vs moving-ball backgrounds", bold=True, err=True)
        report = evaluate_policies([exported.path], episodes=eval_episodes, out=out / "eval")

        typer.echo(json.dumps({
            "trained_env_steps": trained["env_step"], "train_eval_return": trained["eval_return"],
            "policy": str(exported.path), "parity": exported.checks,
            "sacae_run_return": summary.episode_returns[0] if summary.episode_returns else None,
            "sacae_run_latency_ms_p50": summary.latency_ms["p50"],
            "eval_table": str(report["markdown"]), "eval_plot": str(report["plot"]),
            "eval_video": str(out / "eval" / "videos" / f"{out.name}.gif"),
            "logs": [str(out / "train.csv"), str(out / "eval.csv"), str(out / "eval.png")],
        }, indent=2))
