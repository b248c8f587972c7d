"""Small torch helpers shared by the agents: the paper's initialisation, soft updates, Adam, bf16
and device choice."""

from __future__ import annotations

import ctypes
import os
from typing import Any, Iterable

import torch
from torch import nn

from sacae_deploy.errors import SacaeError


class DeviceError(SacaeError, ValueError):
    """A device that this machine's torch cannot use."""


def weight_init(m: nn.Module) -> None:
    """SAC+AE appendix B.4: orthogonal linear weights, delta-orthogonal (conv and deconv), zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.orthogonal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        assert m.weight.size(2) == m.weight.size(3)
        with torch.no_grad():
            m.weight.zero_()
            mid = m.weight.size(2) // 2
            nn.init.orthogonal_(m.weight[:, :, mid, mid], nn.init.calculate_gain("relu"))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@torch.no_grad()
def soft_update(source: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- tau * source + (1 - tau) * target."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)


def adam(params: Iterable[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0,
         capturable: bool = False) -> torch.optim.Adam:
    """torch.optim.Adam (capturable: its step count on the GPU, so a CUDA graph can hold the step)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, capturable=capturable)


def bf16_is_native(device: torch.device) -> bool:
    """Whether bf16 autocast runs on units made for it: a CPU with AVX512-BF16 or AMX (as the CPUID
    the hypervisor shows says: oneDNN emulates bf16 without them), or a CUDA GPU with bf16
    arithmetic (Ampere or later)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    from train.fast.support import cpu_has_bf16_units

    return cpu_has_bf16_units()


def bf16_notice(bf16: bool, device: torch.device) -> str | None:
    """A one-line warning for bf16=true where `bf16_is_native` says it would be emulated (slower than
    float32, and the rounding still differs); None where there is nothing to say."""
    if not bf16 or bf16_is_native(device):
        return None
    if device.type == "cuda":
        units, measured = "bf16 arithmetic (Ampere or later)", ""
    else:  # measured on a 2-core Xeon whose VM hides both (benchmarks/sac_ae_update.py)
        units, measured = "AVX512-BF16 or AMX", " (the SAC+AE paper update: 0.4x)"
    return (f"note: bf16=true on a {device.type.upper()} without {units}: bf16 is emulated there and "
            f"updates run slower than float32{measured}; drop --set bf16=true")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but torch sees no CUDA device (use --device cpu or auto)")
    return torch.device(name)


def tune_allocator() -> None:
    """Keep glibc from returning large activation buffers to the OS after every update.

    Faster updates (the benchmarks' reference modes leave it off: benchmarks/sac_ae_update.py,
    slac_update.py); the same effect as setting MALLOC_MMAP_MAX_=0 and MALLOC_TRIM_THRESHOLD_ before
    start. A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        libc.mallopt(m_trim_threshold, 1 << 30)
    if "MALLOC_MMAP_MAX_" not in os.environ:
        libc.mallopt(m_mmap_max, 0)
