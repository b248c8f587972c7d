"""Small torch helpers shared by the agents: the paper's initialisation, soft updates, fused Adam,
device choice."""

from __future__ import annotations

import ctypes
import os
from typing import Any, Callable, Iterable

import torch
from torch import nn

from sacae_deploy.errors import SacaeError
from train.layers import LinearToMap, MapLinear


class DeviceError(SacaeError, ValueError):
    """A device that this machine's torch cannot use."""


def weight_init(m: nn.Module) -> None:
    """SAC+AE appendix B.4: orthogonal linear weights, delta-orthogonal (conv and deconv), zero biases."""
    if isinstance(m, (nn.Linear, MapLinear, LinearToMap)):  # the latter two: Linear with a 4-d weight
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
    """target <- tau * source + (1 - tau) * target, in one fused foreach call."""
    tgt, src = list(target.parameters()), list(source.parameters())
    if tgt:
        torch._foreach_lerp_(tgt, src, tau)


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """t's elements as a 1-d view in memory order where t is contiguous or channels_last; t otherwise."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return t


def _like(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """t in p's memory layout: itself, or (a gradient assigned by hand, moments loaded from another
    layout) a copy."""
    return t if t.stride() == p.stride() else torch.empty_like(p).copy_(t)


class FusedAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True): the same kernel, update and state, bit for bit. On the CPU each
    parameter reaches the kernel with its gradient and moments as 1-d views in memory order: the
    kernel copies every non-contiguous tensor (a channels_last conv or map weight, its gradient and
    moments) to a contiguous buffer and back otherwise, seven copies of SAC+AE's 7.8 MB encoder fc
    weight per step (a critic-sized group: 3.8 -> 2.3 ms per step here). A gradient or moment laid
    out unlike its parameter is brought to the parameter's layout first: torch's CPU kernel pairs
    their elements in memory order and so updates the wrong weights (measured with torch 2.13).
    On a GPU, or capturable (CUDA graphs), torch's own step."""

    def __init__(self, params: Iterable[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, capturable: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True, capturable=capturable)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        groups = self.param_groups
        if closure is not None or self.defaults["capturable"] or any(
                p.device.type != "cpu" for g in groups for p in g["params"]):
            return super().step(closure)
        for group in groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            steps: list[torch.Tensor] = []
            self._init_group(group, params, grads, [], [], [], steps)
            if not params:
                continue
            moments = []
            for p in params:
                state = self.state[p]
                state["exp_avg"], state["exp_avg_sq"] = _like(state["exp_avg"], p), _like(state["exp_avg_sq"], p)
                moments.append((state["exp_avg"], state["exp_avg_sq"]))
            flat = [[_memory_order(t) for t in (p, _like(g, p), *m)] for p, g, m in zip(params, grads, moments)]
            torch._foreach_add_(steps, 1)  # as torch's fused path: count, then step
            beta1, beta2 = group["betas"]
            torch._fused_adam_(*(list(ts) for ts in zip(*flat)), [], steps, amsgrad=False, lr=group["lr"],
                               beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                               maximize=False, grad_scale=None, found_inf=None)
        return None


def bf16_is_native(device: torch.device) -> bool:
    """Whether bf16 autocast runs on units made for it: a CPU with AVX512-BF16 or AMX (as the CPUID
    the hypervisor shows says: oneDNN emulates bf16 without them), or a CUDA GPU with bf16
    arithmetic (Ampere or later)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


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

    Measured on the 2-core dev machine: 5-46% faster updates (the same effect as setting
    MALLOC_MMAP_MAX_=0 and MALLOC_TRIM_THRESHOLD_ before start). A no-op off glibc.
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
