"""The one base class for mistakes a user can fix (bad flags, files, frames, environments).

The CLI prints these as one line and exits with code 2; anything else is a bug and keeps its traceback.
"""


class SacaeError(Exception):
    """A user-facing error with a one-line message."""


class ConfigError(SacaeError, ValueError):
    """A bad configuration value (a training config, or a size the simulator cannot render); the CLI
    turns it into a one-line error and exit code 2. Here, not in train/config.py, because the
    runtime's simulator raises it too."""


class PolicyError(SacaeError, ValueError):
    """A policy file, device or input the runtime cannot use; the message says what to fix.
    Here, not in policy.py, because the contract module (shared with the exporter) raises it too."""


class NonFiniteActionError(PolicyError):
    """The graph answered NaN or inf: no action was returned. Callers that can carry on (an
    evaluation's next episode) catch this one; the policy needs `reset()` before acting again."""
