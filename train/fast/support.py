"""Which of the private torch APIs the fast-cpu kernels use this torch has (feature tests, read once
at import). Each kernel checks its flag and otherwise runs the plain PyTorch it replaces (the same
math: tests/test_kernels.py turns each flag off and compares). Tested with torch 2.13."""

from __future__ import annotations

import torch


def _has(namespace: object, *names: str) -> bool:
    try:
        return all(hasattr(namespace, name) for name in names)
    except (AttributeError, RuntimeError):  # an op namespace that cannot be loaded
        return False


# oneDNN's conv + pointwise-activation ops (run_conv_stack's fused pairs).
MKLDNN_POINTWISE = torch.backends.mkldnn.is_available() and _has(
    torch.ops.mkldnn, "_convolution_pointwise", "_convolution_transpose_pointwise")
# ATen's backward ops the hand-written conv/activation backward passes call.
ATEN_BACKWARD = _has(torch.ops.aten, "convolution_backward", "threshold_backward", "leaky_relu_backward")
# torch's fused Adam kernel and Adam's own gathering of a group's tensors (FusedAdam).
FUSED_ADAM = _has(torch, "_fused_adam_", "_foreach_add_") and _has(torch.optim.Adam, "_init_group")
# One foreach call for a soft target update.
FOREACH_LERP = _has(torch, "_foreach_lerp_")
# CPUID queries for bf16 units.
CPU_BF16_QUERY = _has(torch.cpu, "_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_has_bf16_units() -> bool:
    """A CPU with AVX512-BF16 or AMX (as the CPUID the hypervisor shows says); False where this
    torch cannot tell."""
    if not CPU_BF16_QUERY:
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def tracing() -> bool:
    """Inside an exporter's or compiler's trace: the kernels step aside for the plain layers there."""
    compiler = torch.compiler
    return bool(compiler.is_compiling() or getattr(compiler, "is_exporting", lambda: False)()
                or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())
