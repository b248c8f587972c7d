"""Environment layers: shapes, action repeat, reward summation, one render per agent step, stacking."""

from __future__ import annotations

import numpy as np
import pytest

from sacae_deploy.actions import ActionBounds
from sacae_deploy.sim.envs import ActionRepeat, DMCEnv, EnvError, FrameStack, PixelObservation, check_env_name, make_env


def test_pixel_stack_shapes_and_reset_repeats_first_frame() -> None:
    env = make_env("cartpole-swingup", 0, pixels=True, action_repeat=8, image_size=32, episode_length=80)
    try:
        obs = env.reset(seed=1)
        assert obs.shape == (9, 32, 32) and obs.dtype == np.uint8
        assert np.array_equal(obs[0:3], obs[3:6]) and np.array_equal(obs[3:6], obs[6:9])
        step = env.step(np.ones(1, dtype=np.float32))
        # the stack shifts by one frame: old newest becomes the middle block
        assert np.array_equal(step.obs[3:6], obs[6:9]) and np.array_equal(step.obs[0:3], obs[6:9])
        assert not np.array_equal(step.obs[6:9], obs[6:9])
        assert env.action_repeat == 8 and env.action_dim == 1
    finally:
        env.close()


def test_action_repeat_sums_rewards_and_ends_episodes() -> None:
    plain = DMCEnv("cartpole-swingup", 3, episode_length=40)
    repeated = ActionRepeat(DMCEnv("cartpole-swingup", 3, episode_length=40), 4)
    try:
        plain.reset(seed=5)
        repeated.reset(seed=5)
        rng = np.random.default_rng(0)
        for i in range(10):
            a = rng.uniform(-1, 1, 1).astype(np.float32)
            expected = sum(plain.step(a).reward for _ in range(4))
            step = repeated.step(a)
            assert step.reward == pytest.approx(expected, rel=1e-6, abs=1e-9)
            assert step.last == (i == 9)  # 40 env steps = 10 agent steps
        assert step.discount == 1.0  # a time limit is not a terminal state
    finally:
        plain.close()
        repeated.close()


def test_one_render_per_agent_step() -> None:
    calls = []

    def render(env: DMCEnv, size: int) -> np.ndarray:
        calls.append(env._t)
        return env.render(size)

    env = FrameStack(PixelObservation(ActionRepeat(DMCEnv("cartpole-swingup", 0, 1000), 8), 16, render), 3)
    try:
        env.reset(seed=0)
        for _ in range(3):
            env.step(np.zeros(1, dtype=np.float32))
        assert calls == [0, 8, 16, 24]  # one render at reset, then one after each 8 physics steps
    finally:
        env.close()


def test_same_seed_same_episode_and_state_mode() -> None:
    a = make_env("cartpole-swingup", 0, pixels=False, action_repeat=8)
    b = make_env("cartpole-swingup", 99, pixels=False, action_repeat=8)
    try:
        oa, ob = a.reset(seed=7), b.reset(seed=7)
        assert oa.shape == (5,) and oa.dtype == np.float32
        assert np.array_equal(oa, ob)  # the episode seed alone fixes the initial state
        assert not np.array_equal(a.reset(seed=8), oa)
    finally:
        a.close()
        b.close()


def test_unknown_env_is_a_clear_error() -> None:
    with pytest.raises(EnvError, match="unknown env 'cartpole-fly'.*cartpole-swingup"):
        check_env_name("cartpole-fly")
    with pytest.raises(EnvError, match="DOMAIN-TASK"):
        check_env_name("cartpole")


def test_action_bounds_map_units_both_ways() -> None:
    """One mapping (sacae_deploy.actions) for the simulator, the runtime and the export graphs:
    [-1, 1] bounds change no float; other bounds round-trip; to_env clips agent actions first."""
    unit = ActionBounds([-1.0, -1.0], [1.0, 1.0])
    tiny = np.array([1e-8, -0.3], np.float32)
    assert unit.identity and np.array_equal(unit.to_env(tiny), tiny) and np.array_equal(unit.to_unit(tiny), tiny)
    wide = ActionBounds([-2.0, 0.0], [4.0, 1.0])
    assert not wide.identity
    np.testing.assert_array_equal(wide.to_env([1.0, -1.0]), [4.0, 0.0])
    np.testing.assert_array_equal(wide.to_env([3.0, -7.0]), [4.0, 0.0])
    np.testing.assert_allclose(wide.to_unit(wide.to_env([0.5, -0.25])), [0.5, -0.25], atol=1e-7)
    env = DMCEnv("cartpole-swingup", 0, episode_length=10)
    try:
        assert env.action_bounds.identity
        np.testing.assert_array_equal(env.action_low, env.action_bounds.low)
    finally:
        env.close()
