"""Plain layers the agents are built from (backend `plain`; `fast-cpu` swaps its kernels in for
them, train.fast, with the same parameters): linear layers from and to conv feature maps, the pixel
scaling both encoders start with, and the per-frame squared error of SLAC's image likelihood."""

from __future__ import annotations

import math

import torch
from torch import nn


class FlattenLinear(nn.Linear):
    """nn.Linear(C*H*W, out) on (N, C, H, W) maps, flattened (SAC+AE's encoder fc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x.flatten(1))


class LinearToMap(nn.Linear):
    """nn.Linear(in, C*H*W) whose outputs are (N, C, H, W) maps (SAC+AE's decoder fc)."""

    def __init__(self, in_features: int, out_shape: tuple[int, int, int]) -> None:
        super().__init__(in_features, math.prod(out_shape))
        self.out_shape = tuple(out_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(z).view(len(z), *self.out_shape)


def unit_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) frames -> float32 in [0, 1], a new tensor in the frames' memory
    layout: both papers' network input (SAC+AE B.6, SLAC's x_t in [0, 1])."""
    return frames.to(torch.float32, copy=True).div_(255.0)


def squared_error_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) sums over each sample of (a - b)^2."""
    return (a - b).pow(2).flatten(1).sum(1)
