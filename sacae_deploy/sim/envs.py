"""DeepMind Control environments as composable layers (numpy + dm_control, no torch).

    FrameStack(PixelObservation(ActionRepeat(DMCEnv(...))))

`DMCEnv` steps the physics once per call and returns the proprioceptive state; `ActionRepeat`
holds an action for k physics steps and sums rewards; `PixelObservation` renders ONE frame after
the (repeated) step, so rendering is never paid for the intermediate physics steps; `FrameStack`
keeps the last k frames, repeating the first frame of an episode at reset.
The runtime's simulated camera (`sacae run --source dmc:...`) uses `PixelObservation(DMCEnv)`
without `ActionRepeat`, rendering every control step as a real camera would.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sacae_deploy.actions import ActionBounds
from sacae_deploy.errors import SacaeError
from sacae_deploy.history import start_history
from sacae_deploy.sim.rendering import ensure_gl

# SAC+AE appendix B.3, table 3 (following PlaNet/SLAC): control steps per agent step, by domain.
# Training uses it when `action_repeat` is left at 0; `sacae distractors preview` too.
SAC_AE_ACTION_REPEAT = {
    "cartpole": 8,
    "reacher": 4,
    "cheetah": 4,
    "finger": 2,
    "ball_in_cup": 4,
    "walker": 2,
}
DEFAULT_ACTION_REPEAT = 4


class EnvError(SacaeError, ValueError):
    """An environment name or setting that dm_control cannot provide."""


@dataclass
class Step:
    obs: np.ndarray
    reward: float
    last: bool  # the episode is over (time limit or terminal state)
    discount: float  # 0.0 only at a true terminal state; time-limit ends keep 1.0


def split_env_name(name: str) -> tuple[str, str]:
    domain, sep, task = name.partition("-")
    if not sep or not domain or not task:
        raise EnvError(f"env {name!r} is not DOMAIN-TASK (e.g. cartpole-swingup)")
    return domain, task


def available_envs() -> list[str]:
    ensure_gl()
    from dm_control import suite

    return sorted(f"{d}-{t}" for d, t in suite.ALL_TASKS)


def check_env_name(name: str) -> None:
    """Raise EnvError unless dm_control's suite has this DOMAIN-TASK."""
    split_env_name(name)
    envs = available_envs()
    if name not in envs:
        close = [e for e in envs if e.split("-")[0] == name.split("-")[0]]
        hint = f"; tasks of that domain: {', '.join(close)}" if close else "; try `sacae envs`"
        raise EnvError(f"unknown env {name!r}{hint}")


class DMCEnv:
    """One dm_control task, one physics step per `step`, a fixed episode length in env steps."""

    def __init__(self, name: str, seed: int, episode_length: int = 1000, camera_id: int = 0) -> None:
        ensure_gl()
        from absl import logging as absl_logging
        from dm_control import suite

        # dm_control's own XML uses attributes MuJoCo now deprecates (cheetah: settotalmass);
        # its absl warnings say nothing a user can act on.
        absl_logging.set_verbosity(absl_logging.ERROR)
        domain, task = split_env_name(name)
        if (domain, task) not in suite.ALL_TASKS:
            check_env_name(name)
        # The suite's own time limit is disabled: episodes end after `episode_length` physics steps.
        self._env = suite.load(domain, task, task_kwargs={"random": seed, "time_limit": float("inf")})
        self.name = name
        self.episode_length = episode_length
        cameras = int(self._env.physics.model.ncam)
        if not -1 <= camera_id < cameras:
            self._env.close()
            raise EnvError(f"camera_id {camera_id}: {name} has cameras 0-{cameras - 1} (or -1, the free camera)")
        self.camera_id = camera_id
        spec = self._env.action_spec()
        self.action_dim = int(spec.shape[0])
        self.action_bounds = ActionBounds(spec.minimum, spec.maximum)
        self.action_low, self.action_high = self.action_bounds.low, self.action_bounds.high
        self.control_timestep = float(self._env.control_timestep())
        self.state_dim = int(sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values()))
        self.action_repeat = 1
        self._t = 0

    @property
    def physics(self) -> Any:
        return self._env.physics

    def _state(self, timestep: Any) -> np.ndarray:
        return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in timestep.observation.values()])

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode; `seed` reseeds the task's initial-state RNG (deterministic resume)."""
        if seed is not None:
            self._env.task.random.seed(seed % 2**32)
        self._t = 0
        return self._state(self._env.reset())

    def step(self, action: np.ndarray) -> Step:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.action_dim,):
            raise EnvError(f"action has shape {action.shape}, expected ({self.action_dim},)")
        # Agents act in [-1, 1]; map to the task's bounds (the identity for every suite task).
        ts = self._env.step(self.action_bounds.to_env(action))
        self._t += 1
        terminal = ts.discount is not None and ts.discount == 0.0
        return Step(self._state(ts), float(ts.reward or 0.0), terminal or self._t >= self.episode_length,
                    0.0 if terminal else 1.0)

    def render(self, size: int) -> np.ndarray:
        return self._env.physics.render(height=size, width=size, camera_id=self.camera_id)

    def close(self) -> None:
        # Free the GL context now rather than in a finalizer at interpreter exit (which prints tracebacks).
        self._env.close()


class Wrapper:
    """Forward everything not overridden to the inner layer."""

    def __init__(self, env: Any) -> None:
        self.env = env

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def reset(self, seed: int | None = None) -> np.ndarray:
        return self.env.reset(seed)

    def step(self, action: np.ndarray) -> Step:
        return self.env.step(action)


class ActionRepeat(Wrapper):
    """Hold each action for k physics steps; rewards are summed; stops early at an episode end."""

    def __init__(self, env: Any, k: int) -> None:
        super().__init__(env)
        if k < 1:
            raise EnvError(f"action repeat must be >= 1, got {k}")
        self.action_repeat = k

    def step(self, action: np.ndarray) -> Step:
        total = 0.0
        for _ in range(self.action_repeat):
            step = self.env.step(action)
            total += step.reward
            if step.last:
                break
        step.reward = total
        return step


Renderer = Callable[[Any, int], np.ndarray]  # (env, size) -> uint8 (size, size, 3)


class PixelObservation(Wrapper):
    """Replace the state by ONE rendered RGB frame per (outer) step, channels first: (3, H, W) uint8.

    `render` may be swapped (e.g. to composite a distractor background) without touching the layers;
    if it has a `reset(seed)` method, that is called at every episode start.
    """

    def __init__(self, env: Any, size: int, render: Renderer | None = None) -> None:
        super().__init__(env)
        self.size = size
        self.render_frame: Renderer = render or (lambda e, s: e.render(s))

    def _frame(self) -> np.ndarray:
        return np.ascontiguousarray(self.render_frame(self.env, self.size).transpose(2, 0, 1))

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.env.reset(seed)
        reset_renderer = getattr(self.render_frame, "reset", None)
        if reset_renderer is not None:
            reset_renderer(seed)
        return self._frame()

    def step(self, action: np.ndarray) -> Step:
        step = self.env.step(action)
        step.obs = self._frame()
        return step


class FrameStack(Wrapper):
    """Concatenate the last k observations along the channel axis; at reset the first is repeated k times."""

    def __init__(self, env: Any, k: int) -> None:
        super().__init__(env)
        self.k = k
        self._frames: collections.deque[np.ndarray] = collections.deque(maxlen=k)

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs = self.env.reset(seed)
        self._frames.extend(start_history(obs, self.k)[0])
        return np.concatenate(self._frames, axis=0)

    def step(self, action: np.ndarray) -> Step:
        step = self.env.step(action)
        self._frames.append(step.obs)
        step.obs = np.concatenate(self._frames, axis=0)
        return step


def make_env(name: str, seed: int, *, pixels: bool, action_repeat: int, image_size: int = 84,
             frame_stack: int = 3, episode_length: int = 1000, camera_id: int = 0,
             render: Renderer | None = None) -> Any:
    """The training/evaluation stack: pixels -> (3*frame_stack, H, W) uint8; state -> (state_dim,) float32."""
    env: Any = ActionRepeat(DMCEnv(name, seed, episode_length, camera_id), action_repeat)
    if pixels:
        env = FrameStack(PixelObservation(env, image_size, render), frame_stack)
    return env
