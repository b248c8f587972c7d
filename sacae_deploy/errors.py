"""The one base class for mistakes a user can fix (bad flags, files, frames, environments).

The CLI prints these as one line and exits with code 2; anything else is a bug and keeps its traceback.
"""


class SacaeError(Exception):
    """A user-facing error with a one-line message."""
