"""Layers shared by the SAC+AE decoder and SLAC's model: transposed convolutions whose backward
runs as the convolutions it is made of (same function and gradients; much faster on CPU), and a
mean squared error whose gradient keeps the decoder's memory layout."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _ConvTransposeFn(torch.autograd.Function):
    """conv_transpose2d with its backward written as the convolutions it is made of: a transposed
    conv is the adjoint of a conv, so grad_input = conv2d(grad, w) and grad_w is that conv's weight
    gradient. Same gradients; oneDNN runs these (channels_last) much faster than its deconvolution
    backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                stride: int, padding: int, output_padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding)  # type: ignore[attr-defined]
        return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, padding = ctx.geometry  # type: ignore[attr-defined]
        grad_x = F.conv2d(grad, weight, None, stride, padding) if ctx.needs_input_grad[0] else None
        _, grad_w, _ = torch.ops.aten.convolution_backward(
            x, grad, weight, None, [stride, stride], [padding, padding], [1, 1], False, [0, 0], 1, [False, True, False])
        return grad_x, grad_w, grad.sum((0, 2, 3)), None, None, None


class ConvTranspose2dConvGrad(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters, init and function) with `_ConvTransposeFn`'s backward
    when differentiating in one dtype; PyTorch's own path otherwise (no grad, or autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        return _ConvTransposeFn.apply(x, self.weight, self.bias, self.stride[0], self.padding[0],
                                      self.output_padding[0])


class _MeanSquaredError(torch.autograd.Function):
    """mean((a - b)^2) with its gradient in a's memory layout. Autograd's own backward (and
    F.mse_loss's) starts from an expanded scalar and comes out NCHW, which a channels_last decoder
    then copies back to its layout twice per transposed conv."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = a - b
        ctx.save_for_backward(diff)
        if diff.is_contiguous() or diff.is_contiguous(memory_format=torch.channels_last):
            flat = diff.as_strided((diff.numel(),), (1,))  # dense in memory: one read, no squares stored
            return torch.dot(flat, flat) / diff.numel()
        return diff.square().mean()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[Any, ...]:
        (diff,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return diff * (grad * (2.0 / diff.numel())), None


def mean_squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """F.mse_loss(a, b) for a target b that needs no gradient, with a layout-preserving backward."""
    return _MeanSquaredError.apply(a, b)
