"""SAC+AE's reconstruction loss on the CPU in one pass over the batch (train.reconstruction has the
plain computation: the same target, noise and loss)."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from train.reconstruction import noise_runs
from train.reconstruction import reconstruction_loss as plain_reconstruction_loss


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="sacae-rae")


class _CpuReconstructionLoss(torch.autograd.Function):
    """`reconstruction_loss` on the CPU in one pass over the batch instead of seven (noise, target,
    difference, squared sums, gradient: each 32 MB for a paper batch): one sample at a time, while it
    sits in the L2 cache, the runs of samples (`noise_runs`) in parallel threads (torch.rand and
    numpy run without the GIL), each run's samples drawing their noise from the run's generator in
    order: the plain rule's values. The target is reconstruction_target's, rounded as written
    (scaling by 2^-bits is exact, so fl(u + q) / 2^bits = fl(u / 2^bits + q / 2^bits)). The gradient
    for an upstream gradient of 1 (the RAE loss adds this term unscaled) is kept from the forward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, rec: torch.Tensor, obs: torch.Tensor, bits: int,
                seeds: list[int]) -> torch.Tensor:
        grad = torch.empty_like(rec)
        r, o, g = rec.detach().numpy(), obs.numpy(), grad.numpy()
        sums = np.zeros(len(rec))
        chw = rec.shape[1:]
        scale, grad_scale = np.float32(2.0**-bits), np.float32(2.0 / rec.numel())

        def run(seed: int, samples: np.ndarray) -> None:
            gen = torch.Generator().manual_seed(seed)
            noise, levels = torch.empty(chw), np.empty(o.shape[1:], np.uint8)
            target = noise.numpy()
            for n in samples:
                torch.rand(chw, generator=gen, out=noise)
                np.add(target, np.right_shift(o[n], 8 - bits, out=levels), out=target)
                target *= scale
                target -= np.float32(0.5)
                np.subtract(r[n], target, out=g[n])
                flat = g[n].ravel(order="K")  # a view in memory order, whatever the layout
                sums[n] = np.dot(flat, flat)
                flat *= grad_scale  # d loss / d rec = 2 (rec - target) / numel

        runs = noise_runs(len(rec), len(seeds))
        list(_pool(min(len(seeds), os.cpu_count() or 1)).map(run, seeds, runs))
        ctx.save_for_backward(grad)
        return torch.tensor(sums.sum() / rec.numel(), dtype=rec.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, upstream: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return (grad if bool(upstream == 1) else grad * upstream), None, None, None


def reconstruction_loss(rec: torch.Tensor, obs: torch.Tensor, bits: int, seeds: list[int]) -> torch.Tensor:
    """train.reconstruction.reconstruction_loss, fused on the CPU (float32, uint8 frames); the plain one elsewhere."""
    if rec.device.type != "cpu" or rec.dtype != torch.float32 or obs.dtype != torch.uint8:
        return plain_reconstruction_loss(rec, obs, bits, seeds)
    return _CpuReconstructionLoss.apply(rec, obs, bits, seeds)
