"""The exporter's user-facing error (one line, exit code 2 through the CLI)."""

from __future__ import annotations

from sacae_deploy.errors import SacaeError


class ExportError(SacaeError, RuntimeError):
    """A run that cannot be exported, or an exported graph that fails its own checks."""
