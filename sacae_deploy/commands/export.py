"""`sacae export`: a training run -> one self-contained, self-checked ONNX policy."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from sacae_deploy.commands.common import user_errors
from sacae_deploy.outputs import check_output_file


class History(str, Enum):
    stateful = "stateful"
    stateless = "stateless"


class Precision(str, Enum):  # export.precision.PRECISIONS (not imported here: it brings torch)
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def export(
        run_dir: Annotated[Path, typer.Argument(help="A `sacae train` output directory (its latest checkpoint is exported).")],
        out: Annotated[Optional[Path], typer.Option(help="Policy file (.onnx) to write (default: RUN_DIR/policy.onnx).")] = None,
        history: Annotated[Optional[History], typer.Option(help="SLAC only: stateful (one frame encoded per step, caches carried) or stateless (the whole history each step).")] = None,
        legacy_exporter: Annotated[bool, typer.Option("--legacy-exporter", help="Use torch's TorchScript exporter (dynamo=False) instead of torch.export.")] = False,
        precision: Annotated[Precision, typer.Option(help="fp32 (the reference, parity 1e-4 to torch), fp16, int8 (static QDQ, calibrated on real frames), or bf16 (only where onnxruntime's CPU provider runs it). Lower precisions pass the behaviour gate first.")] = Precision.fp32,
        calibration: Annotated[int, typer.Option(min=1, help="Decision frames (the run's replay, else fresh episodes) that calibrate int8 and measure the variant's tensor error.")] = 300,  # export.precision.DEFAULT_CALIBRATION
        gate_episodes: Annotated[int, typer.Option(min=1, help="Seeded episodes the fp32 and the variant policy each run for the behaviour gate.")] = 10,  # export.precision.GATE_EPISODES
        no_gate: Annotated[bool, typer.Option("--no-gate", help="Publish a lower-precision variant without the simulator gate (metadata sacae.gate = skipped).")] = False,
    ) -> None:
        """Export a trained policy to ONNX (uint8 frames in, actions in env bounds out, metadata inside),
        then check it: ONNX checker, onnxruntime vs torch on random inputs."""
        if out is not None or run_dir.is_dir():  # before torch loads; a missing RUN_DIR is export_run's error
            check_output_file(out or run_dir / "policy.onnx", "--out" if out else "the default --out", (".onnx",))
        from export import PrecisionOptions, export_run
        from sacae_deploy.policy import Policy

        options = PrecisionOptions(precision.value, calibration, gate_episodes, not no_gate)
        result = export_run(run_dir, out, history.value if history else None, legacy_exporter, options)
        for line in result.checks:
            typer.echo(line)
        typer.echo(f"wrote {result.path} ({result.interface}, {result.precision}, {result.exporter} exporter, opset 18, "
                   f"{result.size_bytes / 1e6:.2f} MB)")
        typer.echo(Policy.load(result.path).describe())
