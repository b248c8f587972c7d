"""SIGINT (Ctrl-C) and SIGTERM end a command the same way: it finishes the files it started (a
playable video holding every frame seen, the JSON lines, the summary) and exits 130 or 143.

`install()` (the CLI's main calls it) turns the first of either signal into `Interrupted`, a
KeyboardInterrupt, so every `except KeyboardInterrupt` and `finally` already handles both. Later
signals are ignored: they would arrive while the command finishes its files, and breaking off a
video writer then is what leaves an mp4 without its index. `held()` marks work that must not be
cut in half (a frame written to a video, a frame of `sacae run` processed and logged): a signal
inside it is raised when it ends; `allowed()` reopens a held section where waiting is safe to cut
(for the next camera frame). Without `install()` (library use) both are no-ops. A third signal
exits at once (no files finished): the way out should finishing ever hang.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None  # the first signal
_count = 0  # signals received since install()
FORCE_AFTER = 3  # the signal that exits without finishing anything
_raised = False  # it has been raised as Interrupted
_holding = 0  # depth of held() sections


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, carrying the exit code a shell reports for it (128 + the signal number)."""

    def __init__(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(self.signal_name)


def install() -> None:
    """Route SIGINT and SIGTERM through this module (for the whole process, from a fresh state)."""
    global _received, _raised, _holding, _count
    _received, _raised, _holding, _count = None, False, 0, 0
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)


def _on_signal(signum: int, frame: Any) -> None:
    global _received, _count
    _count += 1
    if _count >= FORCE_AFTER:
        os._exit(128 + signum)
    if _received is None:
        _received = signum
        if not _holding:
            _raise_pending()


def _raise_pending() -> None:
    global _raised
    if _received is not None and not _raised:
        _raised = True
        raise Interrupted(_received)


@contextmanager
def held() -> Iterator[None]:
    """What runs inside completes; a signal that came meanwhile is raised at the end."""
    global _holding
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1
    if not _holding:
        _raise_pending()


@contextmanager
def allowed() -> Iterator[None]:
    """Inside a held section, a part a signal may cut (a pending one is raised on entry)."""
    global _holding
    outer, _holding = _holding, 0
    try:
        _raise_pending()
        yield
    finally:
        _holding = outer


def received() -> Interrupted | None:
    """The signal received, if any: a loop that caught it raises it again once its files are finished."""
    return None if _received is None else Interrupted(_received)
