"""Shared test set-up: headless rendering, the session's exported policies, and the `integration` marker.

Helpers (plain functions, no fixtures) live in tests/helpers.py; no test module imports another.

`integration` marks the tests that run the CLI in a subprocess, train, or export ONNX graphs: the
whole suite (`make test`) runs them, the fast subset (`make test-fast`, `-m "not integration"`)
does not. It is applied here (pytest_collection_modifyitems), so a new test is classified without a
decorator when it
  - lives in an end-to-end module (INTEGRATION_MODULES),
  - uses an exporting fixture, directly or through another fixture (INTEGRATION_FIXTURES),
  - is named test_cli_* (the CLI as a user runs it: a `sacae` subprocess),
  - is listed in INTEGRATION_TESTS (subprocesses in modules this file's owner does not edit), or
  - carries the older `slow` marker.
Any other test that starts a subprocess takes an explicit `@pytest.mark.integration`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from helpers import Exports, export_tiny_sac

os.environ.setdefault("MUJOCO_GL", "egl")

# Modules that are end-to-end throughout: `sacae` subprocesses, training runs, exports.
INTEGRATION_MODULES = {
    "test_cli_train",
    "test_crash_safety",
    "test_eval",
    "test_export",
    "test_outputs_and_signals",
    "test_precision",
    "test_sweep",
}
# Fixtures that export (and so import torch and build graphs): any test that uses one, directly or
# through another fixture, is an integration test.
INTEGRATION_FIXTURES = {"exports", "tiny_sac"}
# Tests named so drive the CLI in a subprocess, wherever they live.
INTEGRATION_PREFIX = "test_cli_"
# Single tests (every parametrized case) in otherwise unit-test modules, by module.
INTEGRATION_TESTS = {
    "test_kernels": {"test_plain_backend_trains_without_importing_train_fast"},  # trains in a subprocess
}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    """The session's smoke runs per algorithm and their exports, each built once on first use
    (test_export and test_policy share them): `exports(algo, history=None) -> (run, path)`."""
    return Exports(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="session")
def tiny_sac(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """An untrained smoke-size SAC+AE policy for cartpole-swingup (32 px, action repeat 8) exported
    once per session: (cfg, agent, path)."""
    path = tmp_path_factory.mktemp("tiny_sac") / "policy.onnx"
    cfg, agent = export_tiny_sac(path, "cartpole-swingup", 32, 8)
    return cfg, agent, path


def _is_integration(item: pytest.Item) -> bool:
    module = item.module.__name__ if isinstance(item, pytest.Function) and item.module else ""
    return (module in INTEGRATION_MODULES
            or bool(INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())))
            or item.name.startswith(INTEGRATION_PREFIX)
            or getattr(item, "originalname", item.name) in INTEGRATION_TESTS.get(module, ())
            or item.get_closest_marker("slow") is not None)  # the older marker: slow implies integration


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("integration") is None and _is_integration(item):
            item.add_marker(pytest.mark.integration)
