"""SAC+AE pixel decoder (appendix B.2): Linear then 4 transposed convs, 32 filters 3x3, stride 1
except the last (stride 2), ReLU after every layer but the last."""

from __future__ import annotations

import torch
from torch import nn

from train.config import conv_output_size
from train.layers import LinearToMap


class PixelDecoder(nn.Module):
    def __init__(self, obs_shape: tuple[int, ...], feature_dim: int, num_layers: int = 4,
                 num_filters: int = 32) -> None:
        super().__init__()
        size = conv_output_size(obs_shape[-1], num_layers)
        self.fc = LinearToMap(feature_dim, (num_filters, size, size))
        layers: list[nn.Module] = []
        for _ in range(num_layers - 1):
            layers += [nn.ConvTranspose2d(num_filters, num_filters, 3, stride=1), nn.ReLU()]
        # Odd input sizes (84 -> 41 after the stride-2 conv) need output_padding to map back exactly.
        output_padding = (obs_shape[-1] - 3) % 2
        layers.append(nn.ConvTranspose2d(num_filters, obs_shape[0], 3, stride=2, output_padding=output_padding))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconvs(torch.relu(self.fc(z)))
