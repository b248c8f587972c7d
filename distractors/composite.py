"""Paste a distractor background behind the robot (numpy only; MuJoCo is imported lazily).

In simulation the background is known exactly from MuJoCo's segmentation render: pixels that
show no geom (the skybox) are background, and optionally so is the floor plane. For camera-like
streams without segmentation, a colour key (green screen) gives the mask instead.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .balls import BallDistractor, BallOptions
from .frames import check_frame

# mujoco.mjtObj.mjOBJ_GEOM: the object type MuJoCo writes in a segmentation render's second
# channel for geom pixels. Kept as a constant so this module needs no mujoco import.
OBJ_GEOM = 5


def background_mask_from_segmentation(seg: np.ndarray, floor_geom_ids: Sequence[int] = ()) -> np.ndarray:
    """Boolean (H, W) mask of background pixels from a MuJoCo segmentation render.

    seg is physics.render(..., segmentation=True): int32 (H, W, 2) holding (object id, object
    type) per pixel, id -1 where no geom is seen. Those pixels are background; so are geoms
    listed in floor_geom_ids (see floor_geom_ids()) when the floor should be replaced too.
    """
    if seg.ndim != 3 or seg.shape[2] != 2:
        raise ValueError(f"segmentation must be (H, W, 2) (id, type), got shape {seg.shape}")
    ids = seg[..., 0]
    mask = ids == -1
    if len(floor_geom_ids):
        mask |= np.isin(ids, np.asarray(floor_geom_ids)) & (seg[..., 1] == OBJ_GEOM)
    return mask


def floor_geom_ids(physics: Any) -> tuple[int, ...]:
    """Ids of the plane geoms (the floor) of a dm_control Physics or a mujoco.MjModel."""
    import mujoco

    model = getattr(physics, "model", physics)
    planes = np.flatnonzero(np.asarray(model.geom_type) == mujoco.mjtGeom.mjGEOM_PLANE)
    return tuple(int(i) for i in planes)


def colour_key_mask(frame: np.ndarray, key_rgb: Sequence[int], tolerance: int) -> np.ndarray:
    """Boolean (H, W) mask of pixels whose every channel is within tolerance of key_rgb.

    The distance is the largest per-channel difference (Chebyshev), so tolerance is in the
    same 0..255 units as the image: 0 keys the exact colour only, ~40 absorbs the shading of a
    lit green screen.
    """
    check_frame(frame, "frame")
    if len(key_rgb) != 3 or any(not 0 <= int(c) <= 255 for c in key_rgb):
        raise ValueError(f"key_rgb must be an (r, g, b) triple in 0..255, got {key_rgb!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    diff = np.abs(frame.astype(np.int16) - np.asarray(key_rgb, dtype=np.int16))
    return diff.max(axis=2) <= tolerance


def composite(frame: np.ndarray, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """New uint8 frame: background where mask is True, frame (bit-exact) elsewhere."""
    check_frame(frame, "frame")
    check_frame(background, "background")
    if background.shape != frame.shape or mask.shape != frame.shape[:2] or mask.dtype != np.bool_:
        raise ValueError(f"frame {frame.shape}, background {background.shape} and bool mask "
                         f"{mask.shape} ({mask.dtype}) must share height and width")
    # frame ^ ((frame ^ background) * m) with m in {0, 1} per byte: bit-exact, and ~3x faster
    # than np.where / np.copyto, whose inner loops over a broadcast 3-channel axis are slow.
    per_byte = np.empty(frame.shape, dtype=np.uint8)
    for channel in range(3):
        per_byte[..., channel] = mask
    out = np.bitwise_xor(frame, background)
    out *= per_byte
    out ^= frame
    return out


class DistractorCompositor:
    """Owns a BallDistractor; once per rendered frame it steps the balls and pastes them behind.

    The balls move one step per call, i.e. per rendered frame, so their speeds read as pixels
    per observation whatever the action repeat.
    """

    def __init__(self, height: int, width: int, seed: int | None = None, **options: Any) -> None:
        self.distractor = BallDistractor(height, width, seed=seed, **options)

    def reset(self, seed: int | None = None) -> None:
        """New ball layout (call at each episode start)."""
        self.distractor.reset(seed)

    def apply_mask(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Step, render and composite where mask (bool (H, W), True = background) says."""
        if frame.shape[:2] != (self.distractor.height, self.distractor.width):
            raise ValueError(f"frame is {frame.shape[:2]}, distractor is "
                             f"{(self.distractor.height, self.distractor.width)}")
        self.distractor.step()
        return composite(frame, self.distractor.render(), mask)

    def __call__(self, frame: np.ndarray, segmentation: np.ndarray,
                 floor_geom_ids: Sequence[int] = ()) -> np.ndarray:
        """Step, render and composite behind the non-background pixels of a segmentation."""
        return self.apply_mask(frame, background_mask_from_segmentation(segmentation, floor_geom_ids))


def render_with_distractor(physics: Any, size: int | tuple[int, int], camera_id: int,
                           compositor: DistractorCompositor, include_floor: bool = False) -> np.ndarray:
    """RGB render + one segmentation render of a dm_control Physics, composited: uint8 (H, W, 3).

    size is an int (square) or (height, width). include_floor also replaces the floor plane.
    """
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    rgb = physics.render(height, width, camera_id=camera_id)
    seg = physics.render(height, width, camera_id=camera_id, segmentation=True)
    floors = floor_geom_ids(physics) if include_floor else ()
    return compositor(rgb, seg, floors)


DISTRACTORS = ("none", "balls")


class SimulatedBackground:
    """A frame renderer for dm_control environments (sacae_deploy.sim.envs.PixelObservation's `render` hook):
    one RGB and one segmentation render, moving balls pasted where no geom is seen.

    `reset(seed)` is called at every episode start, so each episode gets its own ball layout,
    reproducible from the episode's seed (a resumed run sees the balls it would have seen).
    `frames_per_step` keeps the balls' real-time speed when a camera renders every control step
    instead of once per agent step (training): speeds are divided by it, and since collisions
    are elastic the balls follow the same paths, only slower per frame.
    """

    def __init__(self, seed: int = 0, include_floor: bool = False, frames_per_step: int = 1,
                 **options: Any) -> None:
        if frames_per_step < 1:
            raise ValueError(f"frames_per_step must be >= 1, got {frames_per_step}")
        if frames_per_step > 1:
            low, high = options.get("speed_range", BallOptions.speed_range)
            options["speed_range"] = (low / frames_per_step, high / frames_per_step)
        self.seed, self.include_floor, self.options = seed, include_floor, options
        self._compositor: DistractorCompositor | None = None
        self._pending_seed: int | None = seed

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: a new ball layout from `seed` (None: the constructor's seed)."""
        if self._compositor is None:
            self._pending_seed = self.seed if seed is None else seed
        else:
            self._compositor.reset(seed)

    def __call__(self, env: Any, size: int) -> np.ndarray:
        """Render `env`'s current frame at size x size with the balls pasted in."""
        if self._compositor is None or self._compositor.distractor.height != size:
            self._compositor = DistractorCompositor(size, size, seed=self._pending_seed, **self.options)
        return render_with_distractor(env.physics, size, env.camera_id, self._compositor, self.include_floor)


def make_background(name: str, seed: int = 0, frames_per_step: int = 1) -> SimulatedBackground | None:
    """The renderer for a `--distractors` choice: None keeps the task's own background."""
    if name not in DISTRACTORS:
        raise ValueError(f"distractors must be one of {', '.join(DISTRACTORS)}, got {name!r}")
    if name == "none":
        return None
    return SimulatedBackground(seed=seed, frames_per_step=frames_per_step)
