"""Action units, written once: agents act in [-1, 1] (tanh outputs), environments and exported
policies in the task's bounds [low, high]. Every layer maps between the two with `ActionBounds`:
the simulator (sim/envs.py), the runtime's simulated camera and evaluation, and the export graphs
(torch tensors go through the same `to_env_units` / `to_agent_units`, with `scale` and `offset` as
tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def to_env_units(unit_action: Any, scale: Any, offset: Any) -> Any:
    """[-1, 1] -> [low, high]: the one formula, for numpy arrays and torch tensors alike."""
    return unit_action * scale + offset


def to_agent_units(env_action: Any, scale: Any, offset: Any) -> Any:
    """[low, high] -> [-1, 1]: `to_env_units`' inverse."""
    return (env_action - offset) / scale


@dataclass(frozen=True, eq=False)
class ActionBounds:
    """A task's action bounds (float32, low < high where the caller has checked it). `scale` is
    half the range and `offset` its middle, so [-1, 1] (every DeepMind Control task) maps exactly
    onto itself: scale 1 and offset 0 change no float."""

    low: np.ndarray
    high: np.ndarray
    scale: np.ndarray = field(init=False, repr=False)
    offset: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        low, high = np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)
        for name, value in (("low", low), ("high", high), ("scale", (high - low) / np.float32(2.0)),
                            ("offset", (high + low) / np.float32(2.0))):
            object.__setattr__(self, name, value)

    @property
    def identity(self) -> bool:
        """The bounds are [-1, 1] in every dimension: both maps are the identity."""
        return bool(np.all(self.low == -1.0) and np.all(self.high == 1.0))

    def to_env(self, unit_action: Any) -> np.ndarray:
        """An agent's action (clipped to [-1, 1] first) in the task's bounds, float32."""
        unit = np.clip(np.asarray(unit_action, np.float32), -1.0, 1.0)
        return to_env_units(unit, self.scale, self.offset).astype(np.float32, copy=False)

    def to_unit(self, env_action: Any) -> np.ndarray:
        """An action in the task's bounds as the agent's [-1, 1] units, float32."""
        env = np.asarray(env_action, np.float32)
        return to_agent_units(env, self.scale, self.offset).astype(np.float32, copy=False)
