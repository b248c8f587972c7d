"""Layers shared by the SAC+AE decoder and SLAC's model: transposed convolutions whose backward
runs as the convolutions it is made of (same function and gradients; much faster on CPU), and
whose forward can run as a sub-pixel conv (few output channels: an RGB output layer), a
squared error whose gradient keeps the decoder's memory layout (SLAC's fixed-variance image
likelihood; SAC+AE's reconstruction loss on a GPU), linear maps between feature vectors and conv
feature maps that never copy a channels_last map (or their weights) into NCHW order, conv stacks
that fuse each activation into its (transposed) convolution, the pixel scaling both encoders start
with, and the channels_last copy of a frame batch they take."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _ConvTransposeFn(torch.autograd.Function):
    """A transposed conv (`layer.conv_transpose`), optionally with the activation after it fused in
    (`act`: (attr, scalars), run_conv_stack), its backward written as the convolutions it is made
    of: a transposed conv is the adjoint of a conv, so grad_input = conv2d(grad, w) and grad_w is
    that conv's weight gradient. Same gradients; oneDNN runs these (channels_last) much faster than
    its deconvolution backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                layer: "ConvTranspose2dConvGrad", act: tuple[str, list[float]] | None,
                grad_owned: bool = False) -> torch.Tensor:
        ctx.geometry = (layer.stride[0], layer.padding[0])  # type: ignore[attr-defined]
        if act is None:
            ctx.save_for_backward(x, weight)
            return layer.conv_transpose(x, weight, bias)
        y = _conv_transpose_act(x, layer, *act)
        ctx.save_for_backward(x, weight, y)
        ctx.slope, ctx.grad_owned = _slope(act), grad_owned  # type: ignore[attr-defined]
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, *fused = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, padding = ctx.geometry  # type: ignore[attr-defined]
        if fused:
            grad = _activation_grad(grad, fused[0], ctx.slope, ctx.grad_owned)  # type: ignore[attr-defined]
        grad_x = F.conv2d(grad, weight, None, stride, padding) if ctx.needs_input_grad[0] else None
        _, grad_w, _ = torch.ops.aten.convolution_backward(
            x, grad, weight, None, [stride, stride], [padding, padding], [1, 1], False, [0, 0], 1, [False, True, False])
        return grad_x, grad_w, channel_sums(grad), None, None, None


def channel_sums(t: torch.Tensor) -> torch.Tensor:
    """t.sum((0, 2, 3)) for a (N, C, H, W) map (a bias gradient). torch's own reduction of a
    channels_last map walks C-wide rows and runs at a third of memory speed here; summing each image's
    H*W rows first, then the N per-image sums, runs near it (SAC+AE's 128x32x41x41 map: 2.5 -> 0.75
    ms; SLAC's 288x32x32x32: 3.9 -> 1.3 ms). A map with few channels (an RGB output) is summed as
    rows of 64*C/gcd(C, 16) values, a multiple of the SIMD width, then folded."""
    n, c, h, w = t.shape
    if not is_channels_last(t):
        return t.sum((0, 2, 3))
    rows = t.permute(0, 2, 3, 1)
    if c >= 8:
        return rows.reshape(n, h * w, c).sum(1).sum(0)
    width = 4 * math.lcm(c, 16)
    if t.numel() % width:
        return t.sum((0, 2, 3))
    return rows.reshape(-1, width).sum(0).view(-1, c).sum(0)


class ConvTranspose2dConvGrad(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters, init and function) with `_ConvTransposeFn`'s backward
    when differentiating in one dtype; PyTorch's own layer under autocast.

    `subpixel=True` (square, stride s, output s x input: padding (k-1)/2, output_padding s-1) also
    computes the forward on the CPU fast path as one stride-1 conv with s*s*out channels, one group
    per output phase, and a pixel shuffle (`_subpixel_conv_transpose`): for a layer with few output
    channels (SLAC's RGB output layer) oneDNN's transposed conv runs at ~25 GFLOP/s, that conv at
    ~120 (measured here: 61 -> 21 ms for a 288-frame batch)."""

    def __init__(self, *args: Any, subpixel: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subpixel_index: torch.Tensor | None
        self.register_buffer("subpixel_index", _subpixel_weight_index(self) if subpixel else None, persistent=False)

    def conv_transpose(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The layer's function, F.conv_transpose2d(x, weight, bias) with its geometry."""
        if self.subpixel_index is not None and _fusable(x):
            return _subpixel_conv_transpose(x, weight, bias, self.stride[0], self.subpixel_index)
        return F.conv_transpose2d(x, weight, bias, self.stride, self.padding, self.output_padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        if not torch.is_grad_enabled():
            return self.conv_transpose(x, self.weight, self.bias)
        return _ConvTransposeFn.apply(x, self.weight, self.bias, self, None)


def _phase_taps(kernel: int, stride: int, padding: int) -> list[list[tuple[int, int]]]:
    """For each output phase r of a 1-d transposed conv, its (input offset u, tap t) pairs:
    y[stride * m + r] = sum over them of x[m + u] * w[t]."""
    return [[((r + padding - t) // stride, t) for t in range(kernel) if (r + padding - t) % stride == 0]
            for r in range(stride)]


def _subpixel_weight_index(layer: nn.ConvTranspose2d) -> torch.Tensor:
    """Where each weight of the sub-pixel conv, (s*s*out, in, T, T) with output channels ordered
    (phase row, phase column, out), comes from: a flat index into the transposed conv's weight
    (in, out, k, k), or one past its end (a zero: that phase has no tap there)."""
    (k, _), (s, _), (p, _) = layer.kernel_size, layer.stride, layer.padding
    taps = _phase_taps(k, s, p)
    reach = max(abs(u) for phase in taps for u, _ in phase)
    if (layer.kernel_size[1], layer.stride[1], layer.padding[1], *layer.output_padding) != (k, s, p, s - 1, s - 1) \
            or p != (k - 1) // 2 or min(u for phase in taps for u, _ in phase) != -reach:
        raise ValueError("subpixel needs a square 'output = stride x input' transposed conv whose phases reach "
                         "as far back as forward (e.g. kernel 5, stride 2)")
    c_in, c_out = layer.in_channels, layer.out_channels
    width = 2 * reach + 1
    index = torch.full((s, s, c_out, c_in, width, width), c_in * c_out * k * k, dtype=torch.long)
    flat = torch.arange(c_in * c_out * k * k).view(c_in, c_out, k, k)
    for ry, row_taps in enumerate(taps):
        for rx, col_taps in enumerate(taps):
            for uy, ty in row_taps:
                for ux, tx in col_taps:
                    index[ry, rx, :, :, uy + reach, ux + reach] = flat[:, :, ty, tx].t()
    return index.view(s * s * c_out, c_in, width, width)


def _subpixel_conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                             index: torch.Tensor) -> torch.Tensor:
    """`ConvTranspose2dConvGrad.conv_transpose` as a sub-pixel conv: the same products and sums (the
    zero taps add exact zeros), for a channels_last x; returns channels_last."""
    n, _, h, w = x.shape
    c_out = weight.size(1)
    kernel = torch.cat([weight.reshape(-1), weight.new_zeros(1)])[index].contiguous(memory_format=torch.channels_last)
    bias = None if bias is None else bias.repeat(stride * stride)
    phases = F.conv2d(x, kernel, bias, padding=index.size(-1) // 2)
    y = phases.permute(0, 2, 3, 1).reshape(n, h, w, stride, stride, c_out).transpose(2, 3)
    return y.reshape(n, h * stride, w * stride, c_out).permute(0, 3, 1, 2)


def is_channels_last(t: torch.Tensor) -> bool:
    """A 4-d tensor dense in NHWC order but not in NCHW order (sizes 1 leave both true)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def channels_last_copy(frames: torch.Tensor) -> torch.Tensor:
    """frames.contiguous(memory_format=torch.channels_last). On the CPU a (N, C, H, W) batch is
    copied one channel plane at a time into (N, H, W, C) storage: torch's own copy interleaves the
    few channels of uint8 frames pixel by pixel, 1.2x (9-channel stacks) to 2x (RGB frames) slower."""
    if frames.device.type != "cpu" or frames.dim() != 4 or frames.is_contiguous(memory_format=torch.channels_last):
        return frames.contiguous(memory_format=torch.channels_last)
    n, c, h, w = frames.shape
    out = frames.new_empty((n, h, w, c))
    for i in range(c):
        out[..., i].copy_(frames[:, i])
    return out.permute(0, 3, 1, 2)


def _fusable(x: torch.Tensor) -> bool:
    """The agents' channels_last CPU float32 path (export, NCHW, autocast and the GPU keep the
    layers as they are)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and is_channels_last(x)
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available())


def _conv_act(x: torch.Tensor, conv: nn.Conv2d, attr: str, scalars: list[float]) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
                                                   list(conv.dilation), conv.groups, attr, scalars, "")


def _conv_transpose_act(x: torch.Tensor, layer: nn.ConvTranspose2d, attr: str, scalars: list[float]) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_transpose_pointwise(
        x, layer.weight, layer.bias, list(layer.padding), list(layer.output_padding), list(layer.stride),
        list(layer.dilation), layer.groups, attr, scalars, "")


def _slope(act: tuple[str, list[float]]) -> float | None:
    """A fused activation's LeakyReLU slope; None for a ReLU."""
    return act[1][0] if act[1] else None


def _activation_grad(grad: torch.Tensor, y: torch.Tensor, slope: float | None, in_place: bool) -> torch.Tensor:
    """The gradient through a ReLU (slope None) or LeakyReLU, from its output y (whose sign is its
    input's). `in_place` writes it over `grad`, which must then be the caller's own: the map was just
    written and is still in cache, where a new buffer is not (SLAC's 288x32x32x32 map: 13.8 -> 3.7 ms)."""
    if slope is None:
        op, args = torch.ops.aten.threshold_backward, (grad, y, 0.0)
    else:
        op, args = torch.ops.aten.leaky_relu_backward, (grad, y, slope, True)
    return op.grad_input(*args, grad_input=grad) if in_place else op(*args)


class _ConvActFn(torch.autograd.Function):
    """conv -> ReLU / LeakyReLU as one oneDNN op (the activation a post-op) and autograd's own
    backward for the pair: the activation's gradient from the saved output, then the conv's. Saves
    the separate in-place activation pass over each map."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                conv: nn.Conv2d, act: tuple[str, list[float]], grad_owned: bool = False) -> torch.Tensor:
        y = _conv_act(x, conv, *act)
        ctx.save_for_backward(x, weight, y)
        ctx.conv, ctx.slope, ctx.grad_owned = conv, _slope(act), grad_owned  # type: ignore[attr-defined]
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, y = ctx.saved_tensors  # type: ignore[attr-defined]
        conv = ctx.conv  # type: ignore[attr-defined]
        grad = _activation_grad(grad, y, ctx.slope, ctx.grad_owned)  # type: ignore[attr-defined]
        gx, gw, _ = torch.ops.aten.convolution_backward(  # the bias gradient apart: oneDNN's is slower
            grad, x, weight, None, list(conv.stride), list(conv.padding), list(conv.dilation), False,
            [0, 0], conv.groups, [ctx.needs_input_grad[0], True, False])  # type: ignore[attr-defined]
        return gx, gw, channel_sums(grad), None, None, None


def _fused_activation(layer: nn.Module, act: nn.Module | None, x: torch.Tensor) -> tuple[str, list[float]] | None:
    """(attr, scalars) of `act` when `layer` then `act` can run as one oneDNN op on x: a plain Conv2d
    or a ConvTranspose2dConvGrad (not sub-pixel) followed by a ReLU or LeakyReLU, on the fast path."""
    if not isinstance(act, (nn.ReLU, nn.LeakyReLU)) or not _fusable(x):
        return None
    grad = torch.is_grad_enabled()
    if type(layer) is nn.Conv2d:
        ok = isinstance(layer.padding, tuple) and (layer.bias is not None or not grad)
    else:
        ok = isinstance(layer, ConvTranspose2dConvGrad) and layer.subpixel_index is None and layer.bias is not None
    if not ok:
        return None
    return ("relu", []) if isinstance(act, nn.ReLU) else ("leaky_relu", [act.negative_slope])


def run_conv_stack(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`layers(x)`. On a channels_last CPU float32 input each Conv2d or ConvTranspose2dConvGrad
    followed by a ReLU or LeakyReLU runs as one oneDNN op with the activation as its post-op: the
    same values (bit for bit here), one pass over the feature map less per layer; with autograd, the
    pair's backward is the plain layers' (`_ConvActFn`, `_ConvTransposeFn`), the activation's
    gradient written over the incoming one where that is the next conv's fresh input gradient.
    Other layers run as they are."""
    mods = list(layers)
    i = 0
    while i < len(mods):
        layer, act = mods[i], mods[i + 1] if i + 1 < len(mods) else None
        fused = _fused_activation(layer, act, x)
        if fused is None:
            x = layer(x)
            i += 1
            continue
        grad = torch.is_grad_enabled()
        # The next conv's backward hands this pair a gradient it has just made and no one else sees.
        owned = i + 2 < len(mods) and isinstance(mods[i + 2], (nn.Conv2d, nn.ConvTranspose2d))
        if type(layer) is nn.Conv2d:
            x = (_ConvActFn.apply(x, layer.weight, layer.bias, layer, fused, owned) if grad
                 else _conv_act(x, layer, *fused))
        else:
            x = (_ConvTransposeFn.apply(x, layer.weight, layer.bias, layer, fused, owned) if grad
                 else _conv_transpose_act(x, layer, *fused))
        i += 2
    return x


def unit_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) frames -> float32 in [0, 1], a new tensor in the frames' memory
    layout: both papers' network input (SAC+AE B.6, SLAC's x_t in [0, 1])."""
    return frames.to(torch.float32, copy=True).div_(255.0)


def map_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x.flatten(1), weight, bias) for a (N, C, H, W) map x and a weight with C*H*W inputs in
    NCHW order. A channels_last x is read in its own (H, W, C) order and the weight permuted to
    match: a copy of the weight (and of its gradient) instead of the larger batch of maps."""
    if not is_channels_last(x):
        return F.linear(x.flatten(1), weight.flatten(1), bias)
    w = weight.reshape(weight.size(0), *x.shape[1:]).permute(0, 2, 3, 1).flatten(1)
    return F.linear(x.permute(0, 2, 3, 1).flatten(1), w, bias)


def linear_to_map(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A linear layer whose outputs form (C, H, W) maps: weight (C, H, W, F), bias (C, H, W) (either
    may be an expanded view). Returns (N, C, H, W), laid out channels_last when asked: the output
    rows are computed in (H, W, C) order rather than copied into it."""
    c, h, w, f = weight.shape
    if not channels_last:
        return F.linear(z, weight.reshape(c * h * w, f), bias.reshape(-1)).view(len(z), c, h, w)
    y = F.linear(z, weight.permute(1, 2, 0, 3).reshape(h * w * c, f), bias.permute(1, 2, 0).reshape(-1))
    return y.view(len(z), h, w, c).permute(0, 3, 1, 2)


@torch.no_grad()
def _linear_default_init(weight: torch.Tensor, bias: torch.Tensor, fan_in: int) -> None:
    """nn.Linear's own default init (U(+-1/sqrt(fan_in)) for both), drawing as many numbers as it does,
    so these layers start usable and leave the RNG where nn.Linear would (SAC+AE's weight_init then
    replaces it with the paper's orthogonal init)."""
    bound = 1.0 / math.sqrt(fan_in)
    weight.uniform_(-bound, bound)
    bias.uniform_(-bound, bound)


class MapLinear(nn.Module):
    """nn.Linear(C*H*W, out) on (N, C, H, W) maps flattened in NCHW order (SAC+AE's encoder fc),
    its weight kept as (out, C, H, W): a channels_last model then stores it in the maps' own (H, W, C)
    order, and `map_linear` reads both in place (no per-pass copy of the weight or its gradient)."""

    def __init__(self, in_shape: tuple[int, int, int], out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, *in_shape))
        self.bias = nn.Parameter(torch.empty(out_features))
        _linear_default_init(self.weight, self.bias, math.prod(in_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return map_linear(x, self.weight, self.bias)


class LinearToMap(nn.Module):
    """nn.Linear(in, C*H*W) whose outputs form (C, H, W) maps (SAC+AE's decoder fc), its weight kept
    as (in, C, H, W): in a channels_last model that is the (H, W, C) order `linear_to_map` writes its
    channels_last output rows in, so the weight is read in place (a transposed view)."""

    def __init__(self, in_features: int, out_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, *out_shape))
        self.bias = nn.Parameter(torch.empty(out_shape))
        _linear_default_init(self.weight, self.bias, in_features)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return linear_to_map(z, self.weight.permute(1, 2, 3, 0), self.bias, is_channels_last(self.weight))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, D): a view where t is dense in NCHW or NHWC order (a row's element order
    does not matter to a sum), a copy otherwise."""
    if is_channels_last(t):
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
        return torch.linalg.vecdot(rows, rows)  # row dot products: one read, no squares stored

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
