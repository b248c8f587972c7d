"""`sacae export`: a training run -> one self-contained, self-checked ONNX policy."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class History(str, Enum):
    stateful = "stateful"
    stateless = "stateless"


def register(app: typer.Typer) -> None:
    from sacae_deploy.cli import user_errors

    @app.command()
    @user_errors
    def export(
        run_dir: Annotated[Path, typer.Argument(help="A `sacae train` output directory (its latest checkpoint is exported).")],
        out: Annotated[Optional[Path], typer.Option(help="Policy file to write (default: RUN_DIR/policy.onnx).")] = None,
        history: Annotated[Optional[History], typer.Option(help="SLAC only: stateful (one frame encoded per step, caches carried) or stateless (the whole history each step).")] = None,
        legacy_exporter: Annotated[bool, typer.Option("--legacy-exporter", help="Use torch's TorchScript exporter (dynamo=False) instead of torch.export.")] = False,
    ) -> None:
        """Export a trained policy to ONNX (uint8 frames in, actions in env bounds out, metadata inside),
        then check it: ONNX checker, onnxruntime vs torch on random inputs."""
        from export import export_run
        from sacae_deploy.policy import Policy

        result = export_run(run_dir, out, history.value if history else None, legacy_exporter)
        for line in result.checks:
            typer.echo(line)
        typer.echo(f"wrote {result.path} ({result.interface}, {result.exporter} exporter, opset 18, "
                   f"{result.size_bytes / 1e6:.2f} MB)")
        typer.echo(Policy.load(result.path).describe())
