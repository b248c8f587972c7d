"""The kernels a run uses (`config.backend`): `plain` is straightforward PyTorch, the layers as the
papers' appendices describe them; `fast-cpu` (`auto` on a CPU) is train.fast's CPU kernels, the same
math with the same parameters. train.fast is imported only for fast-cpu."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from train import layers, reconstruction, torch_utils


class Kernels:
    """Backend `plain`: straightforward PyTorch. train.fast.FastCpuKernels has each of these as its
    CPU kernel (the same math)."""

    name = "plain"

    def accelerate(self, module: nn.Module) -> nn.Module:
        """The module with this backend's layers (plain: as built)."""
        return module

    def frames(self, frames: torch.Tensor) -> torch.Tensor:
        """A frame batch in the layout the networks take (plain: as it is)."""
        return frames

    adam = staticmethod(torch_utils.adam)
    soft_update = staticmethod(torch_utils.soft_update)
    squared_error_sums = staticmethod(layers.squared_error_sums)
    reconstruction_loss = staticmethod(reconstruction.reconstruction_loss)


def backend_name(backend: str, device: torch.device) -> str:
    """The backend a run uses: `auto` is fast-cpu on a CPU, plain on a GPU."""
    if backend == "auto":
        return "fast-cpu" if device.type == "cpu" else "plain"
    if backend == "fast-cpu" and device.type != "cpu":
        raise torch_utils.DeviceError(f"backend fast-cpu runs on the CPU; this run's device is {device.type} "
                                      f"(use --set backend=auto or plain)")
    return backend


def kernels(backend: str, device: torch.device) -> Any:
    """The kernels of `backend` (a config's `backend` field) on `device`; train.fast is imported
    only for fast-cpu."""
    if backend_name(backend, device) == "plain":
        return Kernels()
    from train.fast import FastCpuKernels

    return FastCpuKernels()
