"""`sacae`: the command-line entry point. Each command lives in sacae_deploy/commands/ (what they
share in commands/common.py) and imports its heavy dependencies (torch, dm_control) only when it
runs, so `sacae run` works torch-free. This module only assembles them into the app."""

from __future__ import annotations

import sys

import typer

from sacae_deploy import interrupts

app = typer.Typer(
    help="Train pixel-based controllers (SAC+AE, SLAC) on DeepMind Control, export them to ONNX, "
    "and run them torch-free on camera-like frame streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from sacae_deploy.commands import demo as demo_cmd
    from sacae_deploy.commands import eval as eval_cmd
    from sacae_deploy.commands import export as export_cmd
    from sacae_deploy.commands import run as run_cmd
    from sacae_deploy.commands import sweep as sweep_cmd
    from sacae_deploy.commands import train as train_cmd

    for module in (train_cmd, export_cmd, run_cmd, eval_cmd, demo_cmd, sweep_cmd):
        module.register(app)


_register()


def _click_exception() -> type[Exception]:
    """ClickException of the Click that typer runs on: its own copy from typer 0.26 on."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException
    return ClickException


def main() -> int:
    """Run the CLI; a bad flag or value is one line on stderr and exit code 2, like the commands'
    own input errors (Click would draw a usage box). SIGINT and SIGTERM end every command alike
    (sacae_deploy.interrupts)."""
    click_exception = _click_exception()
    interrupts.install()
    try:
        code = app(prog_name="sacae", standalone_mode=False)
    except click_exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `sacae` or a group alone: show its help
            exc.show()  # type: ignore[attr-defined]
            return 0
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        typer.echo(f"error: {message}{where}", err=True)
        return int(getattr(exc, "exit_code", 2))
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
