"""SAC+AE pixel encoder (appendix B.2) and the identity encoder used by SAC:state."""

from __future__ import annotations

import torch
from torch import nn

from train.config import conv_output_size
from train.layers import FlattenLinear, unit_pixels


class ConvTrunk(nn.Module):
    """4 conv layers, 32 filters 3x3, stride 2 then 1, ReLU after each (appendix B.2).

    Takes uint8 (or 0..255 float) stacked frames (B, C, H, W) and scales them by 1/255 (B.6).
    This module is the one the actor and critic share (tied weights). `prepare` and `run` split
    that in two so an update converts each batch once and reuses it for every pass over it.
    """

    def __init__(self, in_channels: int, num_layers: int = 4, num_filters: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_filters, 3, stride=2), nn.ReLU()]
        for _ in range(num_layers - 1):
            layers += [nn.Conv2d(num_filters, num_filters, 3, stride=1), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def prepare(self, obs: torch.Tensor) -> torch.Tensor:
        """frames -> what `run` takes: floats in [0, 1] (B.6)."""
        return unit_pixels(obs)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The conv layers on a `prepare`d input."""
        return self.net(x)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.run(self.prepare(obs))


class Encoder(nn.Module):
    """Trunk -> head. `prepare(obs)` (raw observations -> network input) is split from `encode(x)`
    so an update converts a batch once for all its passes; `head(h)` applies the head to trunk
    output, so one trunk pass can serve several heads (the actor's and the critic's encoders share
    the trunk but keep their own heads)."""

    trunk: nn.Module  # with prepare(obs) and run(x)

    def prepare(self, obs: torch.Tensor) -> torch.Tensor:
        return self.trunk.prepare(obs)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk.run(x))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encode(self.prepare(obs))


class PixelEncoder(Encoder):
    """Conv trunk -> Linear(feature_dim) -> LayerNorm -> tanh (appendix B.2)."""

    def __init__(self, obs_shape: tuple[int, ...], feature_dim: int, num_layers: int = 4,
                 num_filters: int = 32, trunk: ConvTrunk | None = None) -> None:
        super().__init__()
        self.trunk = trunk or ConvTrunk(obs_shape[0], num_layers, num_filters)
        out = conv_output_size(obs_shape[-1], num_layers)
        self.fc = FlattenLinear(num_filters * out * out, feature_dim)
        self.ln = nn.LayerNorm(feature_dim)
        self.feature_dim = feature_dim

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.ln(self.fc(h)))


class StateTrunk(nn.Module):
    """SAC:state's trunk: the float state vector as it is."""

    @staticmethod
    def prepare(obs: torch.Tensor) -> torch.Tensor:
        return obs.float()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.prepare(obs)


class IdentityEncoder(Encoder):
    """SAC:state: the proprioceptive vector is the feature."""

    def __init__(self, obs_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.trunk = StateTrunk()
        self.feature_dim = obs_shape[0]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return h
