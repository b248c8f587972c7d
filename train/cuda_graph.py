"""A whole training step (forward, backward and optimizer steps) replayed as one CUDA graph.

At paper sizes SLAC's updates are bound by kernel launches on a GPU, not by the GPU: a model update
launches well over a thousand small kernels that keep the GPU busy for a fraction of the step
(benchmarks/slac_update.py --device cuda measures it). Captured once, a step costs one graph
launch. This is PyTorch's "whole network capture" recipe: fixed input shapes, no host sync inside
the step, optimizers built with `capturable=True`, and the step's random draws taken from the
graph-safe CUDA generator.
"""

from __future__ import annotations

from typing import Callable

import torch

Step = Callable[..., dict[str, torch.Tensor]]


class GraphedStep:
    """Calls `step(*inputs) -> metrics` eagerly `warmup` times (on a side stream, as capture
    requires), then captures it and from then on copies the inputs into the graph's own buffers and
    replays it. Where `enabled` is false (CPU, or an option that cannot be captured) every call is
    eager. Inputs must keep their shapes and dtypes from call to call; the optimizers' state must not
    be replaced after capture (checkpoints are restored before the first update)."""

    def __init__(self, step: Step, enabled: bool, warmup: int = 3) -> None:
        self.step, self.enabled, self.warmup = step, enabled, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: list[torch.Tensor] = []
        self.static_out: dict[str, torch.Tensor] = {}

    def __call__(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return self.step(*inputs)
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.step(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self.static_inputs = [x.clone() for x in inputs]
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records the step's kernels; runs nothing yet
                self.static_out = self.step(*self.static_inputs)
        else:
            for buffer, x in zip(self.static_inputs, inputs):
                buffer.copy_(x, non_blocking=True)
        self.graph.replay()
        # Metrics live in the graph's buffers, which the next replay overwrites.
        return {k: v.clone() for k, v in self.static_out.items()}
