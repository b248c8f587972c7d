"""Config validation: values no run can use fail at resolve time, in one line (the CLI's exit 2),
not deep inside a run; a saved config.json is checked the same way when read back."""

from __future__ import annotations

import re

import pytest

from train import config as train_config


@pytest.mark.parametrize("algo, key, value, message", [
    ("sac-ae", "hidden_dim", 0, "hidden_dim must be positive"),
    ("sac-ae", "actor_beta", 1.0, "actor_beta must be in [0, 1)"),
    ("sac-ae", "init_temperature", 0.0, "init_temperature must be positive"),
    ("sac-ae", "reconstruction_bits", 9, "reconstruction_bits must be in [1, 8]"),
    ("sac-ae", "batch_size", True, "batch_size must be int, got True"),
    ("sac-ae", "discount", float("inf"), "discount must be finite"),
    ("slac", "z1_dim", 0, "z1_dim must be positive"),
    ("slac", "tau", 1.5, "tau must be in [0, 1]"),
])
def test_config_rejects_values_no_run_can_use(algo: str, key: str, value: object, message: str) -> None:
    with pytest.raises(train_config.ConfigError, match=re.escape(message)):
        train_config.resolve(algo, "smoke", **{key: value})


def test_image_size_floor_is_the_trunk_s() -> None:
    """The smallest image the conv trunk maps to at least one pixel; SAC:state has no trunk."""
    assert train_config.resolve("sac-ae", "smoke", image_size=15).image_size == 15
    with pytest.raises(train_config.ConfigError, match="at least 15"):
        train_config.resolve("sac-pixel", "smoke", image_size=14)
    assert train_config.resolve("sac-state", "smoke", image_size=1).image_size == 1


def test_a_saved_config_is_checked_when_read_back() -> None:
    saved = train_config.to_dict(train_config.resolve("sac-ae", "smoke"))
    assert train_config.from_dict(saved) == train_config.resolve("sac-ae", "smoke")
    with pytest.raises(train_config.ConfigError, match="batch_size must be int, got '16'"):
        train_config.from_dict({**saved, "batch_size": "16"})
    with pytest.raises(train_config.ConfigError, match="discount must be in"):
        train_config.from_dict({**saved, "discount": -0.5})
    with pytest.raises(train_config.ConfigError, match="algo must be one of"):
        train_config.from_dict({**saved, "algo": "dqn"})


def test_backend_replaces_the_speed_switches() -> None:
    """`backend` took the place of twelve speed switches: a --set of one is an unknown key; a resumed
    or exported run's config.json naming them maps to a backend (defaults: auto; any switched off,
    the reference implementation's way: plain), in one line either way."""
    assert train_config.resolve("sac-ae", "smoke").backend == "auto"
    with pytest.raises(train_config.ConfigError, match="unknown config key 'channels_last'"):
        train_config.resolve("sac-ae", "smoke", channels_last="false")
    saved = train_config.to_dict(train_config.resolve("slac", "smoke"))
    del saved["backend"]
    old = {**saved, "channels_last": True, "encode_chunk": 512, "distinct_frames": True, "cuda_graphs": True}
    assert train_config.resolve("slac", "smoke", old).backend == "auto"
    assert train_config.from_dict(old).backend == "auto"
    reference = {**old, "channels_last": False}
    assert train_config.resolve("slac", "smoke", reference).backend == "plain"
    assert train_config.from_dict(reference).backend == "plain"
    assert train_config.resolve("slac", "smoke", reference, backend="fast-cpu").backend == "fast-cpu"  # --set wins
    with pytest.raises(train_config.ConfigError, match="backend must be auto, plain, fast-cpu"):
        train_config.from_dict({**saved, "backend": "gpu"})
