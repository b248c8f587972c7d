"""Frame sources for `sacae run`: anything that yields camera-like uint8 (H, W, 3) RGB frames.

Every source is an iterable of frames with three optional hooks, so the control loop treats a
simulated camera, a video file, a folder of images, a webcam and a user's own generator alike:
- `apply(action)` sends the action in effect for the frame just yielded (the simulated camera
  steps its physics with it and returns the reward; other sources ignore it);
- `episode` is the episode the last frame belongs to (the loop resets the policy when it changes);
- `close()` frees the device, decoder or renderer.
Frames come at whatever size the source has; `AreaResize` brings them to the policy's size.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from distractors.frames import NOT_ARRAY, frame_fault
from sacae_deploy.errors import SacaeError

SCHEMES = ("dmc", "video", "images", "camera")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class SourceError(SacaeError, ValueError):
    """A source that cannot be opened or read (missing file, no camera, unknown scheme)."""


class FrameError(SacaeError, ValueError):
    """A frame the policy cannot take (wrong dtype, shape or channel count)."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def check_frame(frame: Any, index: int) -> np.ndarray:
    """Accept only camera frames (distractors.frames: uint8 (H, W, 3) RGB arrays): a float or BGRA
    frame would be silently misread."""
    fault = frame_fault(frame)
    if fault == NOT_ARRAY:
        raise FrameError(f"frame {index}: expected a numpy uint8 (H, W, 3) RGB array, got {type(frame).__name__}")
    if fault is not None:
        raise FrameError(f"frame {index}: expected uint8 (H, W, 3) RGB, got {frame.dtype} {tuple(frame.shape)}")
    return frame


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    """Files may hold gray or RGBA pixels; the camera contract is RGB."""
    if frame.ndim == 2:
        return np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return frame[:, :, :3]
    return frame


# ---------------------------------------------------------------------------------------- resize
def _area_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Area weights of one axis in sparse (ELL) form: output j averages input cells [j*s, (j+1)*s)
    (s = n_in / n_out), each input cell weighted by its overlap. Returns (index, weight), both
    (n_out, L) with L the widest band; padding has weight 0. Works for up- and down-scaling."""
    scale = n_in / n_out
    lo = np.arange(n_out) * scale
    hi = lo + scale
    start = np.floor(lo).astype(np.int64)
    stop = np.minimum(np.ceil(hi - 1e-9).astype(np.int64), n_in)
    width = int((stop - start).max())
    index = start[:, None] + np.arange(width)[None, :]
    overlap = np.minimum(hi[:, None], index + 1) - np.maximum(lo[:, None], index)
    weight = np.where(index < stop[:, None], np.clip(overlap, 0.0, None) / scale, 0.0)
    return np.minimum(index, n_in - 1), weight.astype(np.float32)


def _apply_rows(x: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Sparse weights along axis 0 of a 2-D array: one row gather and multiply-add per band column
    (2-D keeps numpy's inner loops long; a trailing axis of 3 would make them crawl)."""
    out = weight[:, 0, None] * x[index[:, 0]]
    for k in range(1, index.shape[1]):
        out += weight[:, k, None] * x[index[:, k]]
    return out


class AreaResize:
    """Resize frames to size x size by pixel-area averaging (OpenCV's INTER_AREA rule) in numpy.

    Area averaging is what a lower-resolution sensor does, so a 640x480 camera frame brought to the
    training size looks like the rendered frames the policy learned on (nearest or bilinear sampling
    alias). Aspect ratio is not kept: point the camera so its view matches the training view.
    Integer factors take an exact integer block mean; other sizes apply per-axis sparse weight
    matrices, computed once per input size (a stream rarely changes size). CPU time on the 2-core
    dev machine: ~0.2 ms for 168x168, ~2.7 ms for 640x480, paid on decision frames only.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._plans: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None] = {}

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """The frame at size x size (returned as is when it already is)."""
        h, w = frame.shape[:2]
        n = self.size
        if h == n and w == n:
            return frame
        if (h, w) not in self._plans:
            integer = h % n == 0 and w % n == 0
            self._plans[(h, w)] = None if integer else (*_area_weights(h, n), *_area_weights(w, n))
        plan = self._plans[(h, w)]
        if plan is None:
            return self._block_mean(frame, h // n, w // n)
        iy, wy, ix, wx = plan
        rows = _apply_rows(frame.reshape(h, w * 3), iy, wy)  # (n, w*3)
        by_column = np.ascontiguousarray(rows.reshape(n, w, 3).transpose(1, 0, 2)).reshape(w, n * 3)
        out = _apply_rows(by_column, ix, wx).reshape(n, n, 3).transpose(1, 0, 2)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def _block_mean(self, frame: np.ndarray, fy: int, fx: int) -> np.ndarray:
        n = self.size
        count = fy * fx
        acc_type = np.uint16 if count * 255 + count // 2 <= np.iinfo(np.uint16).max else np.uint32
        by_row = frame.reshape(n, fy, -1)
        acc = by_row[:, 0].astype(acc_type)
        for i in range(1, fy):
            acc += by_row[:, i]
        cells = acc.reshape(n, n, fx, 3)
        total = cells[:, :, 0].copy()
        for j in range(1, fx):
            total += cells[:, :, j]
        return ((total + count // 2) // count).astype(np.uint8)  # exact, rounding half up


# ---------------------------------------------------------------------------------------- sources
class FrameSource:
    """Base of every source: iterate frames; the hooks default to a passive, single-episode stream."""

    episodic = False  # frames belong to numbered episodes with rewards (the simulated camera)
    fps: float | None = None  # the stream's frame rate if it knows one (used for --record)
    episode = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def apply(self, action: np.ndarray) -> float | None:
        """The action in effect for the last frame; returns that control step's reward if any."""
        return None

    def close(self) -> None:
        """Release what the source holds (a file, a camera, a simulator); nothing by default."""
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IteratorSource(FrameSource):
    """A user's own frames (a generator, a list, a ROS callback queue drained into a generator)."""

    def __init__(self, frames: Iterable[np.ndarray]) -> None:
        self._frames = frames

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self._frames)


class DMCSource(FrameSource):
    """A simulated camera on a DeepMind Control task: one rendered frame per control step.

    PixelObservation(DMCEnv) without ActionRepeat renders after every physics step, as a real camera
    would; holding actions is the loop's job. Episode e starts from `reset(seed + e)` on a DMCEnv
    built with `seed`, the seeding the training code's `evaluate(..., first_seed=seed)` uses, so the
    same policy and seed give the same returns in both. `distractors="balls"` paints moving balls
    behind the robot (episode e's balls seeded like its physics); `frames_per_step` (the action
    repeat) slows them per frame so they move as fast per decision as they did in training.
    """

    episodic = True

    def __init__(self, env: str, image_size: int, seed: int = 0, episodes: int = 1, episode_length: int = 1000,
                 camera_id: int = 0, distractors: str = "none", frames_per_step: int = 1) -> None:
        from distractors import DISTRACTORS, make_background
        from sacae_deploy.sim.envs import DMCEnv, PixelObservation
        from sacae_deploy.sim.rendering import check_render_size

        if distractors not in DISTRACTORS:
            raise SourceError(f"distractors must be one of {', '.join(DISTRACTORS)}, got {distractors!r}")

        if episodes < 1:
            raise SourceError(f"--episodes must be at least 1, got {episodes}")
        check_render_size(image_size)
        try:
            sim = DMCEnv(env, seed, episode_length, camera_id)
        except ModuleNotFoundError as exc:
            raise SourceError(f"dmc sources need dm_control ({exc.name} is missing): "
                              "pip install 'sacae-deploy[sim]'") from None
        self._env = PixelObservation(sim, image_size, make_background(distractors, seed, frames_per_step))
        self.env_name = env
        self.seed, self.episodes = seed, episodes
        self.action_dim = sim.action_dim
        self.fps = 1.0 / sim.control_timestep
        # Policies emit actions in the task's bounds; DMCEnv.step takes [-1, 1] and maps back.
        self._bounds = None if sim.action_bounds.identity else sim.action_bounds  # None: nothing to map
        self.episode_returns: list[float] = []
        self._obs: np.ndarray | None = None
        self._last = False
        self._return = 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        for ep in range(self.episodes):
            self.episode = ep
            self._obs = self._env.reset(seed=self.seed + ep)
            self._last, self._return = False, 0.0
            while not self._last:
                obs, self._obs = self._obs, None
                if obs is None:
                    raise SourceError("dmc source: apply(action) must be called once per frame")
                yield obs.transpose(1, 2, 0)  # PixelObservation is channels-first; cameras give HWC

    def apply(self, action: np.ndarray) -> float:
        """Step the simulation with `action` (the task's units); returns the step's reward."""
        step = self._env.step(action if self._bounds is None else self._bounds.to_unit(action))
        self._obs, self._last = step.obs, step.last
        self._return += step.reward
        if step.last:
            self.episode_returns.append(self._return)
        return step.reward

    def close(self) -> None:
        """Close the simulator."""
        self._env.close()


class VideoSource(FrameSource):
    """A video file, decoded as it is read (imageio's ffmpeg reader: ffmpeg decodes in its own
    process, a pipe buffer ahead of the loop; nothing is loaded up front)."""

    def __init__(self, path: str | Path) -> None:
        import imageio.v2 as iio

        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"video {self.path}: no such file")
        try:
            self._reader = iio.get_reader(self.path)
            fps = self._reader.get_meta_data().get("fps")
        except Exception as exc:  # imageio/ffmpeg raise many types for unreadable files
            raise SourceError(f"video {self.path}: cannot read it ({_one_line(exc)})") from None
        self.fps = float(fps) if fps else None

    def __iter__(self) -> Iterator[np.ndarray]:
        frames = iter(self._reader)
        index = 0
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except Exception as exc:
                raise SourceError(f"video {self.path}: cannot decode frame {index} ({_one_line(exc)})") from None
            index += 1
            yield _to_rgb(np.asarray(frame))

    def close(self) -> None:
        """Close the video reader (and its ffmpeg process)."""
        self._reader.close()


def _natural_key(path: Path) -> list[Any]:
    """frame2.png before frame10.png."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


class ImagesSource(FrameSource):
    """A directory of png/jpg frames in natural name order, read one at a time."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise SourceError(f"images {self.directory}: no such directory")
        self.paths = sorted((p for p in self.directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                            key=_natural_key)
        if not self.paths:
            raise SourceError(f"images {self.directory}: no .png or .jpg files")

    def __iter__(self) -> Iterator[np.ndarray]:
        import imageio.v3 as iio

        for path in self.paths:
            try:
                frame = iio.imread(path)
            except Exception as exc:
                raise SourceError(f"image {path}: cannot read it ({_one_line(exc)})") from None
            yield _to_rgb(np.asarray(frame))


class CameraSource(FrameSource):
    """A live camera through OpenCV (the optional `camera` extra); frames converted BGR -> RGB.

    `device` is an index (0 = the first camera) or anything cv2.VideoCapture opens (a /dev path, an
    RTSP URL). The loop never drops frames itself; the driver's small buffer decides what is kept.
    """

    def __init__(self, device: int | str) -> None:
        try:
            import cv2
        except ImportError:
            raise SourceError("camera sources need OpenCV: pip install 'sacae-deploy[camera]'") from None
        self._cv2 = cv2
        self.device = device
        self._cap = cv2.VideoCapture(device)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"camera {device}: cannot open it (no such camera, or it is in use)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            ok, bgr = self._cap.read()
            if not ok:  # unplugged or end of a network stream: the run ends like a finished video
                return
            yield self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        """Release the camera."""
        self._cap.release()


def open_source(spec: str | FrameSource | Iterable[np.ndarray], *, image_size: int, default_env: str | None = None,
                seed: int | None = None, episodes: int | None = None, camera_id: int = 0,
                distractors: str = "none", frames_per_step: int = 1) -> FrameSource:
    """Build a source from `dmc:DOMAIN-TASK`, `video:PATH`, `images:DIR`, `camera:INDEX`, a
    FrameSource, or any iterable of frames. `dmc` alone means the policy's own task; `camera_id` is
    the dm_control camera the policy was trained on; `distractors` and `frames_per_step` (see
    DMCSource) apply to dmc only."""
    if isinstance(spec, FrameSource):
        return spec
    if not isinstance(spec, str):
        return IteratorSource(spec)
    scheme, _, arg = spec.partition(":")
    if scheme not in SCHEMES:
        raise SourceError(f"source {spec!r}: expected one of dmc:DOMAIN-TASK, video:PATH, images:DIR, camera:INDEX")
    if scheme != "dmc" and (seed is not None or episodes is not None or distractors != "none"):
        raise SourceError("--seed, --episodes and --distractors apply to dmc sources only")
    if scheme == "dmc":
        env = arg or default_env
        if not env:
            raise SourceError("source 'dmc': name the task, e.g. dmc:cartpole-swingup")
        return DMCSource(env, image_size, seed=0 if seed is None else seed, episodes=episodes or 1, camera_id=camera_id,
                         distractors=distractors, frames_per_step=frames_per_step)
    if not arg:
        raise SourceError(f"source {spec!r}: missing the {scheme} after '{scheme}:'")
    if scheme == "video":
        return VideoSource(arg)
    if scheme == "images":
        return ImagesSource(arg)
    return CameraSource(int(arg) if arg.isdigit() else arg)
