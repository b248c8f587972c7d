"""`sacae run`: decisions every K frames on decision-time frames only, held actions, pacing on a
fake clock, the JSON-lines schema, area resize, sources, CLI errors, and dmc parity with training."""

from __future__ import annotations

import collections
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from helpers import sacae
from sacae_deploy.policy import ActionStats
from sacae_deploy.run_loop import JsonLines, RunError, run_loop
from sacae_deploy.sources import (
    AreaResize,
    DMCSource,
    FrameError,
    FrameSource,
    ImagesSource,
    SourceError,
    VideoSource,
    open_source,
)

DT = 0.01


def frame_of(index: int, size: int = 8) -> np.ndarray:
    """A frame that encodes its index: R = index % 256, G = index // 256 (survives area resizing)."""
    frame = np.zeros((size, size, 3), np.uint8)
    frame[..., 0], frame[..., 1] = index % 256, index // 256
    return frame


def index_of(frame: np.ndarray) -> int:
    return int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1])


class FakePolicy:
    """The Policy interface with a 3-frame stack of frame indices; acts [index, -index]."""

    def __init__(self, action_repeat: int = 4, image_size: int = 8, cost: dict[int, float] | None = None,
                 clock: "FakeClock | None" = None) -> None:
        self.action_repeat, self.image_size, self.control_timestep = action_repeat, image_size, DT
        self.action_dim, self.algo, self.env, self.device = 2, "sac-ae", "cartpole-swingup", "cpu"
        self.metadata: dict[str, str] = {}
        self.stats = ActionStats()
        self.seen: list[int] = []
        self.stacks: list[tuple[int, ...]] = []
        self.resets = 0
        self._stack: collections.deque[int] = collections.deque(maxlen=3)
        self._cost, self._clock = cost or {}, clock

    def reset(self) -> None:
        self.resets += 1
        self._stack.clear()

    def act(self, frame: np.ndarray) -> np.ndarray:
        assert frame.shape == (self.image_size, self.image_size, 3) and frame.dtype == np.uint8
        index = index_of(frame)
        self._stack.extend([index] * (3 - len(self._stack)) if not self._stack else [index])
        self.seen.append(index)
        self.stacks.append(tuple(self._stack))
        if self._clock is not None:
            self._clock.now += self._cost.get(index, 0.2 * DT)
        return np.array([index, -index], np.float32)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


class Episodes(FrameSource):
    """An episodic source like the simulated camera: `length` frames per episode, reward 1 per step."""

    episodic = True

    def __init__(self, episodes: int, length: int) -> None:
        self.n_episodes, self.length = episodes, length
        self.episode_returns: list[float] = []
        self.applied: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        for ep in range(self.n_episodes):
            self.episode = ep
            for t in range(self.length):
                yield frame_of(t)

    def apply(self, action: np.ndarray) -> float:
        self.applied.append(action)
        if len(self.applied) % self.length == 0:
            self.episode_returns.append(float(self.length))
        return 1.0


# ------------------------------------------------------------------------------------ action repeat
@pytest.mark.parametrize("k", [1, 3, 4])
def test_policy_sees_only_decision_frames_and_actions_are_held(k: int) -> None:
    policy, lines = FakePolicy(action_repeat=k), []
    summary = run_loop(policy, (frame_of(i) for i in range(20)), on_frame=lines.append)
    decisions = list(range(0, 20, k))
    assert policy.seen == decisions  # frames 0, K, 2K, ... and nothing else
    assert policy.resets == 1
    for stack in policy.stacks[2:]:
        assert stack[1] - stack[0] == k and stack[2] - stack[1] == k  # the stack holds frames K apart
    assert policy.stacks[0] == (0, 0, 0)  # first frame repeated at reset
    for line in lines:
        i = line["frame"]
        assert line["decision"] == (i % k == 0) and line["held"] == (i % k != 0)
        assert line["action"] == [float(i - i % k), -float(i - i % k)]  # held for K frames
    assert summary.frames == 20 and summary.decisions == len(decisions) and summary.action_repeat == k


def test_action_repeat_override_and_max_frames() -> None:
    policy = FakePolicy(action_repeat=8)
    summary = run_loop(policy, (frame_of(i) for i in range(100)), action_repeat=2, max_frames=9)
    assert policy.seen == [0, 2, 4, 6, 8] and summary.frames == 9 and summary.action_repeat == 2


def test_episodes_reset_the_policy_and_report_returns() -> None:
    policy, source, lines, ended = FakePolicy(action_repeat=4), Episodes(episodes=2, length=10), [], []
    summary = run_loop(policy, source, on_frame=lines.append, on_episode_end=lambda e, r: ended.append((e, r)))
    assert policy.resets == 2
    assert policy.seen == [0, 4, 8, 0, 4, 8]  # decisions restart at each episode's first frame
    assert policy.stacks[3] == (0, 0, 0)  # the stack restarts too
    assert [ln["step"] for ln in lines] == list(range(10)) * 2
    assert [ln["episode"] for ln in lines] == [0] * 10 + [1] * 10
    assert all(ln["reward"] == 1.0 for ln in lines)
    assert [float(a[0]) for a in source.applied[:10]] == [0, 0, 0, 0, 4, 4, 4, 4, 8, 8]
    assert ended == [(0, 10.0), (1, 10.0)] and summary.episode_returns == [10.0, 10.0]
    assert summary.partial_return is None


def test_partial_episode_is_reported_separately() -> None:
    summary = run_loop(FakePolicy(), Episodes(episodes=2, length=10), max_frames=14)
    assert summary.episode_returns == [10.0] and summary.partial_return == 4.0


def test_a_closed_output_stops_the_run_with_every_applied_reward_counted() -> None:
    """`sacae run ... | head -3`: the third line's write breaks off, after its action was applied."""
    def write(line: dict[str, object]) -> None:
        if line["frame"] == 2:
            raise BrokenPipeError
    summary = run_loop(FakePolicy(), Episodes(episodes=1, length=10), on_frame=write)
    assert summary.interrupted and summary.frames == 2 and summary.partial_return == 3.0


# ------------------------------------------------------------------------------------ pacing
class Paced(FrameSource):
    """Records the clock time at which each frame was asked for."""

    def __init__(self, clock: FakeClock, n: int) -> None:
        self.clock, self.n, self.released = clock, n, []

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.n):
            self.released.append(self.clock())
            yield frame_of(i)


def test_realtime_counts_overruns_and_never_bursts() -> None:
    clock = FakeClock()
    # frame 4 (a decision) takes 2.5 control steps; everything else 0.2 of one
    policy = FakePolicy(action_repeat=2, cost={4: 2.5 * DT}, clock=clock)
    source, lines = Paced(clock, 10), []
    summary = run_loop(policy, source, realtime=True, on_frame=lines.append, clock=clock, sleep=clock.sleep)
    t0 = source.released[0]
    slots = [round((t - t0) / DT, 6) for t in source.released]
    # frame 4 starts at slot 4, ends at 6.5: slots 5 and 6 are skipped, no frame is
    assert slots == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11]
    assert min(np.diff(source.released)) >= DT - 1e-12  # never two frames less than dt apart
    assert summary.frames == 10 and summary.overruns == 1 and summary.late_decisions == 1
    # the late decision keeps the held action on its own frame; its action takes effect on the next
    assert lines[4]["decision"] and lines[4]["held"] and lines[4]["late"] and lines[4]["action"] == [2.0, -2.0]
    assert not lines[5]["decision"] and lines[5]["action"] == [4.0, -4.0]
    assert lines[6]["action"] == [6.0, -6.0] and not lines[6]["late"]
    assert all(s > 0 for s in clock.sleeps)


def test_realtime_slow_source_counts_every_frame_late_without_catching_up() -> None:
    clock = FakeClock()

    def slow() -> Iterator[np.ndarray]:
        for i in range(6):
            clock.now += 1.5 * DT  # the source itself takes longer than a control step
            yield frame_of(i)

    summary = run_loop(FakePolicy(action_repeat=1, clock=clock, cost={i: 0.0 for i in range(6)}), slow(),
                       realtime=True, clock=clock, sleep=clock.sleep)
    assert summary.frames == 6 and summary.overruns == 5  # frame 0 was fetched before the clock started
    # Frame j >= 1 arrives at t0 + (2j - 0.5) dt, after its slot's deadline: the next frame is released
    # at the first slot still ahead, so every frame costs 2 slots (never a catch-up burst) and the
    # run ends at the slot after frame 5, 11 dt after t0.
    assert clock.sleeps == pytest.approx([DT] + [0.5 * DT] * 5)
    assert summary.wall_s == pytest.approx(11 * DT)
    assert summary.rate_hz == pytest.approx(6 / (11 * DT))  # ~55 Hz, well below the 100 Hz grid


def test_realtime_on_time_run_keeps_the_grid() -> None:
    clock = FakeClock()
    source = Paced(clock, 50)
    summary = run_loop(FakePolicy(action_repeat=4, clock=clock), source, realtime=True, clock=clock, sleep=clock.sleep)
    assert summary.overruns == 0 and summary.late_decisions == 0
    assert np.allclose(np.diff(source.released), DT)
    assert summary.rate_hz == pytest.approx(1.0 / DT, rel=0.05)


# ------------------------------------------------------------------------------------ outputs
def test_jsonl_schema(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    writer = JsonLines(out)
    run_loop(FakePolicy(action_repeat=2), (frame_of(i) for i in range(5)), on_frame=writer)
    writer.close()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in rows] == [0, 1, 2, 3, 4]
    for r in rows:
        assert set(r) == {"frame", "decision", "held", "action", "clipped", "latency_ms"}
        assert r["clipped"] is False
        assert isinstance(r["action"], list) and all(isinstance(a, float) for a in r["action"])
        if r["decision"]:
            assert isinstance(r["latency_ms"], float) and r["latency_ms"] >= 0 and not r["held"]
        else:
            assert r["latency_ms"] is None and r["held"]
    clock, lines = FakeClock(), []
    run_loop(FakePolicy(clock=clock), Episodes(1, 4), realtime=True, on_frame=lines.append, clock=clock,
             sleep=clock.sleep)
    assert set(lines[0]) == {"frame", "decision", "held", "action", "clipped", "latency_ms", "episode", "step",
                             "reward", "late"}


def test_ctrl_c_ends_the_run_with_a_summary() -> None:
    def stream() -> Iterator[np.ndarray]:
        yield from (frame_of(i) for i in range(3))
        raise KeyboardInterrupt

    summary = run_loop(FakePolicy(action_repeat=2), stream())
    assert summary.interrupted and summary.frames == 3 and summary.decisions == 2


def test_empty_source_is_an_error() -> None:
    with pytest.raises(RunError, match="no frames"):
        run_loop(FakePolicy(), [])


def test_summary_fields() -> None:
    """Unpaced on a fake clock where every act() takes 0.2 control steps (2 ms) and nothing else
    costs time: 30 frames take 60 ms of wall time, so the rate is 500 frames/s and so is every latency."""
    clock = FakeClock()
    summary = run_loop(FakePolicy(action_repeat=1, clock=clock), (frame_of(i) for i in range(30)), clock=clock,
                       sleep=clock.sleep)
    d = summary.to_dict()
    assert set(d["latency_ms"]) == {"p50", "p95", "p99", "max", "mean"}
    assert d["frames"] == d["decisions"] == 30 and d["overruns"] == 0 and clock.sleeps == []
    assert d["wall_s"] == pytest.approx(30 * 0.2 * DT) and d["act_s"] == pytest.approx(30 * 0.2 * DT)
    assert d["rate_hz"] == pytest.approx(1 / (0.2 * DT))
    assert all(v == pytest.approx(0.2 * DT * 1e3) for v in d["latency_ms"].values())
    json.dumps(d)


def test_realtime_on_the_real_clock_paces_frames_at_the_control_rate() -> None:
    """time.perf_counter and time.sleep: 20 frames at dt = 10 ms take at least 20 slots (a loaded
    machine can only make them later, never earlier), and the rate never exceeds 1/dt."""
    summary = run_loop(FakePolicy(action_repeat=1), (frame_of(i) for i in range(20)), realtime=True)
    assert summary.frames == 20
    assert 20 * DT - 1e-3 <= summary.wall_s < 20 * DT + 2.0  # generous: other processes may starve us
    assert summary.rate_hz <= 1 / DT * (1 + 1e-3)
    unpaced = run_loop(FakePolicy(action_repeat=1), (frame_of(i) for i in range(20)))
    assert unpaced.wall_s < summary.wall_s  # pacing is what took the time


# ------------------------------------------------------------------------------------ frames & resize
def reference_area(img: np.ndarray, n: int) -> np.ndarray:
    """Exact area average: repeat every pixel n times per axis, then take in-size blocks."""
    h, w, _ = img.shape
    up = np.repeat(np.repeat(img.astype(np.float64), n, 0), n, 1)
    return up.reshape(n, h, n, w, 3).mean(axis=(1, 3))


def test_area_resize_integer_factor_is_block_mean() -> None:
    img = np.random.default_rng(0).integers(0, 256, (168, 252, 3), dtype=np.uint8)
    out = AreaResize(84)(img)
    blocks = img.reshape(84, 2, 84, 3, 3).astype(np.float64).mean(axis=(1, 3))
    assert out.dtype == np.uint8 and out.shape == (84, 84, 3)
    assert np.array_equal(out, np.floor(blocks + 0.5).astype(np.uint8))


@pytest.mark.parametrize("shape, size", [((23, 17), 12), ((12, 13), 12), ((5, 7), 12), ((40, 25), 7)])
def test_area_resize_matches_exact_area_average(shape: tuple[int, int], size: int) -> None:
    img = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    resize = AreaResize(size)
    out = resize(img)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert np.abs(out - reference_area(img, size)).max() <= 0.5 + 1e-4  # exact up to rounding
    assert np.array_equal(resize(img), out) and len(resize._plans) == 1  # plan cached per input size


@pytest.mark.parametrize("shape", [(100, 130), (480, 640), (85, 84), (60, 50)])
def test_area_resize_general_factor_keeps_mean_intensity(shape: tuple[int, int]) -> None:
    img = np.random.default_rng(2).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = AreaResize(84)(img)
    assert out.shape == (84, 84, 3) and abs(out.mean() - img.mean()) < 0.05
    assert np.all(AreaResize(84)(np.full((*shape, 3), 77, np.uint8)) == 77)


def test_area_resize_same_size_is_free() -> None:
    img = frame_of(3, 84)
    assert AreaResize(84)(img) is img


def test_large_frames_are_resized_before_the_policy() -> None:
    policy = FakePolicy(action_repeat=1, image_size=8)
    run_loop(policy, (frame_of(i, 24) for i in range(3)))
    assert policy.seen == [0, 1, 2]


@pytest.mark.parametrize("bad, message", [
    (np.zeros((8, 8, 3), np.float32), "frame 1: expected uint8 (H, W, 3) RGB, got float32 (8, 8, 3)"),
    (np.zeros((8, 8), np.uint8), "frame 1: expected uint8 (H, W, 3) RGB, got uint8 (8, 8)"),
    (np.zeros((8, 8, 4), np.uint8), "frame 1: expected uint8 (H, W, 3) RGB, got uint8 (8, 8, 4)"),
    ([[0, 0, 0]], "frame 1: expected a numpy uint8 (H, W, 3) RGB array, got list"),
])
def test_bad_frames_are_one_line_errors(bad: Any, message: str) -> None:
    """The message names the frame's index, what a frame must be, and what this one was."""
    with pytest.raises(FrameError) as err:
        run_loop(FakePolicy(), [frame_of(0), bad])
    assert str(err.value) == message


@pytest.mark.parametrize("bad", [np.zeros((0, 8, 3), np.uint8), np.zeros((8, 8, 3), np.int16), "frame"])
def test_one_frame_rule_for_sources_and_compositor(bad: Any) -> None:
    """distractors.frames says what a camera frame is; the sources and the compositor both refuse by it."""
    from distractors import composite
    from distractors.frames import frame_fault
    from sacae_deploy.sources import check_frame

    assert frame_fault(bad) is not None and frame_fault(frame_of(0)) is None
    with pytest.raises(FrameError):
        check_frame(bad, 0)
    with pytest.raises(ValueError, match="frame must be uint8"):
        composite(bad, frame_of(0), np.ones((8, 8), bool))


def test_bad_action_repeat() -> None:
    with pytest.raises(RunError) as err:
        run_loop(FakePolicy(), [frame_of(0)], action_repeat=0)
    assert str(err.value) == "action repeat must be at least 1, got 0"


# ------------------------------------------------------------------------------------ sources
def write_video(path: Path, n: int, size: int = 16, fps: float = 50.0) -> None:
    from sacae_deploy.video import write_video as write

    write(path, (frame_of(i * 10, size) for i in range(n)), fps=fps)


def test_video_source_streams_frames(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, 12)
    with VideoSource(path) as source:
        frames = list(source)
        assert source.fps == 50.0
    assert len(frames) == 12 and frames[0].shape == (16, 16, 3) and frames[0].dtype == np.uint8
    assert abs(int(frames[5][8, 8, 0]) - 50) <= 3  # lossy codec, right frame


def test_source_errors_are_one_line(tmp_path: Path) -> None:
    """Each message names the source and what is wrong with it, on one line."""
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    cases = {
        f"video:{tmp_path / 'missing.mp4'}": f"video {tmp_path / 'missing.mp4'}: no such file",
        f"images:{tmp_path / 'none'}": f"images {tmp_path / 'none'}: no such directory",
        f"images:{tmp_path}": f"images {tmp_path}: no .png or .jpg files",
        "webcam:0": "source 'webcam:0': expected one of dmc:DOMAIN-TASK, video:PATH, images:DIR, camera:INDEX",
        "video:": "source 'video:': missing the video after 'video:'",
        "dmc:": "source 'dmc': name the task, e.g. dmc:cartpole-swingup",
    }
    for spec, message in cases.items():
        with pytest.raises(SourceError) as err:
            open_source(spec, image_size=8)
        assert str(err.value) == message
    with pytest.raises(SourceError) as err:  # ffmpeg's own reason follows, on the same line
        open_source(f"video:{junk}", image_size=8)
    assert str(err.value).startswith(f"video {junk}: cannot read it (") and "\n" not in str(err.value)
    with pytest.raises(SourceError) as err:
        open_source(f"video:{junk}", image_size=8, episodes=2)
    assert str(err.value) == "--seed, --episodes and --distractors apply to dmc sources only"


NO_OPENCV = "camera sources need OpenCV: pip install 'sacae-deploy[camera]'"
NO_CAMERA_97 = "camera 97: cannot open it (no such camera, or it is in use)"


class FakeCv2:
    """The few cv2 calls CameraSource makes; `frames` (BGR) are what the camera delivers, and
    None means no camera answers at that device."""

    CAP_PROP_FPS, COLOR_BGR2RGB = 5, 4

    def __init__(self, frames: list[np.ndarray] | None, fps: float = 30.0) -> None:
        self.frames, self.fps, self.opened, self.released = frames, fps, [], 0
        cv2 = self

        class VideoCapture:
            def __init__(self, device: int | str) -> None:
                cv2.opened.append(device)
                self._frames = iter(frames or [])

            def isOpened(self) -> bool:
                return frames is not None

            def get(self, prop: int) -> float:
                assert prop == cv2.CAP_PROP_FPS
                return cv2.fps

            def read(self) -> tuple[bool, np.ndarray | None]:
                frame = next(self._frames, None)
                return frame is not None, frame

            def release(self) -> None:
                cv2.released += 1

        self.VideoCapture = VideoCapture

    def cvtColor(self, image: np.ndarray, code: int) -> np.ndarray:
        assert code == self.COLOR_BGR2RGB
        return image[..., ::-1].copy()


def test_camera_without_opencv_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    with pytest.raises(SourceError) as err:
        open_source("camera:97", image_size=8)
    assert str(err.value) == NO_OPENCV


def test_camera_that_does_not_open_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    cv2 = FakeCv2(frames=None)
    monkeypatch.setitem(sys.modules, "cv2", cv2)
    with pytest.raises(SourceError) as err:
        open_source("camera:97", image_size=8)
    assert str(err.value) == NO_CAMERA_97
    assert cv2.opened == [97] and cv2.released == 1  # the index as an int; the handle is not leaked


def test_camera_frames_reach_the_policy_as_rgb(monkeypatch: pytest.MonkeyPatch) -> None:
    bgr = [frame_of(i)[..., ::-1].copy() for i in range(5)]  # what OpenCV delivers: channels reversed
    cv2 = FakeCv2(frames=bgr, fps=25.0)
    monkeypatch.setitem(sys.modules, "cv2", cv2)
    policy = FakePolicy(action_repeat=1)
    with open_source("camera:/dev/video2", image_size=8) as source:
        assert source.fps == 25.0
        summary = run_loop(policy, source)
    assert cv2.opened == ["/dev/video2"] and cv2.released == 1
    assert policy.seen == [0, 1, 2, 3, 4] and summary.frames == 5  # RGB again: the indices survive


def test_images_source_natural_order(tmp_path: Path) -> None:
    import imageio.v3 as iio

    for i in (10, 2, 1):
        iio.imwrite(tmp_path / f"f{i}.png", frame_of(i, 12))
    rgba = np.concatenate([frame_of(30, 12), np.full((12, 12, 1), 255, np.uint8)], axis=2)
    iio.imwrite(tmp_path / "f30.png", rgba)
    (tmp_path / "notes.txt").write_text("ignored")
    policy = FakePolicy(action_repeat=1)
    with ImagesSource(tmp_path) as source:
        run_loop(policy, source)
    assert policy.seen == [1, 2, 10, 30]


def test_dmc_source_holds_actions_and_counts_rewards() -> None:
    class Constant(FakePolicy):
        def act(self, frame: np.ndarray) -> np.ndarray:
            assert frame.shape == (16, 16, 3)
            self.seen.append(len(self.seen))
            return np.array([0.5], np.float32)

    policy, lines = Constant(action_repeat=4, image_size=16), []
    with DMCSource("cartpole-swingup", 16, seed=3, episodes=2, episode_length=8) as source:
        summary = run_loop(policy, source, on_frame=lines.append)
    assert summary.frames == 16 and summary.decisions == 4 and policy.resets == 2
    assert [ln["episode"] for ln in lines] == [0] * 8 + [1] * 8
    assert summary.episode_returns == pytest.approx([sum(ln["reward"] for ln in lines[:8]),
                                                     sum(ln["reward"] for ln in lines[8:])])


# ------------------------------------------------------------------------------------ torch-free & CLI
@pytest.mark.integration
def test_runtime_imports_no_torch_or_dm_control() -> None:
    code = ("import sys, sacae_deploy.cli, sacae_deploy.run_loop, sacae_deploy.sources, sacae_deploy.commands.run\n"
            "bad = [m for m in ('torch', 'dm_control', 'mujoco') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.integration
def test_cli_missing_model_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = sacae("run", str(tmp_path / "missing.onnx"), "--source", "dmc")
    assert proc.returncode == 2
    assert proc.stderr == (f"error: policy file {tmp_path / 'missing.onnx'} does not exist "
                           "(create one with `sacae export RUN_DIR`)\n")


# ------------------------------------------------------------------------------------ with a real exported policy
ENV, SIZE, K = "cartpole-swingup", 32, 8


@pytest.fixture(scope="module")
def tiny_policy(tiny_sac: tuple[Any, Any, Path]) -> tuple[Any, Any, Path]:
    """The session-wide tiny SAC+AE export from conftest (cartpole-swingup, 32 px, action repeat 8)."""
    cfg, _, path = tiny_sac
    assert (cfg.env, cfg.image_size, cfg.action_repeat) == (ENV, SIZE, K)
    return tiny_sac


class OnnxAgent:
    """The training code's Agent protocol over the ONNX Policy, fed the newest frame of the env's
    stack (the Policy keeps its own stack), so both sides run identical numerics."""

    def __init__(self, path: Path) -> None:
        from sacae_deploy.policy import Policy

        self.policy = Policy.load(path, device="cpu", threads=1)

    def episode_policy(self, mean: bool) -> "OnnxAgent":
        return self

    def reset(self, obs: np.ndarray) -> None:
        self.policy.reset()

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.policy.act(np.ascontiguousarray(obs[-3:].transpose(1, 2, 0)))


def training_returns(path: Path, cfg: Any, seed: int, episodes: int, length: int) -> list[float]:
    """train.workspace.evaluate on the training env stack: ActionRepeat + FrameStack."""
    from sacae_deploy.sim.envs import make_env
    from train.workspace import evaluate

    env = make_env(ENV, seed, pixels=True, action_repeat=K, image_size=SIZE, frame_stack=3, episode_length=length)
    try:
        return evaluate(OnnxAgent(path), env, cfg, episodes=episodes, first_seed=seed)
    finally:
        env.close()


def test_dmc_returns_match_training_evaluation(tiny_policy: tuple[Any, Any, Path]) -> None:
    """Same policy and seed: the run loop on the simulated camera (a frame every control step, a
    decision every K) gives exactly the returns of the training code's evaluation, over episodes."""
    from sacae_deploy.policy import Policy

    cfg, _, path = tiny_policy
    expected = training_returns(path, cfg, seed=5, episodes=2, length=48)
    with DMCSource(ENV, SIZE, seed=5, episodes=2, episode_length=48) as source:
        summary = run_loop(Policy.load(path, device="cpu", threads=1), source)
    assert summary.decisions == 2 * 48 // K
    assert summary.episode_returns == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("threads", [["--threads", "1"], ["--threads", "2", "--no-spin"]])
def test_cli_dmc_return_matches_training_evaluation(tiny_policy: tuple[Any, Any, Path], tmp_path: Path,
                                                    threads: list[str]) -> None:
    """The same through `sacae run` (1000-step episodes, cut by --max-frames to keep it fast), whatever
    its threads do between decisions."""
    cfg, _, path = tiny_policy
    expected = training_returns(path, cfg, seed=7, episodes=1, length=64)
    summary_path = tmp_path / "summary.json"
    sacae("run", str(path), "--source", "dmc", "--seed", "7", "--max-frames", "64", *threads,
          "--device", "cpu", "--summary-json", str(summary_path), check=True)
    got = json.loads(summary_path.read_text())
    assert got["frames"] == 64 and got["decisions"] == 64 // K and got["episode_returns"] == []
    assert got["partial_return"] == pytest.approx(expected[0], abs=1e-9)


def test_cli_video_jsonl_and_record(tiny_policy: tuple[Any, Any, Path], tmp_path: Path) -> None:
    _, _, path = tiny_policy
    video = tmp_path / "in.mp4"
    write_video(video, 20, size=48)
    proc = sacae("run", str(path), "--source", f"video:{video}", "--jsonl", "-", "--action-repeat", "4",
                 "--record", str(tmp_path / "rec.mp4"), check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["frame"] for r in rows] == list(range(20))
    assert [r["frame"] for r in rows if r["decision"]] == [0, 4, 8, 12, 16]
    assert all(len(r["action"]) == 1 and -1.0 <= r["action"][0] <= 1.0 for r in rows)
    with VideoSource(tmp_path / "rec.mp4") as reader:
        recorded = list(reader)
    assert len(recorded) == 20 and recorded[0].shape == (48, 48, 3)


@pytest.mark.parametrize("case", ["corrupt_model", "bad_video", "no_camera"])
def test_cli_bad_inputs_are_one_line_exit_2(case: str, tiny_policy: tuple[Any, Any, Path], tmp_path: Path) -> None:
    _, _, path = tiny_policy
    model, source = str(path), f"video:{tmp_path / 'missing.mp4'}"
    expected = f"video {tmp_path / 'missing.mp4'}: no such file"
    if case == "corrupt_model":
        model = str(tmp_path / "corrupt.onnx")
        Path(model).write_bytes(b"\x08\x07garbage" * 10)
        expected = f"{model} is not a loadable ONNX model (Protobuf parsing failed.)"
    elif case == "no_camera":
        source = "camera:97"
        # the subprocess runs this venv: without the camera extra it says so, with it no camera 97 opens
        expected = NO_CAMERA_97 if importlib.util.find_spec("cv2") is not None else NO_OPENCV
    proc = sacae("run", model, "--source", source)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: {expected}\n"
