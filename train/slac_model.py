"""SLAC's sequential latent variable model (Lee et al. 2020, section 5 and appendix B).

    z_t = [z1_t, z2_t],  z1 in R^32, z2 in R^256
    generative:  p(z1_1) = N(0, I)       p(z2_1 | z1_1)
                 p(z1_{t+1} | z2_t, a_t)  p(z2_{t+1} | z1_{t+1}, z2_t, a_t)
                 p(x_t | z_t)             p(r_t | z_t, a_t, z_{t+1})
    inference:   q(z1_1 | x_1)            q(z1_{t+1} | x_{t+1}, z2_t, a_t)
                 q(z2 | ...) = p(z2 | ...)   (so the KL of eq. 7 is over z1 only, eqs. 23-27)

Every conditional is two fully connected layers (leaky ReLU) and a Gaussian output layer whose
std is softplus of a pre-activation whose gradient is clipped element-wise to [-10, 10] in the
backward pass (appendix B). The conv encoder (shared by both z1 posteriors and the actor) and the
transposed-conv decoder are appendix B's; the decoder's pixel variance is fixed (sigma^2).

Episode starts inside a window. Windows are padded by the contract's rule (the episode's first
frame repeated, zero actions before it); the padded transitions are not data. As the authors' code
does at an episode's first step, the filter restarts there from q(z1|x) with the N(0, I) prior, and
the model objective counts each real frame and each real transition once (padding copies weigh 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from train.layers import squared_error_sums, unit_pixels

# The authors' TensorFlow code uses tf.nn.leaky_relu (slope 0.2); the paper does not give a slope.
LEAKY_SLOPE = 0.2
# The authors' code adds 1e-5 to every softplus std (a floor that keeps log-probs and KLs finite).
STD_FLOOR = 1e-5
LOG_2PI = math.log(2.0 * math.pi)


def _leaky() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAKY_SLOPE)


class _ClipGrad(torch.autograd.Function):
    """Identity forward; the incoming gradient clamped element-wise to [-bound, bound] backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.bound = bound  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        bound = ctx.bound  # type: ignore[attr-defined]
        return grad.clamp(-bound, bound), None


def clip_grad(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _ClipGrad.apply(x, bound)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """Element-wise log N(x; mean, std^2)."""
    log_std = math.log(std) if isinstance(std, float) else std.log()
    return -0.5 * ((x - mean) / std).pow(2) - log_std - 0.5 * LOG_2PI


def gaussian_kl(mean_q: torch.Tensor, std_q: torch.Tensor, mean_p: torch.Tensor, std_p: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(N(mean_q, std_q^2) || N(mean_p, std_p^2)), analytic (the authors' kl_analytic)."""
    return (std_p / std_q).log() + (std_q.pow(2) + (mean_q - mean_p).pow(2)) / (2.0 * std_p.pow(2)) - 0.5


class Gaussian(nn.Module):
    """Appendix B: two fully connected layers (leaky ReLU), then a linear mean and a softplus std."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, std_grad_clip: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(LEAKY_SLOPE),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(LEAKY_SLOPE),
                                 nn.Linear(hidden, 2 * out_dim))
        self.std_grad_clip = std_grad_clip

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(inputs, dim=-1) if len(inputs) > 1 else inputs[0]
        mean, pre_std = self.net(x).chunk(2, dim=-1)
        return mean, F.softplus(clip_grad(pre_std, self.std_grad_clip)) + STD_FLOOR


def up_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 2) -> nn.ConvTranspose2d:
    """A transposed conv with output = stride x input: odd kernel, padding (k-1)/2, output padding s-1."""
    assert kernel_size % 2 == 1, "odd kernels only"
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, stride - 1)


class FrameEncoder(nn.Module):
    """Appendix B: 5 convs (32 5x5, 64 3x3, 128 3x3, 256 3x3, 256 4x4; stride 2 but the last),
    leaky ReLU after each. uint8 frames (N, 3, 64, 64) -> features (N, 8*base_depth).

    One frame in, one feature vector out: the actor's history input and the exported stateful
    graph are built from per-frame features. Pixels are scaled to [0, 1] (x_t in [0, 1]^64x64x3) by
    `prepare`, split from `run` so an update converts its frames once, for the encoder and the
    image likelihood alike.
    """

    def __init__(self, base_depth: int = 32) -> None:
        super().__init__()
        d = base_depth
        self.net = nn.Sequential(
            nn.Conv2d(3, d, 5, 2, 2), _leaky(),  # 64 -> 32
            nn.Conv2d(d, 2 * d, 3, 2, 1), _leaky(),  # -> 16
            nn.Conv2d(2 * d, 4 * d, 3, 2, 1), _leaky(),  # -> 8
            nn.Conv2d(4 * d, 8 * d, 3, 2, 1), _leaky(),  # -> 4
            nn.Conv2d(8 * d, 8 * d, 4), _leaky(),  # -> 1
        )
        self.feature_dim = 8 * d

    prepare = staticmethod(unit_pixels)  # uint8 frames -> float32 in [0, 1]

    def run(self, pixels: torch.Tensor) -> torch.Tensor:
        """`prepare`d frames (N, 3, 64, 64) -> features (N, F)."""
        return self.net(pixels).flatten(1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.run(self.prepare(frames))


class FrameDecoder(nn.Module):
    """Appendix B: 5 transposed convs (256 4x4, 128 3x3, 64 3x3, 32 3x3, 3 5x5; stride 2 but the
    first), leaky ReLU between them. The mean of p(x_t | z_t) in [0, 1] pixel units.

    The paper leaves the output layer linear ("all the layers, except for the output layers, use
    leaky ReLU"); both reference implementations also put a leaky ReLU after the last layer.
    """

    def __init__(self, latent_dim: int, base_depth: int = 32) -> None:
        super().__init__()
        d = base_depth
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 8 * d, 4), _leaky(),  # 1 -> 4
            up_conv(8 * d, 4 * d, 3), _leaky(),  # -> 8
            up_conv(4 * d, 2 * d, 3), _leaky(),  # -> 16
            up_conv(2 * d, d, 3), _leaky(),  # -> 32
            up_conv(d, 3, 5),  # -> 64
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


@dataclass
class Filtered:
    """Samples of the filtering posterior q(z_{1:T+1} | x_{1:T+1}, a_{1:T}), time on axis 1."""

    z1_mean: torch.Tensor  # (B, T+1, z1)
    z1_std: torch.Tensor
    z1: torch.Tensor
    z2: torch.Tensor  # (B, T+1, z2)
    restart: torch.Tensor  # (B, T+1) bool: filtered from q(z1|x) with prior N(0, I) at this position

    @property
    def z(self) -> torch.Tensor:
        return torch.cat([self.z1, self.z2], dim=-1)


def _sample(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return mean + std * torch.randn_like(std)


def restart_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) real transitions -> (B, T+1) positions where the filter (re)starts: the window's
    first frame and every frame not reached by a real transition (padding and the episode start)."""
    first = torch.ones_like(valid[:, :1])
    return torch.cat([first, ~valid], dim=1)


class LatentModel(nn.Module):
    def __init__(self, action_dim: int, z1_dim: int = 32, z2_dim: int = 256, hidden: int = 256,
                 base_depth: int = 32, decoder_variance: float = 0.1, std_grad_clip: float = 10.0) -> None:
        super().__init__()
        a, g = action_dim, std_grad_clip
        self.encoder = FrameEncoder(base_depth)
        f = self.encoder.feature_dim
        self.z1_first_posterior = Gaussian(f, z1_dim, hidden, g)  # q(z1_1 | x_1)
        self.z1_posterior = Gaussian(f + z2_dim + a, z1_dim, hidden, g)  # q(z1_{t+1} | x_{t+1}, z2_t, a_t)
        self.z1_prior = Gaussian(z2_dim + a, z1_dim, hidden, g)  # p(z1_{t+1} | z2_t, a_t)
        self.z2_first = Gaussian(z1_dim, z2_dim, hidden, g)  # p(z2_1 | z1_1) = q(z2_1 | z1_1)
        self.z2_next = Gaussian(z1_dim + z2_dim + a, z2_dim, hidden, g)  # p = q(z2_{t+1} | z1_{t+1}, z2_t, a_t)
        self.reward = Gaussian(2 * (z1_dim + z2_dim) + a, 1, hidden, g)  # p(r_t | z_t, a_t, z_{t+1})
        self.decoder = FrameDecoder(z1_dim + z2_dim, base_depth)
        self.pixel_std = math.sqrt(decoder_variance)
        self.z1_dim, self.z2_dim = z1_dim, z2_dim

    def filter(self, features: torch.Tensor, actions: torch.Tensor, valid: torch.Tensor | None = None) -> Filtered:
        """Sample z_{1:T+1} from the filtering posterior (reparameterised) given per-frame features
        (B, T+1, F), actions (B, T, A) and which transitions are real (B, T) (None: all)."""
        b, t1 = features.shape[:2]
        if valid is None:
            valid = torch.ones(b, t1 - 1, dtype=torch.bool, device=features.device)
        restart = restart_mask(valid)
        mean, std = self.z1_first_posterior(features[:, 0])
        z1 = _sample(mean, std)
        z2 = _sample(*self.z2_first(z1))
        steps = [(mean, std, z1, z2)]
        for t in range(1, t1):
            a = actions[:, t - 1]
            mean, std = self.z1_posterior(features[:, t], z2, a)
            r = restart[:, t, None]  # a restart: q(z1|x) and p(z2|z1), as at the first step
            m0, s0 = self.z1_first_posterior(features[:, t])
            mean, std = torch.where(r, m0, mean), torch.where(r, s0, std)
            z1 = _sample(mean, std)
            z2_mean, z2_std = self.z2_next(z1, z2, a)
            m0, s0 = self.z2_first(z1)
            z2_mean, z2_std = torch.where(r, m0, z2_mean), torch.where(r, s0, z2_std)
            z2 = _sample(z2_mean, z2_std)
            steps.append((mean, std, z1, z2))
        z1_mean, z1_std, z1s, z2s = (torch.stack(x, dim=1) for x in zip(*steps))
        return Filtered(z1_mean, z1_std, z1s, z2s, restart)

    def loss(self, pixels: torch.Tensor, post: Filtered, actions: torch.Tensor, rewards: torch.Tensor,
             valid: torch.Tensor, decoded: torch.Tensor | None = None,
             sq_err_sums: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = squared_error_sums,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. (7): -[sum_t log p(x_t|z_t) + log p(r_t|z_t,a_t,z_{t+1}) - KL(q(z1_t|.) || p(z1_t|.))],
        summed over time, averaged over the batch.

        pixels: the (B*(T+1), 3, 64, 64) targets in [0, 1] (`FrameEncoder.prepare`, any memory
        format); `decoded`: the decoder's output for post.z if already computed (e.g. under autocast);
        `sq_err_sums`: the backend's per-frame squared error sums (train.layers.squared_error_sums).
        """
        b, t1 = post.z1.shape[:2]
        prior_mean, prior_std = self.z1_prior(post.z2[:, :-1], actions)
        zeros, ones = torch.zeros_like(post.z1_mean[:, :1]), torch.ones_like(post.z1_std[:, :1])
        prior_mean, prior_std = torch.cat([zeros, prior_mean], 1), torch.cat([ones, prior_std], 1)
        r = post.restart[..., None]
        prior_mean, prior_std = torch.where(r, 0.0, prior_mean), torch.where(r, 1.0, prior_std)
        kl = gaussian_kl(post.z1_mean, post.z1_std, prior_mean, prior_std).sum(-1)  # (B, T+1)

        z = post.z
        if decoded is None:
            decoded = self.decoder(z.flatten(0, 1))
        # log N(x; decoded, sigma^2) summed over a frame's pixels, in closed form over the squared error.
        sq_err = sq_err_sums(decoded.float(), pixels).view(b, t1)
        log_norm = pixels[0].numel() * (math.log(self.pixel_std) + 0.5 * LOG_2PI)
        image_ll = -0.5 * sq_err / self.pixel_std**2 - log_norm

        reward_mean, reward_std = self.reward(z[:, :-1], actions, z[:, 1:])
        reward_ll = gaussian_log_prob(rewards, reward_mean.squeeze(-1), reward_std.squeeze(-1))  # (B, T)

        # A frame counts once: padding copies (frames before a not-real transition) weigh 0.
        frame_w = torch.cat([valid, torch.ones_like(valid[:, :1])], 1).to(kl.dtype)
        step_w = valid.to(reward_ll.dtype)
        kl_sum = (kl * frame_w).sum(1)
        image_nll = -(image_ll * frame_w).sum(1)
        reward_nll = -(reward_ll * step_w).sum(1)
        loss = (image_nll + reward_nll + kl_sum).mean()
        return loss, {"model_loss": loss.detach(), "kl": kl_sum.mean().detach(),
                      "image_nll": image_nll.mean().detach(), "reward_nll": reward_nll.mean().detach()}
