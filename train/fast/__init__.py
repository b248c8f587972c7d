"""Backend fast-cpu: every CPU kernel and every private torch API the agents use, in one place.

`config.backend` picks the kernels (train.backend.kernels): `plain` is straightforward PyTorch
(nn.Conv2d, nn.Linear, torch.optim.Adam, F.mse_loss) and never imports this package; `fast-cpu`
(`auto` on a CPU) is FastCpuKernels: the same math, faster on a CPU.

- layers: `accelerate` swaps in layers with the same parameters (so checkpoints and exports do not
  depend on the backend) laid out channels_last: convolutions fused with their activation (oneDNN
  post-ops), transposed-conv gradients as convolutions, sub-pixel and GEMM forms of the layers that
  have them, linear layers reading and writing channels_last maps in place;
- adam: torch's fused Adam kernel without its layout copies, one-call soft updates;
- reconstruction: SAC+AE's reconstruction loss in one pass per sample, in parallel threads;
- support: feature tests for each private API; a kernel whose API is missing runs the plain code.
"""

from __future__ import annotations

import torch

from train.fast import adam as _adam
from train.fast import layers as _layers


class FastCpuKernels:
    """train.backend.Kernels' interface with this package's kernels."""

    name = "fast-cpu"

    accelerate = staticmethod(_layers.accelerate)
    adam = staticmethod(_adam.adam)
    soft_update = staticmethod(_adam.soft_update)
    squared_error_sums = staticmethod(_layers.squared_error_sums)

    @staticmethod
    def frames(frames: torch.Tensor) -> torch.Tensor:
        return _layers.channels_last_copy(frames)

    @staticmethod
    def reconstruction_loss(rec: torch.Tensor, obs: torch.Tensor, bits: int, seeds: list[int]) -> torch.Tensor:
        from train.fast.reconstruction import reconstruction_loss

        return reconstruction_loss(rec, obs, bits, seeds)
