"""SAC+AE (Yarats et al. 2019), and its baselines SAC:pixel and SAC:state, in one agent.

- sac-ae:    SAC on a conv encoder + a regularized deterministic autoencoder (RAE, appendix B.5).
- sac-pixel: the same without the decoder (the encoder learns from the critic alone).
- sac-state: SAC on the proprioceptive state (identity encoder), the papers' upper bound.

Gradient routing is the paper's (B.2): the actor and critic encoders share their conv trunk; only
the critic and the decoder update it (the actor's gradients stop at the trunk); the actor keeps its
own fc + LayerNorm head. The update order is the reference implementation's: critic, then (every
`actor_update_freq`) actor and alpha, then (every `critic_target_update_freq`) target soft updates,
then the decoder.

Same math, less work: after the critic step the actor update and the decoder update both encode the
same `obs` with the same trunk weights, so the trunk runs once (with grad, for the decoder) and the
actor uses that output detached; each batch tensor is converted to float once for all its passes.
The backend's kernels (`cfg.backend`, train.backend.kernels) run the layers, Adam and the
reconstruction loss: plain PyTorch, or train.fast's CPU kernels (the same math).
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.agent_base import SacFamilyAgent
from train.backend import kernels
from train.config import SacConfig
from train.decoder import PixelDecoder
from train.encoder import ConvTrunk, IdentityEncoder, PixelEncoder
from train.reconstruction import noise_seeds
from train.torch_utils import weight_init


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    """3-layer MLP with ReLUs between layers (appendix B.1)."""
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


class Actor(nn.Module):
    """Tanh-squashed diagonal Gaussian; log-std squashed into [log_std_min, log_std_max] (table 4)."""

    def __init__(self, encoder: nn.Module, action_dim: int, hidden_dim: int, log_std_min: float,
                 log_std_max: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.trunk = _mlp(encoder.feature_dim, hidden_dim, 2 * action_dim)

    def dist_params(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.trunk(feature).chunk(2, dim=-1)
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        return mu, log_std

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic (evaluation / exported) action: tanh(mean)."""
        mu, _ = self.dist_params(self.encoder(obs))
        return torch.tanh(mu)

    def sample(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised squashed sample and its log-probability."""
        mu, log_std = self.dist_params(feature)
        noise = torch.randn_like(mu)
        pre = mu + noise * log_std.exp()
        log_pi = (-0.5 * noise.pow(2) - log_std).sum(-1, keepdim=True) - 0.5 * math.log(2 * math.pi) * mu.size(-1)
        pi = torch.tanh(pre)
        log_pi = log_pi - torch.log(F.relu(1 - pi.pow(2)) + 1e-6).sum(-1, keepdim=True)
        return pi, log_pi


class Critic(nn.Module):
    """Double Q (appendix B.1): two Q heads on the encoder feature concatenated with the action."""

    def __init__(self, encoder: nn.Module, action_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.q1 = _mlp(encoder.feature_dim + action_dim, hidden_dim, 1)
        self.q2 = _mlp(encoder.feature_dim + action_dim, hidden_dim, 1)

    def q(self, feature: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([feature, action], dim=-1)
        return self.q1(x), self.q2(x)

    def heads(self) -> Iterator[nn.Module]:
        yield self.q1
        yield self.q2


class _StackPolicy:
    """SAC acts on the environment's frame stack, so an episode needs no history of its own."""

    def __init__(self, agent: "SacAgent", mean: bool) -> None:
        self.agent, self.mean = agent, mean

    def reset(self, obs: np.ndarray) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.agent.act(obs, self.mean)

    def record(self, obs: np.ndarray, action: np.ndarray) -> None:
        pass


class SacAgent(SacFamilyAgent):
    """SAC+AE / SAC:pixel / SAC:state: networks, optimizers and the update rule."""

    metric_names = ["critic_loss", "actor_loss", "alpha_loss", "alpha", "entropy", "ae_loss", "rec_loss"]

    def __init__(self, cfg: SacConfig, obs_shape: tuple[int, ...], action_dim: int, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.action_dim = action_dim
        self.pixels = cfg.algo != "sac-state"
        self.kernels = kernels(cfg.backend, device)
        if self.pixels:
            trunk = ConvTrunk(obs_shape[0], cfg.num_conv_layers, cfg.num_filters)
            # One trunk object for both encoders: tied conv weights (B.2).
            critic_enc: nn.Module = PixelEncoder(obs_shape, cfg.feature_dim, cfg.num_conv_layers, cfg.num_filters,
                                                 trunk=trunk)
            actor_enc: nn.Module = PixelEncoder(obs_shape, cfg.feature_dim, cfg.num_conv_layers, cfg.num_filters,
                                                trunk=trunk)
        else:
            critic_enc = IdentityEncoder(obs_shape)
            actor_enc = IdentityEncoder(obs_shape)
        self.actor = Actor(actor_enc, action_dim, cfg.hidden_dim, cfg.actor_log_std_min, cfg.actor_log_std_max)
        self.critic = Critic(critic_enc, action_dim, cfg.hidden_dim)
        self.actor.apply(weight_init)
        self.critic.apply(weight_init)
        # The actor's head must start from its own init; the tied trunk is the critic's (same object).
        self.critic_target = copy.deepcopy(self.critic)
        self.decoder: PixelDecoder | None = None
        if cfg.algo == "sac-ae":
            self.decoder = PixelDecoder(obs_shape, cfg.feature_dim, cfg.num_conv_layers, cfg.num_filters)
            self.decoder.apply(weight_init)
        for m in self.modules().values():
            self.kernels.accelerate(m.to(device))
        self.log_alpha = torch.tensor(math.log(cfg.init_temperature), device=device, requires_grad=True)
        self.target_entropy = -float(action_dim)

        opt = self.kernels.adam
        trunk_ids = {id(p) for p in critic_enc.trunk.parameters()} if self.pixels else set()
        actor_params = [p for p in self.actor.parameters() if id(p) not in trunk_ids]  # actor never moves the trunk
        self.actor_opt = opt(actor_params, cfg.actor_lr, (cfg.actor_beta, 0.999))
        self.critic_opt = opt(self.critic.parameters(), cfg.critic_lr, (cfg.critic_beta, 0.999))
        self.alpha_opt = opt([self.log_alpha], cfg.alpha_lr, (cfg.alpha_beta, 0.999))
        self.encoder_opt = self.decoder_opt = None
        if self.decoder is not None:
            self.encoder_opt = opt(critic_enc.parameters(), cfg.encoder_lr, (0.9, 0.999))
            self.decoder_opt = opt(self.decoder.parameters(), cfg.decoder_lr, (0.9, 0.999),
                                   weight_decay=cfg.decoder_weight_lambda)  # lambda_theta (B.5)
        self.train_mode(True)

    # ------------------------------------------------------------------ bookkeeping
    def modules(self) -> dict[str, nn.Module]:
        mods = {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target}
        if self.decoder is not None:
            mods["decoder"] = self.decoder
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "alpha_opt": self.alpha_opt}
        if self.decoder_opt is not None and self.encoder_opt is not None:
            opts["encoder_opt"] = self.encoder_opt
            opts["decoder_opt"] = self.decoder_opt
        return opts

    def _obs(self, obs: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(obs, device=self.device)
        return self.kernels.frames(t) if self.pixels else t

    def prepare(self, obs: torch.Tensor) -> torch.Tensor:
        """Observations as the networks take them (pixels as floats, `ConvTrunk.prepare`): what the
        `update_*` methods expect, so that a batch is converted once for all its passes. Under bf16
        autocast pixels go to bf16 here once, the cast the first conv would otherwise make on every
        pass."""
        x = self.critic.encoder.prepare(obs)
        return x.to(torch.bfloat16) if self.cfg.bf16 and self.pixels else x

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: np.ndarray, mean: bool) -> np.ndarray:
        o = self._obs(obs[None])
        feature = self.actor.encoder(o)
        if mean:
            mu, _ = self.actor.dist_params(feature)
            action = torch.tanh(mu)
        else:
            action, _ = self.actor.sample(feature)
        return action[0].float().cpu().numpy()

    def episode_policy(self, mean: bool) -> _StackPolicy:
        return _StackPolicy(self, mean)

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        """Seed-step policy (B.3): uniform in [-1, 1]."""
        return rng.uniform(-1.0, 1.0, size=self.action_dim).astype(np.float32)

    # ------------------------------------------------------------------ learning
    def update(self, replay: Any, rng: np.random.Generator, step: int,
               section: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None,
               ) -> dict[str, torch.Tensor]:
        """One gradient step on a fresh batch. Metrics stay detached tensors: no host sync on a GPU.
        `section(name)` (benchmarks) wraps the sample/critic/actor/target/decoder phases."""
        cfg = self.cfg
        phase = section or (lambda name: contextlib.nullcontext())
        with phase("sample"):
            batch = replay.sample(cfg.batch_size, rng, stack=cfg.frame_stack if self.pixels else 1)
            obs, next_obs = self._obs(batch["obs"]), self._obs(batch["next_obs"])
            action = torch.as_tensor(batch["action"], device=self.device)
            reward = torch.as_tensor(batch["reward"], device=self.device).unsqueeze(-1)
            discount = torch.as_tensor(batch["discount"], device=self.device).unsqueeze(-1) * cfg.discount
            x, next_x = self.prepare(obs), self.prepare(next_obs)
        with phase("critic"):
            metrics = self.update_critic(x, action, reward, discount, next_x)
        trunk_out: torch.Tensor | None = None
        decode = self.decoder is not None and step % cfg.decoder_update_freq == 0
        if decode:
            with phase("decoder"), self._autocast():
                # Post-critic-step weights: the actor's and the decoder's heads share this pass.
                trunk_out = self.critic.encoder.trunk.run(x)
        if step % cfg.actor_update_freq == 0:
            with phase("actor"):
                metrics.update(self.update_actor_and_alpha(x, trunk_out))
        if step % cfg.critic_target_update_freq == 0:
            with phase("target"):
                for src, tgt in zip(self.critic.heads(), self.critic_target.heads()):
                    self.kernels.soft_update(src, tgt, cfg.critic_tau)
                self.kernels.soft_update(self.critic.encoder, self.critic_target.encoder, cfg.encoder_tau)
        if trunk_out is not None:
            with phase("decoder"):
                metrics.update(self.update_decoder(obs, trunk_out, rng))
        return metrics

    def update_critic(self, x: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                      discount: torch.Tensor, next_x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x, next_x: `prepare`d observations."""
        with torch.no_grad(), self._autocast():
            next_action, next_log_pi = self.actor.sample(self.actor.encoder.encode(next_x))
            tq1, tq2 = self.critic_target.q(self.critic_target.encoder.encode(next_x), next_action)
            target_v = torch.min(tq1, tq2).float() - self.alpha.detach() * next_log_pi.float()
            target_q = reward + discount * target_v
        with self._autocast():
            q1, q2 = self.critic.q(self.critic.encoder.encode(x), action)
        loss = F.mse_loss(q1.float(), target_q) + F.mse_loss(q2.float(), target_q)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        return {"critic_loss": loss.detach()}

    def update_actor_and_alpha(self, x: torch.Tensor, trunk_out: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """x: `prepare`d observations; trunk_out: the trunk's output on them, if already computed."""
        encoder = self.critic.encoder
        with self._autocast():
            # The actor never updates the trunk (B.2): its gradients stop at the trunk output.
            h = (trunk_out if trunk_out is not None else encoder.trunk.run(x)).detach()
            pi, log_pi = self.actor.sample(self.actor.encoder.head(h))
            q1, q2 = self.critic.q(self.critic.encoder.head(h), pi)
        log_pi = log_pi.float()
        actor_loss = (self.alpha.detach() * log_pi - torch.min(q1, q2).float()).mean()
        self._descend(self.actor_opt, actor_loss)  # no gradients for the critic it runs through

        alpha_loss = (self.alpha * (-log_pi - self.target_entropy).detach()).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        return {"actor_loss": actor_loss.detach(), "alpha_loss": alpha_loss.detach(),
                "alpha": self.alpha.detach(), "entropy": -log_pi.detach().mean()}

    def update_decoder(self, obs: torch.Tensor, trunk_out: torch.Tensor,
                       rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """RAE loss (B.5): 5-bit reconstruction + lambda_z * latent L2; lambda_theta is Adam weight decay.
        obs: the raw frames (the reconstruction target); trunk_out: the trunk's output on them; rng
        seeds the dequantisation noise (`noise_seeds`)."""
        assert self.decoder is not None and self.encoder_opt is not None and self.decoder_opt is not None
        with self._autocast():
            z = self.critic.encoder.head(trunk_out)
            rec = self.decoder(z)
        rec_loss = self.kernels.reconstruction_loss(rec.float(), obs, self.cfg.reconstruction_bits, noise_seeds(rng))
        # As the reference implementation: 0.5 * ||z||^2 per sample, averaged over the batch.
        latent_loss = (0.5 * z.float().pow(2).sum(-1)).mean()
        loss = rec_loss + self.cfg.decoder_latent_lambda * latent_loss
        self.encoder_opt.zero_grad(set_to_none=True)
        self.decoder_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.encoder_opt.step()
        self.decoder_opt.step()
        return {"ae_loss": loss.detach(), "rec_loss": rec_loss.detach()}
