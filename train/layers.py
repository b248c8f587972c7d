"""Layers shared by the SAC+AE decoder and SLAC's model: transposed convolutions whose backward
runs as the convolutions it is made of (same function and gradients; much faster on CPU), a
squared error whose gradient keeps the decoder's memory layout (SAC+AE's reconstruction loss, SLAC's
fixed-variance image likelihood), and the pixel scaling both encoders start with."""

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


def unit_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) frames -> float32 in [0, 1], a new tensor in the frames' memory
    layout: both papers' network input (SAC+AE B.6, SLAC's x_t in [0, 1])."""
    return frames.to(torch.float32, copy=True).div_(255.0)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, D): a view where t is dense in NCHW or NHWC order (a row's element order
    does not matter to a sum), a copy otherwise."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(len(t), -1)
    return t.reshape(len(t), -1)


class _SquaredErrorSums(torch.autograd.Function):
    """Per-sample sums of (a - b)^2 with the gradient in a's memory layout (b gets none). Autograd's
    own backward of a reduction (and F.mse_loss's) starts from an expanded tensor and comes out
    NCHW, which a channels_last decoder then copies back to its layout twice per transposed conv."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = a - b
        ctx.save_for_backward(diff)
        rows = _rows(diff)
        return torch.bmm(rows[:, None, :], rows[:, :, None]).view(-1)  # row dot products: one read, no squares stored

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[Any, ...]:
        (diff,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return diff * (2.0 * grad).view(-1, *[1] * (diff.dim() - 1)), None


def squared_error_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) sums over each sample of (a - b)^2, for a target b that needs no gradient; the
    gradient keeps a's memory layout."""
    return _SquaredErrorSums.apply(a, b)


def mean_squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """F.mse_loss(a, b) (mean reduction) with squared_error_sums' layout-keeping gradient."""
    return squared_error_sums(a, b).sum() / a.numel()
