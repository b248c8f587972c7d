"""SLAC: Stochastic Latent Actor-Critic (Lee et al. 2020), the agent.

Per agent step (algorithm 1, appendix C): one update of the latent model (eq. 7) on 32 windows,
then one SAC update on 256 windows (eqs. 8-10):

- critic: twin Q(z, a), 2x256, on latents sampled from the filtering posterior; the backup is on
  (z_tau, a_tau, r_tau, z_{tau+1}) from the same filtering sample (stop-gradient into the model);
- actor: conditioned on the history, not on z: conv features of the last 8 frames (the model's
  encoder, never moved by the actor loss) and the 7 actions between them, 2x256, tanh-Gaussian;
  eq. (10) evaluates it at the window's last step, the same history the critic's target uses;
- temperature: automatic, target entropy -|A| (SAC).

Before learning: random episodes (actions tanh(N(0, 2^2))), then `pretrain_updates` model-only
updates (appendix C). History padding at an episode's start follows `contract.PADDING_RULE` both in
the replay's windows and when acting (`HistoryPolicy`).

Same math, less work: each window's 9 frames are encoded once per update (in the SAC update each
distinct frame, gathered from the replay once: overlapping windows share frames), and in the SAC
update those features (no autograd; in chunks, which bounds the activation memory) serve the
filtering pass for the critic and the actor's history input alike; the model update converts its
frames to floats once, for the encoder and the image likelihood. The backend's kernels
(`cfg.backend`, train.backend.kernels) run the layers and Adam: plain PyTorch, or train.fast's
CPU kernels (the same math); benchmarks/slac_update.py measures them against the reference's way.
`bf16=true` adds autocast for the conv encoder/decoder (different rounding). On a GPU each update
(model, SAC) replays as one CUDA graph (train/cuda_graph.py): the same kernels, launched once
instead of one by one.
"""

from __future__ import annotations

import collections
import copy
import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from sacae_deploy.history import start_history
from train.agent_base import SacFamilyAgent
from train.backend import kernels
from train.config import SlacConfig
from train.cuda_graph import GraphedStep
from train.encoder import IdentityEncoder
from train.sac import Actor, Critic
from train.slac_model import FrameEncoder, LatentModel


class SlacActor(Actor):
    """SAC's tanh-Gaussian actor (train/sac.py: same MLP and sampling) on the history vector
    [features of H frames, the H-1 actions between them], oldest first.

    The log-std is clamped to [-20, 2] (both reference implementations) and the pre-tanh std is
    then scaled by `std_scale` (appendix C: 2 on DeepMind Control). `forward` is the deterministic
    action tanh(mean), the exported graph's head.
    """

    def __init__(self, feature_dim: int, action_dim: int, history: int, hidden: int, log_std_min: float,
                 log_std_max: float, std_scale: float) -> None:
        in_dim = history * feature_dim + (history - 1) * action_dim
        super().__init__(IdentityEncoder((in_dim,)), action_dim, hidden, log_std_min, log_std_max)
        self.history = history
        self.log_std_shift = math.log(std_scale)

    def dist_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.trunk(x).chunk(2, dim=-1)
        return mu, log_std.clamp(self.log_std_min, self.log_std_max) + self.log_std_shift

    @staticmethod
    def history_input(features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B, H, F) features and (B, H-1, A) actions -> the actor's flat input (B, H*F + (H-1)*A)."""
        return torch.cat([features.flatten(1), actions.flatten(1)], dim=-1)

    def forward(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mu, _ = self.dist_params(self.history_input(features, actions))
        return torch.tanh(mu)


class HistoryPolicy:
    """Acting within an episode: the last H frames and the H-1 actions between them.

    At reset the history is H copies of the first frame and zero actions (contract.PADDING_RULE),
    exactly what the replay's windows hold for the first steps of an episode.
    """

    def __init__(self, agent: "SlacAgent", mean: bool) -> None:
        self.agent, self.mean = agent, mean
        h = agent.cfg.history_length
        self.frames: collections.deque[np.ndarray] = collections.deque(maxlen=h)
        self.actions: collections.deque[np.ndarray] = collections.deque(maxlen=h - 1)
        self.pending: np.ndarray | None = None  # the action taken since the newest frame

    def reset(self, obs: np.ndarray) -> None:
        frames, actions = start_history(obs, self.agent.cfg.history_length, self.agent.action_dim)
        self.frames.extend(frames)
        self.actions.extend(actions)
        self.pending = None

    def _observe(self, obs: np.ndarray) -> None:
        if self.pending is not None:
            self.frames.append(obs)
            self.actions.append(self.pending)
            self.pending = None

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        actions = np.asarray(list(self.actions), np.float32).reshape(len(self.actions), self.agent.action_dim)
        return np.stack(self.frames), actions

    def act(self, obs: np.ndarray) -> np.ndarray:
        self._observe(obs)
        action = self.agent.act(*self.history(), mean=self.mean)
        self.pending = action
        return action

    def record(self, obs: np.ndarray, action: np.ndarray) -> None:
        self._observe(obs)
        self.pending = np.asarray(action, np.float32)


class SlacAgent(SacFamilyAgent):
    metric_names = ["model_loss", "kl", "image_nll", "reward_nll", "critic_loss", "actor_loss", "alpha_loss",
                    "alpha", "entropy"]

    def __init__(self, cfg: SlacConfig, obs_shape: tuple[int, ...], action_dim: int, device: torch.device) -> None:
        if tuple(obs_shape) != (3, cfg.image_size, cfg.image_size):
            raise ValueError(f"slac acts on single (3, {cfg.image_size}, {cfg.image_size}) frames, got {obs_shape}")
        self.cfg, self.device, self.action_dim = cfg, device, action_dim
        self.kernels = kernels(cfg.backend, device)
        self.model = LatentModel(action_dim, cfg.z1_dim, cfg.z2_dim, cfg.model_hidden, cfg.base_depth,
                                 cfg.decoder_variance, cfg.std_grad_clip)
        self.actor = SlacActor(self.model.encoder.feature_dim, action_dim, cfg.history_length, cfg.hidden_dim,
                               cfg.actor_log_std_min, cfg.actor_log_std_max, cfg.actor_std_scale)
        self.critic = Critic(IdentityEncoder((cfg.z1_dim + cfg.z2_dim,)), action_dim, cfg.hidden_dim)
        self.critic_target = copy.deepcopy(self.critic)
        self.critic_target.requires_grad_(False)
        for m in self.modules().values():
            m.to(device)
        self.kernels.accelerate(self.model)
        self.log_alpha = torch.tensor(float(cfg.init_log_alpha), device=device, requires_grad=True)
        self.target_entropy = -float(action_dim)
        # On a GPU each update replays as one CUDA graph (train/cuda_graph.py: the same kernels, one
        # launch). bf16 autocast caches its weight casts across calls, which a graph cannot replay.
        self.graphs = device.type == "cuda" and not cfg.bf16
        self.model_opt = self._adam(self.model.parameters(), cfg.model_lr)
        self.actor_opt = self._adam(self.actor.parameters(), cfg.actor_lr)  # the conv encoder is not in here
        self.critic_opt = self._adam(self.critic.parameters(), cfg.critic_lr)
        self.alpha_opt = self._adam([self.log_alpha], cfg.alpha_lr)
        self._model_step = GraphedStep(self._update_model, self.graphs)
        self._sac_step = GraphedStep(self._update_sac, self.graphs)

    def _adam(self, params: Any, lr: float) -> torch.optim.Adam:
        # Adam with its default betas (SAC, appendix C); capturable where a CUDA graph holds the step.
        return self.kernels.adam(params, lr, capturable=self.graphs)

    # ------------------------------------------------------------------ exporter-facing modules
    @property
    def encoder(self) -> FrameEncoder:
        """uint8 frames (B, 3, 64, 64) -> per-frame conv features (B, F): the actor's (and model's) encoder."""
        return self.model.encoder

    @property
    def feature_dim(self) -> int:
        return self.model.encoder.feature_dim

    # ------------------------------------------------------------------ bookkeeping
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "actor": self.actor, "critic": self.critic, "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model_opt": self.model_opt, "actor_opt": self.actor_opt, "critic_opt": self.critic_opt,
                "alpha_opt": self.alpha_opt}

    def _frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> (N, 3, H, W) on the device."""
        return torch.as_tensor(frames, device=self.device).flatten(0, -4)

    def _prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames -> the encoder's float input (and the image likelihood's target)."""
        return FrameEncoder.prepare(self.kernels.frames(frames))  # per call: a chunk's layout change stays in cache

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.encoder.run(pixels).float()

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self._features(self._prepare(frames))

    # Frames per no-grad encoder pass (None: all at once; benchmarks/slac_update.py's reference-style mode).
    encode_chunk: int | None = 512

    @torch.no_grad()
    def _encode_no_grad(self, frames: torch.Tensor) -> torch.Tensor:
        """In chunks of `encode_chunk` frames: the same result with a bounded activation peak (2,304
        frames at once hold ~300 MB after the first conv)."""
        n = self.encode_chunk or len(frames)
        return torch.cat([self._encode(frames[i:i + n]) for i in range(0, len(frames), n)])

    def _window(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """A sampled batch as the update steps take it: frames (N, 3, H, W), action, reward, discount, valid."""
        dev = self.device
        return (self._frames(batch["frames"]), torch.as_tensor(batch["action"], device=dev),
                torch.as_tensor(batch["reward"], device=dev), torch.as_tensor(batch["discount"], device=dev),
                torch.as_tensor(batch["valid"], device=dev))

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, frames: np.ndarray, actions: np.ndarray, mean: bool) -> np.ndarray:
        """frames uint8 (H, 3, 64, 64) oldest first, actions (H-1, A) -> action in [-1, 1]."""
        features = self._encode(self._frames(frames))[None]
        x = SlacActor.history_input(features, torch.as_tensor(actions, device=self.device)[None])
        if mean:
            action = torch.tanh(self.actor.dist_params(x)[0])
        else:
            action, _ = self.actor.sample(x)
        return action[0].cpu().numpy()

    def episode_policy(self, mean: bool) -> HistoryPolicy:
        return HistoryPolicy(self, mean)

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        """Appendix C: a = tanh(u), u ~ N(0, 2^2)."""
        return np.tanh(rng.normal(0.0, self.cfg.random_action_scale, size=self.action_dim)).astype(np.float32)

    # ------------------------------------------------------------------ learning
    def pretrain(self, replay: Any, rng: np.random.Generator,
                 progress: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        """Appendix C: `pretrain_updates` model updates on the random episodes before learning."""
        n = self.cfg.pretrain_updates
        env_step = self.cfg.seed_steps * self.cfg.action_repeat
        every = max(1, min(1000, n // 10))
        if progress is not None:
            progress(env_step, {"message": f"pretraining the latent model: {n:,} updates on {len(replay):,} frames"})
        for i in range(1, n + 1):
            metrics = self.update_model(replay.sample_windows(self.cfg.model_batch_size, rng, self.cfg.sequence_length))
            if progress is not None and (i % every == 0 or i == n):
                progress(env_step, {"message": f"pretrain {i:,}/{n:,}  model loss {float(metrics['model_loss']):.1f}  "
                                               f"kl {float(metrics['kl']):.2f}"})

    def update(self, replay: Any, rng: np.random.Generator, step: int) -> dict[str, torch.Tensor]:
        """One model update, then one SAC update, on independent batches. Metrics stay detached tensors."""
        cfg = self.cfg
        metrics = self.update_model(replay.sample_windows(cfg.model_batch_size, rng, cfg.sequence_length))
        metrics.update(self.update_sac(self.sample_sac_batch(replay, rng)))
        return metrics

    # Each distinct frame of a SAC batch encoded once (False: every window position's frame, as
    # benchmarks/slac_update.py's reference-style mode does).
    distinct_frames = True

    def sample_sac_batch(self, replay: Any, rng: np.random.Generator) -> dict[str, Any]:
        """The SAC update's windows. Eager steps take each distinct frame once: the windows of a batch
        overlap (late in a run a few percent of the frames are repeats; early on over 30%), and padding
        repeats an episode's first frame. A CUDA graph needs fixed shapes and takes every window
        position's frame."""
        distinct = self.distinct_frames and not self.graphs
        return replay.sample_windows(self.cfg.batch_size, rng, self.cfg.sequence_length, distinct=distinct)

    def update_model(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self._model_step(*self._window(batch))

    def update_sac(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A `sample_windows` batch: with each distinct frame once ("frame_of"), each is encoded once;
        the same features, so the same update as from every window position's frame."""
        frames, *rest = self._window(batch)
        if "frame_of" not in batch:
            return self._sac_step(frames, *rest)
        frame_of = torch.as_tensor(batch["frame_of"], device=frames.device).flatten()
        if self.graphs:  # fixed shapes: every position's frame
            return self._sac_step(frames[frame_of], *rest)
        return self._update_sac(frames, *rest, frame_of)

    def _update_model(self, frames: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                      discount: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        pixels = self._prepare(frames)  # once: the encoder's input and the target
        b, t1 = action.shape[0], action.shape[1] + 1
        features = self._features(pixels).view(b, t1, -1)
        post = self.model.filter(features, action, valid)
        with self._autocast():
            decoded = self.model.decoder(post.z.flatten(0, 1))
        loss, metrics = self.model.loss(pixels, post, action, reward, valid, decoded, self.kernels.squared_error_sums)
        self.model_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.model_opt.step()
        return metrics

    def _update_sac(self, frames: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
                    valid: torch.Tensor, frame_of: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """frames: the windows' frames in order, or (with `frame_of`: window position -> row) the
        distinct ones."""
        cfg = self.cfg
        b, seq = action.shape[:2]
        h = cfg.history_length
        with torch.no_grad():
            features = self._encode_no_grad(frames)
            if frame_of is not None:
                features = features[frame_of]
            features = features.view(b, seq + 1, -1)
            z = self.model.filter(features, action, valid).z
        # The actor's history at the window's last step: frames seq-h+1..seq and the actions between them.
        history = SlacActor.history_input(features[:, seq + 1 - h:], action[:, seq + 1 - h:seq])
        metrics = self.update_critic(z[:, -2], action[:, -1], reward[:, -1], discount[:, -1], z[:, -1], history,
                                     valid[:, -1])
        metrics.update(self.update_actor_and_alpha(z[:, -1], history))
        self.kernels.soft_update(self.critic, self.critic_target, cfg.tau)
        return metrics

    def update_critic(self, z: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
                      next_z: torch.Tensor, next_history: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eqs. (8-9). `real` masks out windows whose last transition is padding (they end on an
        episode's first frame: there is no transition to back up)."""
        with torch.no_grad():
            next_action, next_log_pi = self.actor.sample(next_history)
            tq1, tq2 = self.critic_target.q(next_z, next_action)
            next_v = torch.min(tq1, tq2) - self.alpha * next_log_pi
            target = reward[:, None] + self.cfg.discount * discount[:, None] * next_v
        q1, q2 = self.critic.q(z, action)
        w = real.to(q1.dtype)[:, None]
        loss = 0.5 * (w * ((q1 - target).pow(2) + (q2 - target).pow(2))).sum() / w.sum().clamp(min=1.0)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        return {"critic_loss": loss.detach()}

    def update_actor_and_alpha(self, z: torch.Tensor, history: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. (10): at the window's last step, z_{tau+1} and pi(.|x_{1:tau+1}, a_{1:tau}) (both
        reference implementations use step tau instead); the history features carry no gradient (the
        encoder is the model's). Temperature: SAC's loss on log(alpha), as the authors' code."""
        pi, log_pi = self.actor.sample(history)
        q1, q2 = self.critic.q(z, pi)
        actor_loss = (self.alpha.detach() * log_pi - torch.min(q1, q2)).mean()
        self._descend(self.actor_opt, actor_loss)  # no gradients for the critic it runs through

        alpha_loss = -(self.log_alpha * (log_pi.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        return {"actor_loss": actor_loss.detach(), "alpha_loss": alpha_loss.detach(), "alpha": self.alpha.detach(),
                "entropy": -log_pi.detach().mean()}
