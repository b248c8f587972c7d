"""SAC+AE's reconstruction term (appendix B.5, B.6): the 5-bit target, its dequantisation noise
(one seeded rule on every device) and the loss, as plain PyTorch (train.fast.reconstruction fuses it
on the CPU)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The batch's samples split into this many runs, each with its own noise generator (a fixed number:
# the noise never depends on the machine's core count; train.fast draws the runs in parallel).
NOISE_RUNS = 4


def noise_seeds(rng: np.random.Generator) -> list[int]:
    """One update's dequantisation-noise seeds, drawn from the update's seeded `rng`."""
    return [int(s) for s in rng.integers(2**63, size=NOISE_RUNS)]


def noise_runs(batch: int, runs: int) -> list[np.ndarray]:
    """The sample indices of each noise run: consecutive, as equal as can be."""
    return np.array_split(np.arange(batch), runs)


def dequantisation_noise(obs: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """U[0, 1) noise of obs' shape, on every device by one rule: the samples of run i (`noise_runs`)
    drawn in order by torch.rand from a torch.Generator on obs' device seeded with seeds[i]."""
    runs = noise_runs(len(obs), len(seeds))
    return torch.cat([torch.rand((len(run), *obs.shape[1:]), device=obs.device,
                                 generator=torch.Generator(obs.device).manual_seed(seed))
                      for run, seed in zip(runs, seeds)])


def reconstruction_loss(rec: torch.Tensor, obs: torch.Tensor, bits: int, seeds: list[int]) -> torch.Tensor:
    """The RAE reconstruction term (B.5, B.6): F.mse_loss(rec, reconstruction_target(obs, bits, u))
    with u ~ U[0, 1) dequantisation noise (`dequantisation_noise`)."""
    return F.mse_loss(rec, reconstruction_target(obs, bits, dequantisation_noise(obs, seeds)))


def reconstruction_target(obs: torch.Tensor, bits: int, noise: torch.Tensor) -> torch.Tensor:
    """uint8 pixels reduced to `bits` bits, dequantised with uniform noise (`noise`: U[0, 1) samples
    of obs' shape, overwritten), centred on 0 (B.6; Kingma & Dhariwal): floor(obs / 2^(8-bits)) / bins
    + noise / bins - 0.5, each step exact or rounded once as written. The result takes obs' memory
    layout, the decoder output's, so the loss gradient reaches the decoder without a layout copy."""
    bins = 2**bits
    target = torch.empty_like(obs, dtype=torch.float32)
    torch.add(noise.div_(bins), obs >> (8 - bits), alpha=1.0 / bins, out=target)
    return target.sub_(0.5)
