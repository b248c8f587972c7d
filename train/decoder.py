"""SAC+AE pixel decoder (appendix B.2): Linear then 4 transposed convs, 32 filters 3x3, stride 1
except the last (stride 2), ReLU after every layer but the last."""

from __future__ import annotations

import torch
from torch import nn

from train.config import conv_output_size
from train.layers import ConvTranspose2dConvGrad, LinearToMap, run_conv_stack


class PixelDecoder(nn.Module):
    """`conv_grad` runs each transposed conv's backward as convolutions (train.layers): the same
    function and gradients, ~25% faster decoder updates on CPU."""

    def __init__(self, obs_shape: tuple[int, ...], feature_dim: int, num_layers: int = 4,
                 num_filters: int = 32, conv_grad: bool = True, inplace: bool = True) -> None:
        super().__init__()
        deconv = ConvTranspose2dConvGrad if conv_grad else nn.ConvTranspose2d
        size = conv_output_size(obs_shape[-1], num_layers)
        self.fc = LinearToMap(feature_dim, (num_filters, size, size))
        layers: list[nn.Module] = []
        for _ in range(num_layers - 1):  # in-place ReLUs (`inplace`): no transposed conv's backward needs its output
            layers += [deconv(num_filters, num_filters, 3, stride=1), nn.ReLU(inplace)]
        # Odd input sizes (84 -> 41 after the stride-2 conv) need output_padding to map back exactly.
        output_padding = (obs_shape[-1] - 3) % 2
        layers.append(deconv(num_filters, obs_shape[0], 3, stride=2, output_padding=output_padding))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # fc's outputs come out in the transposed convs' memory layout (no NCHW -> channels_last copy);
        # not relu'd in place: an in-place op on that permuted view would cost a copy in the backward.
        # Each transposed conv and its ReLU run as one op on the CPU fast path (run_conv_stack).
        return run_conv_stack(self.deconvs, torch.relu(self.fc(z)))
