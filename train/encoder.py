"""SAC+AE pixel encoder (appendix B.2) and the identity encoder used by SAC:state."""

from __future__ import annotations

import torch
from torch import nn


def conv_output_size(image_size: int, num_layers: int) -> int:
    """Spatial size after the trunk: 3x3 convs, stride 2 first then stride 1, no padding."""
    size = (image_size - 3) // 2 + 1
    return size - 2 * (num_layers - 1)


class ConvTrunk(nn.Module):
    """4 conv layers, 32 filters 3x3, stride 2 then 1, ReLU after each (appendix B.2).

    Takes uint8 (or 0..255 float) stacked frames (B, C, H, W) and scales them by 1/255 (B.6).
    This module is the one the actor and critic share (tied weights).
    """

    def __init__(self, in_channels: int, num_layers: int = 4, num_filters: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_filters, 3, stride=2), nn.ReLU()]
        for _ in range(num_layers - 1):
            layers += [nn.Conv2d(num_filters, num_filters, 3, stride=1), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float() / 255.0)


class PixelEncoder(nn.Module):
    """Conv trunk -> Linear(feature_dim) -> LayerNorm -> tanh (appendix B.2).

    `head(h)` applies fc/LN/tanh to trunk output, so one trunk pass can serve several heads (the
    actor's and the critic's encoders share the trunk but keep their own heads).
    """

    def __init__(self, obs_shape: tuple[int, ...], feature_dim: int, num_layers: int = 4,
                 num_filters: int = 32, trunk: ConvTrunk | None = None) -> None:
        super().__init__()
        self.trunk = trunk or ConvTrunk(obs_shape[0], num_layers, num_filters)
        out = conv_output_size(obs_shape[-1], num_layers)
        self.fc = nn.Linear(num_filters * out * out, feature_dim)
        self.ln = nn.LayerNorm(feature_dim)
        self.feature_dim = feature_dim

    def head(self, h: torch.Tensor) -> torch.Tensor:
        # reshape (not view): a channels_last trunk output is flattened in the logical NCHW order.
        return torch.tanh(self.ln(self.fc(h.reshape(h.size(0), -1))))

    def forward(self, obs: torch.Tensor, detach_trunk: bool = False) -> torch.Tensor:
        h = self.trunk(obs)
        return self.head(h.detach() if detach_trunk else h)


class IdentityEncoder(nn.Module):
    """SAC:state: the proprioceptive vector is the feature."""

    def __init__(self, obs_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.feature_dim = obs_shape[0]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def trunk(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.float()

    def forward(self, obs: torch.Tensor, detach_trunk: bool = False) -> torch.Tensor:
        return obs.float()
