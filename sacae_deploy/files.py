"""Crash-safe file writes shared by training, export and evaluation (torch-free): durable writes,
the one-writer lock of a run folder, disk-full as one line, and the kill hook of the crash tests."""

from __future__ import annotations

import errno
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, TextIO

from sacae_deploy.errors import SacaeError

LOCK_NAME = ".lock"  # in a run folder; not content (an --out holding only it counts as empty)


class DiskFullError(SacaeError):
    """No space left (ENOSPC, or the quota: EDQUOT) for a write that must happen."""


class BusyError(SacaeError):
    """A run folder another process is writing."""


@contextmanager
def space_for(folder: Path, need: int, what: str) -> Iterator[None]:
    """Turn running out of space while writing `what` (`need` bytes) into `folder` into one line;
    the caller's own clean-up (inside the block) has run by then, so `free` is what is really free."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        try:
            free = f"{shutil.disk_usage(folder).free:,} bytes are free"
        except OSError:
            free = "free space unknown"
        raise DiskFullError(f"no space left in {folder}: {what} needs {need:,} bytes, {free}; "
                            "free some space and continue with --resume") from None


@contextmanager
def synced(path: Path) -> Iterator[BinaryIO]:
    """A new binary file, flushed and fsynced when the block ends: on disk once it returns."""
    with open(path, "wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make the names created, renamed or removed in `path` durable (a rename alone is not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp name, fsync, rename: a reader (or a `kill -9`) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with space_for(path.parent, len(data), path.name):
        try:
            with synced(tmp) as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) so that `path` holds either the old or the whole new content."""
    atomic_write_bytes(path, text.encode())


def append_text(path: Path, text: str) -> None:
    """Append a log line. Not fsynced: a resume re-derives the logs from the checkpoint it continues."""
    with space_for(path.parent, len(text.encode()), path.name), open(path, "a", newline="") as fh:
        fh.write(text)


def lock_dir(directory: Path) -> TextIO:
    """Hold `directory`'s lock while the returned file stays open: one writer per run folder.
    An flock dies with its process, so a killed run never blocks the next one."""
    import fcntl  # Unix only: imported here so that the torch-free runtime imports this module anywhere

    fh = open(directory / LOCK_NAME, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        raise BusyError(f"{directory} is in use by another `sacae train` (pid {pid}); "
                        "wait for it to finish or stop it first") from None
    fh.truncate(0)
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook (tests/test_crash_safety.py): with SACAE_TEST_KILL_AT=NAME:N in the environment,
    the N-th pass through the point NAME SIGKILLs this process, like a `kill -9` at that instant.
    Without it, nothing happens."""
    spec = os.environ.get("SACAE_TEST_KILL_AT", "")
    target, _, n = spec.rpartition(":")
    if target != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)
