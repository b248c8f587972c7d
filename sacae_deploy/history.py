"""The history padding rule (`contract.PADDING_RULE`), written once, numpy only.

A decision sees the last frames (SAC's frame stack, SLAC's history) and, for SLAC, the actions
between them. Before an episode's first frame there is nothing to see: the history repeats that
first frame and the actions before it are zero. `history_index` states the rule for a frame at any
step of its episode (the replay's windows); `start_history` is the same rule at step 0, the
history an agent, the simulator's frame stack, the runtime and the export graphs start from.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from sacae_deploy.contract import PADDING_RULE

__all__ = ["PADDING_RULE", "history_index", "start_history"]

T = TypeVar("T")


def history_index(step: Any, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The padding rule for frames at `step` within their episode (0: the episode's first frame;
    any array shape S): the `length` frames of each one's history, oldest first, and the
    `length - 1` actions between them.

    Returns `back` (S + (length,)): how many steps before the frame each history frame is, never
    past the episode's first frame (the first frame repeats), and `real` (S + (length - 1,)):
    whether the action leading to each history frame after the oldest was taken in the episode
    (False: before its start, a zero action)."""
    k = np.arange(length - 1, -1, -1)
    s = np.asarray(step)[..., None]
    return np.minimum(k, s), k[1:] < s


def start_history(first: T, length: int, action_dim: int | None = None) -> tuple[list[T], np.ndarray | None]:
    """The history at an episode's first frame: `history_index` at step 0, where every frame
    reaches back 0 steps and no action is real. Returns the `length` frames (references to `first`,
    of any type: a numpy frame, a torch feature) and, given `action_dim`, the `length - 1` actions
    before it, float32 zeros (None without)."""
    back, real = history_index(0, length)
    assert not real.any()  # so every action is a zero
    actions = None if action_dim is None else np.zeros((len(real), action_dim), np.float32)
    return [first for _ in back], actions
