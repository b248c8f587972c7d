"""What a camera frame is, written once (numpy only): a numpy uint8 (H, W, 3) RGB array with H and
W at least 1. The compositor here, the runtime's frame sources and `Policy.act` all hold frames to
it; each caller words its own error. Here, in the lowest layer, so the runtime (which imports the
distractors) can use it without an import circle."""

from __future__ import annotations

from typing import Any

import numpy as np

# Which rule a frame breaks, in the order they are checked.
NOT_ARRAY, NOT_HWC3, WRONG_SIZE, NOT_UINT8 = "not_array", "not_hwc3", "wrong_size", "not_uint8"


def frame_fault(frame: Any, size: int | None = None) -> str | None:
    """None for a camera frame (and `size` x `size` when given), else the first rule it breaks:
    NOT_ARRAY, NOT_HWC3 (not (H, W, 3) with H, W >= 1), WRONG_SIZE or NOT_UINT8."""
    if not isinstance(frame, np.ndarray):
        return NOT_ARRAY
    shape = frame.shape
    if len(shape) != 3 or shape[2] != 3:
        return NOT_HWC3
    if size is not None and (shape[0] != size or shape[1] != size):
        return WRONG_SIZE
    if shape[0] == 0 or shape[1] == 0:
        return NOT_HWC3
    if frame.dtype != np.uint8:
        return NOT_UINT8
    return None


def check_frame(frame: Any, name: str = "frame") -> np.ndarray:
    """`frame` if it is a camera frame; else a ValueError naming it."""
    if frame_fault(frame) is not None:
        got = (f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__)
        raise ValueError(f"{name} must be uint8 (H, W, 3), got {got}")
    return frame
