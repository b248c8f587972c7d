"""What the `sacae` commands share: the one-line error handling and the option types. The command
modules import it; `sacae_deploy/cli.py` only assembles them into the app (no import circle)."""

from __future__ import annotations

import functools
from enum import Enum
from typing import Any, Callable, TypeVar

import typer

from sacae_deploy.errors import SacaeError

F = TypeVar("F", bound=Callable[..., Any])


class Preset(str, Enum):
    paper = "paper"
    smoke = "smoke"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Distractors(str, Enum):
    none = "none"
    balls = "balls"


def fail(message: str) -> typer.Exit:
    """Print one line to stderr and return the exit to raise (code 2: bad input)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def user_errors(fn: F) -> F:
    """Turn SacaeError, Ctrl-C and SIGTERM into one line and an exit code instead of a traceback
    (130 and 143, as a shell reports a process those signals killed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SacaeError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt as exc:
            typer.echo(f"interrupted ({getattr(exc, 'signal_name', 'SIGINT')})", err=True)
            raise typer.Exit(getattr(exc, "exit_code", 130)) from None

    return wrapper  # type: ignore[return-value]
