"""The training loop: collect, update, evaluate, log, checkpoint, resume.

Counters are environment steps (the unit of the published tables; one agent step = action_repeat
environment steps). Checkpoints are taken at episode boundaries, and every episode's initial state
is seeded from (seed, episode index), so a run resumed after `kill -9` replays exactly what the
uninterrupted run would have done from that checkpoint on. A run folder has one writer (a lock held
for the workspace's life).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from distractors import make_background
from sacae_deploy.files import atomic_write_text, lock_dir
from sacae_deploy.sim.envs import make_env
from train import checkpoint
from train.checkpoint import CheckpointError
from train.config import CommonConfig, to_dict
from train.logger import Logger
from train.replay import FrameReplay, ReplayError
from train.torch_utils import bf16_notice, pick_device, tune_allocator

EVAL_SEED_OFFSET = 1_000_003  # eval episodes never reuse a training episode's initial state


class EpisodePolicy(Protocol):
    """Acting within one episode; keeps whatever history the agent conditions on."""

    def reset(self, obs: np.ndarray) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...

    def record(self, obs: np.ndarray, action: np.ndarray) -> None:
        """Note an action chosen elsewhere (seed steps) so the history stays true."""


class Agent(Protocol):
    metric_names: list[str]

    def episode_policy(self, mean: bool) -> EpisodePolicy: ...

    def random_action(self, rng: np.random.Generator) -> np.ndarray: ...

    def update(self, replay: FrameReplay, rng: np.random.Generator, step: int) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_agent(cfg: CommonConfig, obs_shape: tuple[int, ...], action_dim: int, device: torch.device) -> Any:
    if cfg.algo == "slac":
        from train.slac import SlacAgent

        return SlacAgent(cfg, obs_shape, action_dim, device)  # type: ignore[arg-type]
    from train.sac import SacAgent

    return SacAgent(cfg, obs_shape, action_dim, device)  # type: ignore[arg-type]


def episode_seed(seed: int, episode: int) -> int:
    return (seed * 1_000_000_007 + episode * 7919) % 2**32


def uses_pixels(cfg: CommonConfig) -> bool:
    return cfg.algo != "sac-state"


def build_env(cfg: CommonConfig, seed: int, render: Callable[..., np.ndarray] | None = None) -> Any:
    render = render or make_background(cfg.distractors, seed)
    return make_env(cfg.env, seed, pixels=uses_pixels(cfg), action_repeat=cfg.action_repeat,
                    image_size=cfg.image_size, frame_stack=cfg.frame_stack, episode_length=cfg.episode_length,
                    camera_id=cfg.camera_id, render=render)


def newest(cfg: CommonConfig, obs: np.ndarray) -> np.ndarray:
    """The observation the replay stores: the newest frame of a stack, or the state itself."""
    return obs[-3:] if uses_pixels(cfg) else obs


def evaluate(agent: Any, env: Any, cfg: CommonConfig, episodes: int, first_seed: int,
             video: list[np.ndarray] | None = None) -> list[float]:
    """Returns per-episode returns; `video` (if given) receives RGB frames of the first episode."""
    returns = []
    for ep in range(episodes):
        policy = agent.episode_policy(mean=cfg.eval_mean_action)
        obs = env.reset(seed=first_seed + ep)
        policy.reset(obs)
        total, done = 0.0, False
        while not done:
            if video is not None and ep == 0:
                video.append(env.render(256))
            step = env.step(policy.act(obs))
            obs, total, done = step.obs, total + step.reward, step.last
        returns.append(total)
    return returns


# state.json's counters and the type each must have (bool is not taken for int).
STATE_TYPES: dict[str, type] = {"env_step": int, "agent_step": int, "episode": int, "pretrained": bool,
                                "next_eval": int, "next_ckpt": int, "eval_returns": list, "numpy_rng": dict}


def check_state(state: dict[str, Any], path: Path) -> None:
    """Refuse counters a hand edit or another version left wrong, in one line, before any is used."""
    for key, kind in STATE_TYPES.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {path} is damaged: state.json has no {key}")
        value = state[key]
        if type(value) is not kind or (kind is int and value < 0) or (
                kind is list and not all(type(v) in (int, float) for v in value)):
            raise CheckpointError(f"checkpoint {path} is damaged: state.json {key} is {value!r:.60}")


class Workspace:
    def __init__(self, cfg: CommonConfig, run_dir: Path, resume: bool = False,
                 render: Callable[..., np.ndarray] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock_dir(run_dir)
        try:
            self._build(resume, render)
        except BaseException:
            self.close()
            raise

    def _build(self, resume: bool, render: Callable[..., np.ndarray] | None) -> None:
        cfg, run_dir = self.cfg, self.run_dir
        tune_allocator()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.train_env = build_env(cfg, cfg.seed, render)
        self.eval_env = build_env(cfg, cfg.seed + EVAL_SEED_OFFSET, render)
        obs = self.train_env.reset(seed=0)
        store_shape = newest(cfg, obs).shape
        # Each agent step writes a slot and each episode start one more: a short run of a large replay
        # commits only what it fills.
        writes = cfg.env_steps // cfg.action_repeat + cfg.env_steps // cfg.episode_length + 1
        self.replay = FrameReplay(cfg.replay_capacity, store_shape, obs.dtype, self.train_env.action_dim,
                                  device=self.device if self.device.type == "cuda" else None, max_writes=writes)
        self.agent = make_agent(cfg, obs.shape, self.train_env.action_dim, self.device)
        notice = bf16_notice(cfg.bf16, self.device)
        self.notices = [notice] if notice else []  # said when the run starts, through `run`'s progress
        self.env_step = self.agent_step = self.episode = 0
        self.pretrained = False
        self.next_eval = 0  # evaluate the untrained policy too: the curve starts at step 0
        self.next_ckpt = cfg.checkpoint_every
        self.eval_returns: list[float] = []
        self.checkpoint_dir: Path | None = None  # the checkpoint loaded or last saved: the next one links its replay
        if resume:
            self._restore()
        atomic_write_text(run_dir / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
        self.logger = Logger(run_dir, self.agent.metric_names, purge_step=self.env_step if resume else None)
        if resume:
            self.notices += self.logger.resume(self.env_step, train_rows=self.episode, eval_rows=len(self.eval_returns))

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        return {"env_step": self.env_step, "agent_step": self.agent_step, "episode": self.episode,
                "pretrained": self.pretrained, "next_eval": self.next_eval, "next_ckpt": self.next_ckpt,
                "eval_returns": self.eval_returns, "numpy_rng": self.rng.bit_generator.state}

    def save(self) -> Path:
        self.checkpoint_dir = checkpoint.save(self.run_dir, self.env_step, self.agent.state_dict(), self._state(),
                                              self.replay, previous=self.checkpoint_dir)
        return self.checkpoint_dir

    def _restore(self) -> None:
        """Continue from the checkpoint `latest` names or, when it is missing or damaged, the newest
        intact one (said in one line). No checkpoint at all (killed before the first): start over;
        only damaged ones: stop with the newest one's error. Nothing is deleted here."""
        paths, problem = checkpoint.candidates(self.run_dir)
        errors = [problem] if problem else []
        for path in paths:
            try:
                self._load(path)
            except (CheckpointError, ReplayError) as exc:
                errors.append(str(exc))
                continue
            if errors:
                self.notices.append(f"note: {'; '.join(errors)}; resuming from {path.name}")
            self.checkpoint_dir = path
            return
        if errors:
            raise CheckpointError(f"{'; '.join(errors)}; no intact checkpoint is left to resume from "
                                  f"(move {self.run_dir / 'checkpoints'} away to start over)")

    def _load(self, path: Path) -> None:
        agent_state, state = checkpoint.load(path, self.device)
        check_state(state, path)
        torch_rng = agent_state.pop("torch_rng", None)
        cuda_rng = agent_state.pop("cuda_rng", None)
        try:
            self.agent.load_state_dict(agent_state)
            torch.set_rng_state(torch_rng.cpu())  # map_location moved it with the weights
            if cuda_rng is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(cuda_rng.cpu())
            self.rng.bit_generator.state = state["numpy_rng"]
        except CheckpointError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path} is damaged: its agent or RNG state does not fit this run "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:100]})") from None
        self.replay.load(path / "replay")
        if self.replay.total != state["agent_step"] + state["episode"]:
            raise CheckpointError(f"checkpoint {path} is damaged: its replay holds {self.replay.total:,} slots, "
                                  f"its counters say {state['agent_step'] + state['episode']:,}")
        for key in ("env_step", "agent_step", "episode", "pretrained", "next_eval", "next_ckpt", "eval_returns"):
            setattr(self, key, state[key])

    # ------------------------------------------------------------------ loop
    def run(self, progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train until cfg.env_steps; `progress(env_step, info)` is called with each notice first
        (info["message"]), then after every episode and eval."""
        cfg = self.cfg
        if progress is not None:
            for notice in self.notices:
                progress(self.env_step, {"message": notice})
        try:
            while self.env_step < cfg.env_steps:
                self._episode(progress)
                if self.env_step >= self.next_ckpt:
                    self.next_ckpt = (self.env_step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
                    if self.env_step < cfg.env_steps:  # at the budget the final save follows at once
                        self.save()
            if not self.eval_returns or self.last_eval_step != self.env_step:
                self._evaluate(progress)
            self.save()
        finally:
            self.close()
        return {"env_step": self.env_step, "eval_return": self.eval_returns[-1] if self.eval_returns else None}

    @property
    def last_eval_step(self) -> int | None:
        rows = self.logger.eval.rows()
        return int(rows[-1]["env_step"]) if rows else None

    def _maybe_eval(self, progress: Callable[[int, dict[str, Any]], None] | None) -> None:
        if self.env_step >= self.next_eval:
            self._evaluate(progress)

    def _episode(self, progress: Callable[[int, dict[str, Any]], None] | None) -> None:
        cfg = self.cfg
        self._maybe_eval(progress)
        start, start_step = time.perf_counter(), self.env_step
        policy = self.agent.episode_policy(mean=False)
        obs = self.train_env.reset(seed=episode_seed(cfg.seed, self.episode))
        policy.reset(obs)
        self.replay.add_first(newest(cfg, obs))
        total, done, metrics = 0.0, False, {}
        while not done:
            if self.agent_step < cfg.seed_steps:
                action = self.agent.random_action(self.rng)
                policy.record(obs, action)
            else:
                if not self.pretrained and hasattr(self.agent, "pretrain"):
                    self.agent.pretrain(self.replay, self.rng, progress)
                    self.pretrained = True
                action = policy.act(obs)
                for _ in range(getattr(cfg, "updates_per_step", 1)):
                    metrics.update(self.agent.update(self.replay, self.rng, self.agent_step))
            step = self.train_env.step(action)
            self.replay.add(newest(cfg, step.obs), action, step.reward, step.discount)
            obs, total, done = step.obs, total + step.reward, step.last
            self.agent_step += 1
            self.env_step += cfg.action_repeat
            if self.env_step >= cfg.env_steps:
                break  # a run ends at its step budget, mid-episode if need be
        self.episode += 1
        dt = time.perf_counter() - start
        row = {"env_step": self.env_step, "agent_step": self.agent_step, "episode": self.episode,
               "episode_return": total, "episode_length": self.env_step - start_step,
               "steps_per_s": (self.env_step - start_step) / max(dt, 1e-9), "wall_time": time.time()}
        row.update({k: float(v) for k, v in metrics.items()})
        self.logger.log_train(row)
        if progress is not None:
            progress(self.env_step, {"train_return": total, "steps_per_s": row["steps_per_s"]})

    def _evaluate(self, progress: Callable[[int, dict[str, Any]], None] | None) -> None:
        cfg = self.cfg
        # Advanced here, not by the caller, so the end-of-run evaluation also counts: a run
        # resumed with a larger budget does not evaluate the same step twice.
        self.next_eval = (self.env_step // cfg.eval_every + 1) * cfg.eval_every
        frames: list[np.ndarray] | None = [] if cfg.save_video else None
        returns = evaluate(self.agent, self.eval_env, cfg, cfg.eval_episodes,
                           first_seed=episode_seed(cfg.seed + EVAL_SEED_OFFSET, self.env_step), video=frames)
        mean = float(np.mean(returns))
        self.eval_returns.append(mean)
        self.logger.log_eval({"env_step": self.env_step, "episode_return": mean, "return_std": float(np.std(returns)),
                              "episodes": len(returns), "wall_time": time.time()})
        if frames:
            from sacae_deploy.video import write_video

            write_video(self.run_dir / "videos" / f"eval_{self.env_step:09d}.mp4", frames,
                        fps=round(1.0 / (self.eval_env.control_timestep * cfg.action_repeat)))
        if progress is not None:
            progress(self.env_step, {"eval_return": mean})

    def close(self) -> None:
        """Close what was built (all of it, or what a failed start got to), then release the lock."""
        for part in ("train_env", "eval_env", "logger"):
            if hasattr(self, part):
                getattr(self, part).close()
        self._lock.close()
