"""The one rule for every path a `sacae` command writes, checked before any work starts.

A run that trains, renders or records for minutes and then cannot write its result loses that work
and ends in a traceback; checked first, a bad path is one line and exit code 2. Writers create
missing parent directories, so a path is writable when its nearest existing ancestor is a directory
this process can create files in. That is probed by creating (and at once dropping) a temporary
file there: os.access says yes to root everywhere, even in /proc, where nothing can be created.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sacae_deploy.errors import SacaeError


class OutputError(SacaeError, ValueError):
    """An output path a command cannot write (a directory, under a file, unwritable, wrong extension)."""


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(directory: Path, option: str, path: Path) -> None:
    """`directory` (made if missing) can hold new files."""
    base = _nearest_existing(directory)
    if not base.is_dir():
        raise OutputError(f"{option} {path}: {base} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot create files in {base} ({exc.strerror or exc})") from None


def check_output_file(path: Path, option: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Fail in one line unless `path` can be written as a file (with one of `suffixes`, if given)."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(f"{option} {path}: unsupported file type {path.suffix or '(no extension)'!r}; "
                          f"use {' or '.join(suffixes)}")
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a directory; name a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{option} {path}: the file is read-only")
    _check_creatable(path.parent, option, path)
    return path


def check_output_dir(path: Path, option: str) -> Path:
    """Fail in one line unless `path` is, or can be made, a directory to write files in."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file; name a directory")
    _check_creatable(path, option, path)
    return path
