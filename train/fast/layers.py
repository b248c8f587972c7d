"""The fast-cpu layers (`accelerate` swaps them in for the plain ones, same parameters): transposed
convolutions whose backward runs as the convolutions it is made of (same function and gradients;
much faster on CPU), whose forward can run as a sub-pixel conv (few output channels: an RGB output
layer) or, on a 1x1 input, as the GEMM it is; convolutions covering their whole input as GEMMs;
conv stacks that fuse each activation into its (transposed) convolution (oneDNN post-ops); linear
maps between feature vectors and channels_last feature maps that never copy the map into NCHW
order; a squared error whose gradient keeps the decoder's memory layout; the channels_last copy of
a frame batch. Each private op is used only where train.fast.support found it; otherwise, and
inside an exporter's trace, the plain layer runs."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from train.fast import support
from train.layers import FlattenLinear, LinearToMap


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
    H*W rows first, then the N per-image sums, runs near it (about 3x faster on both agents' maps
    when written). A map with few channels (an RGB output) is summed as rows of 64*C/gcd(C, 16)
    values, a multiple of the SIMD width, then folded."""
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

    On a 1x1 input (stride 1, no padding: SLAC's first decoder layer) the layer is the matrix
    product (N, in) @ (in, out*kh*kw), computed so and laid out channels_last.

    With `subpixel_index` (`adopt`: a square "output = stride x input" layer with few output
    channels) the forward on the CPU fast path runs as one stride-1 conv with s*s*out channels,
    one group per output phase, and a pixel shuffle (`_subpixel_conv_transpose`): for SLAC's RGB
    output layer oneDNN's transposed conv runs several times slower than that conv."""

    subpixel_index: torch.Tensor | None

    @staticmethod
    def adopt(layer: nn.ConvTranspose2d) -> None:
        """Make a plain nn.ConvTranspose2d this class in place (its parameters untouched)."""
        layer.__class__ = ConvTranspose2dConvGrad
        index = None
        if layer.out_channels < 8 and not layer._is_dense_geometry():  # type: ignore[attr-defined]
            try:
                index = _subpixel_weight_index(layer)
            except ValueError:  # another geometry: the transposed conv as it is
                index = None
        layer.register_buffer("subpixel_index", index, persistent=False)

    def _is_dense_geometry(self) -> bool:
        return (self.stride, self.padding, self.output_padding, self.dilation, self.groups) == ((1, 1), (0, 0),
                                                                                              (0, 0), (1, 1), 1)

    def _dense(self, x: torch.Tensor) -> bool:
        return x.shape[-2:] == (1, 1) and self._is_dense_geometry() and self.bias is not None

    def conv_transpose(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The layer's function, F.conv_transpose2d(x, weight, bias) with its geometry."""
        if self.subpixel_index is not None and _fusable(x):
            return _subpixel_conv_transpose(x, weight, bias, self.stride[0], self.subpixel_index)
        return F.conv_transpose2d(x, weight, bias, self.stride, self.padding, self.output_padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self._dense(x) and not support.tracing():
            kh, kw = self.kernel_size
            bias = self.bias[:, None, None].expand(self.out_channels, kh, kw)  # type: ignore[index]
            return linear_to_map(x.flatten(1), self.weight.permute(1, 2, 3, 0), bias, channels_last=True)
        if torch.is_autocast_enabled(x.device.type) or not support.ATEN_BACKWARD or support.tracing():
            return super().forward(x)
        if not torch.is_grad_enabled():
            return self.conv_transpose(x, self.weight, self.bias)
        return _ConvTransposeFn.apply(x, self.weight, self.bias, self, None)


class DenseConv2d(nn.Conv2d):
    """nn.Conv2d whose kernel, on an input of its own size (no padding), is computed as the matrix
    product it is: oneDNN runs that shape (SLAC's 4x4 kernel on a 4x4 input) several times slower as
    a convolution than as a GEMM, channels_last above all. Other inputs: the conv as it is."""

    @staticmethod
    def adopt(layer: nn.Conv2d) -> None:
        layer.__class__ = DenseConv2d

    def dense(self, x: torch.Tensor) -> bool:
        return (x.shape[-2:] == self.kernel_size and self.padding == (0, 0) and self.groups == 1
                and self.dilation == (1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.dense(x) and not support.tracing():
            return map_linear(x, self.weight, self.bias)[:, :, None, None]
        return super().forward(x)


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
    few channels of uint8 frames pixel by pixel, slower (the fewer the channels, the more)."""
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
            and not torch.is_autocast_enabled("cpu") and support.MKLDNN_POINTWISE and support.ATEN_BACKWARD
            and not support.tracing())


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
    written and is still in cache, where a new buffer is not (several times faster on SLAC's maps)."""
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
    if type(layer) in (nn.Conv2d, DenseConv2d):
        ok = (isinstance(layer.padding, tuple) and (layer.bias is not None or not grad)
              and not (isinstance(layer, DenseConv2d) and layer.dense(x)))
    else:
        ok = (isinstance(layer, ConvTranspose2dConvGrad) and layer.subpixel_index is None and layer.bias is not None
              and not layer._dense(x))
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
        if isinstance(layer, nn.Conv2d):
            x = (_ConvActFn.apply(x, layer.weight, layer.bias, layer, fused, owned) if grad
                 else _conv_act(x, layer, *fused))
        else:
            x = (_ConvTransposeFn.apply(x, layer.weight, layer.bias, layer, fused, owned) if grad
                 else _conv_transpose_act(x, layer, *fused))
        i += 2
    return x


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


class ConvStack(nn.Sequential):
    """nn.Sequential whose forward is `run_conv_stack` (each conv and its activation one op)."""

    @staticmethod
    def adopt(stack: nn.Sequential) -> None:
        stack.__class__ = ConvStack

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return run_conv_stack(self, x)


def map_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x.flatten(1), weight.flatten(1), bias) for a (N, C, H, W) map x and a weight with
    C*H*W inputs in NCHW order (2-d, or 4-d as a conv's). A channels_last x is read in its own
    (H, W, C) order and the weight's columns permuted to match: a copy of the weight (and of its
    gradient) instead of the larger batch of maps; a channels_last 4-d weight is read in place."""
    if not is_channels_last(x):
        return F.linear(x.flatten(1), weight.flatten(1), bias)
    w = weight.reshape(weight.size(0), *x.shape[1:]).permute(0, 2, 3, 1).flatten(1)
    return F.linear(x.permute(0, 2, 3, 1).flatten(1), w, bias)


def linear_to_map(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A linear layer whose outputs form (C, H, W) maps: weight (C, H, W, F), bias (C, H, W) (either
    may be a view). Returns (N, C, H, W), laid out channels_last when asked: the output rows are
    computed in (H, W, C) order rather than copied into it."""
    c, h, w, f = weight.shape
    if not channels_last:
        return F.linear(z, weight.reshape(c * h * w, f), bias.reshape(-1)).view(len(z), c, h, w)
    y = F.linear(z, weight.permute(1, 2, 0, 3).reshape(h * w * c, f), bias.permute(1, 2, 0).reshape(-1))
    return y.view(len(z), h, w, c).permute(0, 3, 1, 2)


class MapLinear(FlattenLinear):
    """FlattenLinear (nn.Linear on NCHW-flattened maps: SAC+AE's encoder fc, its 2-d weight) that
    reads a channels_last map in place (`map_linear`)."""

    @staticmethod
    def adopt(layer: FlattenLinear) -> None:
        layer.__class__ = MapLinear

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return map_linear(x, self.weight, self.bias)


class ChannelsLastLinearToMap(LinearToMap):
    """LinearToMap (SAC+AE's decoder fc, its 2-d weight) whose output maps come out channels_last,
    the transposed convs' layout, computed in that order (`linear_to_map`) rather than copied."""

    @staticmethod
    def adopt(layer: LinearToMap) -> None:
        layer.__class__ = ChannelsLastLinearToMap

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        c, h, w = self.out_shape
        return linear_to_map(z, self.weight.view(c, h, w, -1), self.bias.view(c, h, w), channels_last=True)


# The plain layer type -> its fast-cpu replacement (same parameters, state dict and init).
_SWAPS: dict[type, Any] = {
    nn.Conv2d: DenseConv2d.adopt,
    nn.ConvTranspose2d: ConvTranspose2dConvGrad.adopt,
    FlattenLinear: MapLinear.adopt,
    LinearToMap: ChannelsLastLinearToMap.adopt,
}


def accelerate(module: nn.Module) -> nn.Module:
    """Swap the fast-cpu layers into `module` in place (each plain conv, transposed conv, flattening
    or unflattening linear layer, and each nn.Sequential holding convolutions) and lay its conv
    weights out channels_last. Parameters, their shapes and the state dict stay the plain ones."""
    for m in list(module.modules()):
        if type(m) is nn.Sequential and any(isinstance(c, (nn.Conv2d, nn.ConvTranspose2d)) for c in m):
            ConvStack.adopt(m)
        elif type(m) in _SWAPS:
            _SWAPS[type(m)](m)
    return module.to(memory_format=torch.channels_last)
