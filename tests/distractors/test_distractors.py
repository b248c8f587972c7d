"""Moving-ball distractors: physics invariants, determinism, drawing and compositing."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from distractors import (
    BallDistractor,
    DistractorCompositor,
    background_mask_from_segmentation,
    colour_key_mask,
    composite,
    floor_geom_ids,
    render_with_distractor,
)
from distractors.composite import OBJ_GEOM

STEPS = 1000
# The defaults, a crowded frame and fast small balls (several sub-steps per frame).
CONFIGS = [
    {},
    {"num_balls": 9},
    {"num_balls": 12, "radius_range": (0.04, 0.08), "speed_range": (0.05, 0.15)},
]


def _overlap(balls: BallDistractor) -> float:
    """Largest pairwise interpenetration in pixels (negative when all pairs are apart)."""
    gap = balls.positions[:, None] - balls.positions[None]
    dist = np.sqrt((gap**2).sum(-1))
    depth = balls.radii[:, None] + balls.radii[None] - dist
    return float(depth[np.triu_indices(balls.num_balls, k=1)].max())


def _run(config: dict, seed: int = 0) -> tuple[BallDistractor, list[float], list[float], list[bool]]:
    balls = BallDistractor(84, 84, seed=seed, **config)
    energies, overlaps, inside = [balls.kinetic_energy()], [_overlap(balls)], []
    size = np.array([balls.width, balls.height])
    for _ in range(STEPS):
        balls.step()
        energies.append(balls.kinetic_energy())
        overlaps.append(_overlap(balls))
        r = balls.radii[:, None]
        inside.append(bool(np.all(balls.positions - r >= -1e-9) and np.all(balls.positions + r <= size + 1e-9)))
    return balls, energies, overlaps, inside


@pytest.fixture(scope="module", params=range(len(CONFIGS)), ids=["default", "crowded", "fast"])
def simulated(request: pytest.FixtureRequest) -> tuple[BallDistractor, list[float], list[float], list[bool]]:
    return _run(CONFIGS[request.param])


def test_balls_stay_inside_the_frame(simulated) -> None:
    assert all(simulated[3])


def test_no_pair_overlaps_by_more_than_a_pixel(simulated) -> None:
    assert max(simulated[2]) <= 1.0


def test_kinetic_energy_is_conserved(simulated) -> None:
    energies = np.array(simulated[1])
    assert np.all(np.abs(energies / energies[0] - 1) < 0.02)


def test_balls_actually_collide_and_move() -> None:
    """Guard against vacuous invariants: over 1000 steps the default balls touch and travel."""
    balls, _, overlaps, _ = _run({})
    start = BallDistractor(84, 84, seed=0).positions
    assert max(overlaps) > -0.5  # some pair came within half a pixel of touching
    assert np.all(np.abs(balls.positions - start).max(axis=1) > 1)


def test_head_on_collision_of_equal_balls_swaps_velocities() -> None:
    balls = BallDistractor(84, 84, num_balls=2, seed=0, radius_range=(0.1, 0.1))
    r = balls.radii[0]
    balls.positions[:] = [[42 - r - 1.5, 40], [42 + r + 1.5, 40]]
    balls.velocities[:] = [[1.0, 0.0], [-1.0, 0.0]]
    for _ in range(3):
        balls.step()
    np.testing.assert_allclose(balls.velocities, [[-1.0, 0.0], [1.0, 0.0]], atol=1e-12)


def test_wall_bounce_reflects_velocity() -> None:
    balls = BallDistractor(84, 84, num_balls=1, seed=0)
    r = balls.radii[0]
    balls.positions[:] = [[84 - r - 0.5, 42]]
    balls.velocities[:] = [[2.0, 0.0]]
    balls.step()
    np.testing.assert_allclose(balls.velocities, [[-2.0, 0.0]])
    np.testing.assert_allclose(balls.positions, [[84 - r - 1.5, 42]])


@pytest.mark.parametrize("seed", range(50))
def test_reset_places_balls_without_overlap(seed: int) -> None:
    balls = BallDistractor(84, 84, num_balls=9, seed=seed)
    assert _overlap(balls) <= 0.0
    r = balls.radii[:, None]
    assert np.all(balls.positions >= r) and np.all(balls.positions <= 84 - r)


def test_defaults_look_like_the_paper() -> None:
    balls = BallDistractor(84, 84)
    assert balls.num_balls == 6
    assert np.all((balls.radii >= 5) & (balls.radii <= 12))
    assert len({tuple(c) for c in balls.colours.tolist()}) == 6  # distinct colours
    np.testing.assert_allclose(balls.masses, balls.radii**2)
    rows, cols = np.mgrid[:84, :84] + 0.5
    dist = np.hypot(cols[..., None] - balls.positions[:, 0], rows[..., None] - balls.positions[:, 1])
    clear = np.all(dist > balls.radii + 1, axis=-1)
    assert clear.any() and not balls.render()[clear].any()  # black background


def _frames(balls: BallDistractor, n: int = 20) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        balls.step()
        out.append(balls.render())
    return out


def test_same_seed_same_frames_and_different_seed_different() -> None:
    a, b, c = (_frames(BallDistractor(84, 84, seed=s)) for s in (7, 7, 8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))


def test_reset_with_seed_reproduces() -> None:
    balls = BallDistractor(84, 84, seed=3)
    first = _frames(balls)
    balls.reset()  # unseeded: a new layout
    other = _frames(balls)
    balls.reset(seed=3)
    again = _frames(balls)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("shape", [(84, 84), (64, 100), (120, 48)])
def test_render_is_uint8_hwc(shape: tuple[int, int]) -> None:
    image = BallDistractor(*shape, seed=0).render()
    assert image.dtype == np.uint8 and image.shape == (*shape, 3)


def test_render_matches_signed_distance_coverage() -> None:
    """Sprites (centres rounded to 1/8 px) agree with clip(r + 0.5 - d, 0, 1) to within 1/16."""
    balls = BallDistractor(84, 84, num_balls=1, seed=5, background=(10, 20, 30))
    balls.positions[:] = [[30.37, 51.81]]
    (x, y), r, colour = balls.positions[0], balls.radii[0], balls.colours[0].astype(float)
    rows, cols = np.mgrid[:84, :84] + 0.5
    coverage = np.clip(r + 0.5 - np.hypot(cols - x, rows - y), 0, 1)[..., None]
    expected = np.array([10, 20, 30]) * (1 - coverage) + colour * coverage
    image = balls.render().astype(float)
    assert np.abs(image - expected).max() <= 255 / 16 + 1
    assert np.array_equal(image[int(y), int(x)], colour)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((0, 84), {}, "frame size"),
        ((84, -3), {}, "frame size"),
        ((84.5, 84), {}, "frame size"),
        ((84, 84), {"num_balls": 0}, "num_balls"),
        ((84, 84), {"num_balls": 40}, "do not fit"),
        ((12, 12), {}, "radius"),
        ((84, 84), {"radius_range": (0.2, 0.1)}, "radius_range"),
        ((84, 84), {"radius_range": (0.1, 0.6)}, "do not fit"),
        ((84, 84), {"speed_range": (-0.1, 0.1)}, "speed_range"),
        ((84, 84), {"palette": ()}, "palette"),
        ((84, 84), {"palette": ((300, 0, 0),)}, "palette"),
        ((84, 84), {"background": (0, 0)}, "background"),
        ((84, 84), {"colour": (1, 2, 3)}, "unknown"),
    ],
)
def test_bad_arguments_raise_value_error(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BallDistractor(*args, **kwargs)


def _robot_scene(size: int = 84) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    seg = np.full((size, size, 2), -1, dtype=np.int32)
    seg[30:60, 20:50] = (2, OBJ_GEOM)  # the robot
    seg[70:, :] = (0, OBJ_GEOM)  # the floor
    return frame, seg


def test_composite_keeps_robot_pixels_and_replaces_background() -> None:
    frame, seg = _robot_scene()
    background = BallDistractor(84, 84, seed=0, background=(1, 2, 3)).render()
    mask = background_mask_from_segmentation(seg)
    out = composite(frame, background, mask)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    assert np.array_equal(out[~mask], frame[~mask])
    assert np.array_equal(out[mask], background[mask])


def test_segmentation_mask_with_and_without_floor() -> None:
    _, seg = _robot_scene()
    plain = background_mask_from_segmentation(seg)
    with_floor = background_mask_from_segmentation(seg, floor_geom_ids=(0,))
    assert plain.dtype == np.bool_ and plain.shape == (84, 84)
    assert not plain[70:].any() and with_floor[70:].all()
    assert not with_floor[30:60, 20:50].any()
    assert np.array_equal(plain[:70], with_floor[:70])
    seg[75, 5] = (0, OBJ_GEOM + 1)  # id 0 of another object type (e.g. a site) is not the floor
    assert not background_mask_from_segmentation(seg, floor_geom_ids=(0,))[75, 5]
    with pytest.raises(ValueError, match="segmentation"):
        background_mask_from_segmentation(seg[..., 0])


def test_colour_key_mask() -> None:
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[:] = (0, 200, 0)
    frame[0, 0] = (30, 180, 20)  # within 30 of the key on every channel
    frame[1, 1] = (0, 160, 0)  # 40 away on green
    mask = colour_key_mask(frame, (0, 200, 0), tolerance=30)
    assert mask[0, 0] and not mask[1, 1] and mask.sum() == 15
    assert colour_key_mask(frame, (0, 200, 0), tolerance=0).sum() == 14
    with pytest.raises(ValueError):
        colour_key_mask(frame, (0, 200), tolerance=3)
    with pytest.raises(ValueError):
        colour_key_mask(frame, (0, 200, 0), tolerance=-1)


def test_composite_rejects_mismatched_inputs() -> None:
    frame = np.zeros((84, 84, 3), np.uint8)
    with pytest.raises(ValueError):
        composite(frame, np.zeros((64, 64, 3), np.uint8), np.ones((84, 84), bool))
    with pytest.raises(ValueError):
        composite(frame, frame, np.ones((84, 84), np.uint8))
    with pytest.raises(ValueError):
        composite(frame.astype(np.float32), frame, np.ones((84, 84), bool))


def test_compositor_steps_once_per_frame() -> None:
    frame, seg = _robot_scene()
    compositor = DistractorCompositor(84, 84, seed=2)
    reference = BallDistractor(84, 84, seed=2)
    mask = background_mask_from_segmentation(seg)
    for _ in range(3):
        out = compositor(frame, seg)
        reference.step()
        assert np.array_equal(out, composite(frame, reference.render(), mask))
    assert np.array_equal(compositor.apply_mask(frame, mask)[~mask], frame[~mask])
    compositor.reset(seed=2)
    np.testing.assert_array_equal(compositor.distractor.positions, BallDistractor(84, 84, seed=2).positions)
    with pytest.raises(ValueError, match="frame"):
        compositor(frame[:64, :64], seg[:64, :64])


@pytest.mark.integration
def test_import_needs_neither_torch_nor_mujoco() -> None:
    code = ("import sys, distractors; "
            "bad = {'torch', 'dm_control', 'mujoco'} & set(sys.modules); assert not bad, bad")
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_real_dm_control_render() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    pytest.importorskip("dm_control")
    import mujoco
    from dm_control import suite

    assert OBJ_GEOM == int(mujoco.mjtObj.mjOBJ_GEOM)
    env = suite.load("cartpole", "swingup", task_kwargs={"random": 0})
    try:
        env.reset()
        physics = env.physics
        rgb = physics.render(64, 64, camera_id=0)
        seg = physics.render(64, 64, camera_id=0, segmentation=True)
        mask = background_mask_from_segmentation(seg)
        assert 0 < mask.sum() < mask.size  # neither empty nor full

        compositor = DistractorCompositor(64, 64, seed=0, background=(1, 2, 3))
        out = compositor(rgb, seg)
        background = compositor.distractor.render()  # render is a pure function of the state
        assert np.array_equal(out[~mask], rgb[~mask])
        assert np.array_equal(out[mask], background[mask])
        assert not np.array_equal(out[mask], rgb[mask])

        floors = floor_geom_ids(physics)
        assert floors and all(physics.model.geom_type[i] == mujoco.mjtGeom.mjGEOM_PLANE for i in floors)
        with_floor = background_mask_from_segmentation(seg, floors)
        assert with_floor.sum() > mask.sum() and np.all(with_floor[mask])

        compositor.reset(seed=0)
        helper = render_with_distractor(physics, 64, 0, compositor, include_floor=True)
        assert np.array_equal(helper[~with_floor], rgb[~with_floor])
        assert np.array_equal(helper[with_floor], compositor.distractor.render()[with_floor])
    finally:
        env.close()


def test_training_env_background_is_seeded_per_episode_and_keeps_the_robot() -> None:
    """--distractors balls in the training stack: episode seeds fix the balls (a resumed run sees the
    same ones), a new episode gets new balls, and non-background pixels equal the clean render."""
    pytest.importorskip("dm_control")
    from distractors import make_background
    from sacae_deploy.sim.envs import make_env

    def frames(seed: int, background: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        env = make_env("cartpole-swingup", 0, pixels=True, action_repeat=8, image_size=32, frame_stack=1,
                       render=make_background(background, seed=0))
        try:
            first = [env.reset(seed=seed)] + [env.step(np.array([0.5])).obs for _ in range(3)]
            second = [env.reset(seed=seed + 1)]
            return first, second
        finally:
            env.close()

    a, a_next = frames(7, "balls")
    b, _ = frames(7, "balls")
    clean, _ = frames(7, "none")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1])  # the balls move between agent steps
    assert not np.array_equal(a[0], a_next[0])  # a new episode, new balls
    for shown, plain in zip(a, clean):
        changed = np.any(shown != plain, axis=0)
        assert 0 < changed.mean() < 0.9  # only the background changed
    with pytest.raises(ValueError, match="distractors"):
        make_background("fog")


class _EmptyScene:
    """A dm_control env stand-in whose camera sees no geom: every pixel is background."""

    camera_id = 0

    class physics:  # lower case: the attribute name dm_control envs have
        @staticmethod
        def render(height: int, width: int, camera_id: int = 0, segmentation: bool = False) -> np.ndarray:
            if segmentation:
                return np.full((height, width, 2), -1, np.int32)
            return np.full((height, width, 3), 255, np.uint8)


def _ball_track(frames_per_step: int, frames: int, size: int = 64, **options: object) -> np.ndarray:
    """Where one ball is seen in each frame SimulatedBackground renders: the centre of the ball's
    pixels (the distractor's own background is black), (frames, 2) as x, y."""
    from distractors import SimulatedBackground

    background = SimulatedBackground(seed=1, frames_per_step=frames_per_step, num_balls=1, **options)
    ys, xs = np.mgrid[:size, :size]
    track = []
    for _ in range(frames):
        ball = background(_EmptyScene, size).any(axis=-1)
        track.append((xs[ball].mean(), ys[ball].mean()))
    return np.array(track)


@pytest.mark.parametrize("speed_range", [None, (0.05, 0.08)], ids=["default-speed", "fast-with-bounces"])
def test_frames_per_step_slows_the_balls(speed_range: tuple[float, float] | None) -> None:
    """A camera that renders every control step (frames_per_step=4, the action repeat) sees a ball move
    a quarter as far per frame as the once-per-agent-step renderer does, along the same path (wall
    bounces included): its frame 4k+3 shows the ball where the other's frame k does."""
    options = {} if speed_range is None else {"speed_range": speed_range}
    per_step, per_frame = _ball_track(1, 40, **options), _ball_track(4, 160, **options)
    step = np.linalg.norm(np.diff(per_step, axis=0), axis=1).mean()
    frame = np.linalg.norm(np.diff(per_frame, axis=0), axis=1).mean()
    assert step > 0.5  # the ball visibly moves (pixels per rendered frame) ...
    assert frame == pytest.approx(step / 4, rel=0.1)  # ... and a quarter as far with frames_per_step=4
    np.testing.assert_allclose(per_frame[3::4], per_step, atol=0.05)
    if speed_range is not None:  # a path longer than the frame is wide: bounces are part of the comparison
        assert 39 * step > 64
