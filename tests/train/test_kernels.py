"""The fast-cpu seam (train/fast): each kernel computes what the plain layer, optimizer or loss it
replaces computes; the backend is chosen by `config.backend`; checkpoints do not depend on it; each
private torch API has a fallback with the same math; `plain` never imports train.fast."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from train import config as train_config
from train import layers as plain_layers
from train.backend import Kernels, backend_name, kernels
from train.decoder import PixelDecoder
from train.encoder import ConvTrunk
from train.fast import FastCpuKernels, support
from train.fast.adam import FusedAdam
from train.fast.adam import adam as fast_adam
from train.fast.adam import soft_update as fast_soft_update
from train.fast.layers import (
    ConvTranspose2dConvGrad,
    accelerate,
    channel_sums,
    channels_last_copy,
    is_channels_last,
    squared_error_sums,
)
from train.fast.reconstruction import reconstruction_loss as fused_reconstruction_loss
from train.reconstruction import dequantisation_noise, reconstruction_loss, reconstruction_target
from train.replay import FrameReplay
from train.sac import SacAgent
from train.slac import SlacAgent
from train.slac_model import FrameDecoder, FrameEncoder, up_conv
from train.torch_utils import soft_update

ROOT = Path(__file__).resolve().parents[2]
CL = torch.channels_last


def _fast(module: nn.Module) -> nn.Module:
    return accelerate(module)


def _sac_agent(backend: str, **kw: object) -> tuple[SacAgent, FrameReplay]:
    cfg = train_config.resolve("sac-ae", "smoke", backend=backend, **kw)
    torch.manual_seed(0)
    agent = SacAgent(cfg, (9, cfg.image_size, cfg.image_size), 1, torch.device("cpu"))
    replay = FrameReplay(200, (3, cfg.image_size, cfg.image_size), np.uint8, 1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        replay.add_first(rng.integers(0, 255, (3, cfg.image_size, cfg.image_size)).astype(np.uint8))
        for _ in range(30):
            replay.add(rng.integers(0, 255, (3, cfg.image_size, cfg.image_size)).astype(np.uint8),
                       rng.uniform(-1, 1, 1).astype(np.float32), float(rng.uniform()), 1.0)
    return agent, replay


def _slac_agent(backend: str) -> SlacAgent:
    cfg = train_config.resolve("slac", "smoke", backend=backend)
    torch.manual_seed(0)
    return SlacAgent(cfg, (3, 64, 64), 2, torch.device("cpu"))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- the backend
def test_backend_auto_is_fast_cpu_on_a_cpu_and_plain_on_a_gpu() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert backend_name("auto", cpu) == "fast-cpu" and backend_name("auto", gpu) == "plain"
    assert backend_name("plain", cpu) == "plain"
    assert type(kernels("plain", cpu)) is Kernels and isinstance(kernels("auto", cpu), FastCpuKernels)
    with pytest.raises(train_config.ConfigError, match="backend must be"):
        train_config.resolve("sac-ae", "smoke", backend="fast")
    with pytest.raises(train_config.ConfigError, match="fast-cpu runs on the CPU"):
        train_config.resolve("slac", "smoke", backend="fast-cpu", device="cuda")


@pytest.mark.parametrize("algo", ["sac-ae", "slac"])
def test_plain_backend_trains_without_importing_train_fast(algo: str) -> None:
    """backend=plain: a CPU update with none of train.fast loaded (nor any of its private APIs used)."""
    code = f"""
import sys, numpy as np, torch
from train import config as train_config
from train.replay import FrameReplay
from train.workspace import make_agent
cfg = train_config.resolve({algo!r}, "smoke", backend="plain")
shape = (3, cfg.image_size, cfg.image_size)
rng = np.random.default_rng(0)
replay = FrameReplay(100, shape, np.uint8, 1, check_memory=False)
replay.add_first(rng.integers(0, 255, shape).astype(np.uint8))
for _ in range(30):
    replay.add(rng.integers(0, 255, shape).astype(np.uint8), rng.uniform(-1, 1, 1).astype(np.float32), 0.5, 1.0)
agent = make_agent(cfg, (3 * cfg.frame_stack, *shape[1:]), 1, torch.device("cpu"))
for step in range(2):
    metrics = agent.update(replay, rng, step)
assert all(np.isfinite(float(v)) for v in metrics.values())
print(sorted(m for m in sys.modules if m.startswith("train.fast")))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("algo", ["sac-ae", "slac"])
@pytest.mark.parametrize("saved, loaded", [("fast-cpu", "plain"), ("plain", "fast-cpu")])
def test_a_checkpoint_loads_into_either_backend(algo: str, saved: str, loaded: str, tmp_path: Path) -> None:
    """Same parameter names and shapes in every backend: a checkpoint (weights and optimizer state)
    saved by one backend loads into the other, which then acts and trains from it."""
    make = (lambda b: _sac_agent(b)[0]) if algo == "sac-ae" else _slac_agent
    a, b = make(saved), make(loaded)
    with torch.no_grad():
        for m in a.modules().values():
            for p in m.parameters():
                p.add_(0.01 * torch.randn_like(p))
    state = a.state_dict()
    for k, m in b.modules().items():
        assert {n: t.shape for n, t in m.state_dict().items()} == {n: t.shape for n, t in state[k].items()}
    torch.save(state, tmp_path / "agent.pt")
    b.load_state_dict(torch.load(tmp_path / "agent.pt", weights_only=True))
    for k, m in a.modules().items():
        for (n, p), q in zip(m.state_dict().items(), b.modules()[k].state_dict().values()):
            assert torch.equal(p, q), n
    if algo == "sac-ae":
        obs = np.random.default_rng(1).integers(0, 255, (9, 32, 32)).astype(np.uint8)
        np.testing.assert_allclose(a.act(obs, True), b.act(obs, True), rtol=1e-5, atol=1e-5)
    else:
        frames = np.random.default_rng(1).integers(0, 255, (8, 3, 64, 64)).astype(np.uint8)
        actions = np.zeros((7, 2), np.float32)
        np.testing.assert_allclose(a.act(frames, actions, True), b.act(frames, actions, True), rtol=1e-5, atol=1e-5)


def test_an_old_checkpoint_with_4d_linear_weights_is_refused_in_one_line() -> None:
    from train.checkpoint import CheckpointError

    agent, _ = _sac_agent("plain")
    state = agent.state_dict()
    flat = state["critic"]["encoder.fc.weight"]
    state["critic"]["encoder.fc.weight"] = flat.view(flat.size(0), 8, 9, 9)  # MapLinear's (out, C, H, W)
    with pytest.raises(CheckpointError, match="4-d linear weights") as err:
        agent.load_state_dict(state)
    assert "\n" not in str(err.value)


def test_backends_make_the_same_sac_ae_update() -> None:
    """fast-cpu and plain: the same losses (the reconstruction noise included: one rule for both)
    and gradients up to fp32 rounding. Learning rates are 0 so that Adam's normalised first steps
    cannot amplify rounding between the runs."""
    frozen = dict(critic_lr=0.0, actor_lr=0.0, encoder_lr=0.0, decoder_lr=0.0, alpha_lr=0.0)
    runs = []
    for backend in ("fast-cpu", "plain"):
        agent, replay = _sac_agent(backend, **frozen)
        torch.manual_seed(3)
        metrics = agent.update(replay, np.random.default_rng(3), step=0)  # critic, actor + alpha, targets, decoder
        grads = {f"{name}.{key}": p.grad.clone() for name, module in agent.modules().items()
                 for key, p in module.named_parameters() if p.grad is not None}
        runs.append((metrics, grads))
    (fast_metrics, fast_grads), (plain_metrics, plain_grads) = runs
    assert fast_metrics.keys() == plain_metrics.keys() and "rec_loss" in fast_metrics and "actor_loss" in fast_metrics
    for key in fast_metrics:
        torch.testing.assert_close(fast_metrics[key], plain_metrics[key], rtol=1e-4, atol=1e-6)
    assert fast_grads.keys() == plain_grads.keys()
    assert any(k.startswith("decoder.deconvs") for k in fast_grads) and any("trunk" in k for k in fast_grads)
    for key, grad in fast_grads.items():
        torch.testing.assert_close(grad, plain_grads[key], rtol=1e-3, atol=1e-6, msg=key)


def test_backends_make_the_same_slac_model_update() -> None:
    cfg = train_config.resolve("slac", "smoke", model_lr=0.0)
    rng = np.random.default_rng(0)
    replay = FrameReplay(100, (3, 64, 64), np.uint8, 2, check_memory=False)
    replay.add_first(rng.integers(0, 255, (3, 64, 64)).astype(np.uint8))
    for _ in range(30):
        replay.add(rng.integers(0, 255, (3, 64, 64)).astype(np.uint8), rng.uniform(-1, 1, 2).astype(np.float32),
                   0.5, 1.0)
    batch = replay.sample_windows(4, np.random.default_rng(1), cfg.sequence_length)
    runs = []
    for backend in ("fast-cpu", "plain"):
        torch.manual_seed(0)
        agent = SlacAgent(train_config.resolve("slac", "smoke", model_lr=0.0, backend=backend), (3, 64, 64), 2,
                          torch.device("cpu"))  # type: ignore[arg-type]
        torch.manual_seed(1)
        metrics = agent.update_model(batch)
        runs.append((metrics, {n: p.grad.clone() for n, p in agent.model.named_parameters() if p.grad is not None}))
    for key in runs[0][0]:
        torch.testing.assert_close(runs[0][0][key], runs[1][0][key], rtol=1e-4, atol=1e-5)
    for key, grad in runs[0][1].items():
        torch.testing.assert_close(grad, runs[1][1][key], rtol=1e-3, atol=1e-5, msg=key)


# ------------------------------------------------------------------------------- layers
def _compare(fast: nn.Module, plain: nn.Module, shape: tuple[int, ...], channels_last: bool) -> None:
    """Same outputs, input gradients and parameter gradients."""
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ys = [fast(xs[0]), plain(xs[1])]
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ys[1])
    for y in ys:
        y.backward(grad)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-5)
    for p, q in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Conv2d(8, 5, 4), (3, 8, 4, 4)),
    (lambda: nn.ConvTranspose2d(6, 5, 4), (3, 6, 1, 1)),
    (lambda: up_conv(6, 4, 3), (3, 6, 5, 5)),
    (lambda: up_conv(4, 3, 5), (3, 4, 8, 8)),
    (lambda: nn.ConvTranspose2d(4, 9, 3, 2, output_padding=1), (4, 4, 5, 5)),  # SAC+AE's last layer
    (lambda: plain_layers.FlattenLinear(4 * 5 * 6, 7), (3, 4, 5, 6)),
    (lambda: plain_layers.LinearToMap(7, (4, 5, 6)), (3, 7)),
], ids=["dense_conv", "dense_deconv", "up3", "up5_subpixel", "sac_ae_last", "map_linear", "linear_to_map"])
def test_fast_layers_compute_the_plain_layers(make: Callable[[], nn.Module], shape: tuple[int, ...],
                                              channels_last: bool) -> None:
    """Each swapped-in layer (GEMM, adjoint-gradient, sub-pixel, channels_last linear) is the plain
    layer: same parameters, outputs and gradients."""
    torch.manual_seed(0)
    plain = make()
    fast = make()
    fast.load_state_dict(plain.state_dict())
    _fast(fast)
    assert type(fast) is not type(plain)
    _compare(fast, plain, shape, channels_last and len(shape) == 4)


def test_map_layers_keep_the_channels_last_layout() -> None:
    """The encoder's fc reads a channels_last map in place (its gradient keeps the layout); the
    decoder's fc writes its maps channels_last."""
    enc, dec = _fast(plain_layers.FlattenLinear(4 * 5 * 6, 7)), _fast(plain_layers.LinearToMap(7, (4, 5, 6)))
    x = torch.randn(3, 4, 5, 6).contiguous(memory_format=CL).requires_grad_()
    enc(x).sum().backward()
    assert x.grad is not None and is_channels_last(x.grad)
    assert is_channels_last(dec(torch.randn(3, 7)))


@pytest.mark.parametrize("shape", [(3, 32, 5, 7), (4, 9, 6, 6), (2, 3, 8, 8), (2, 3, 5, 5), (1, 16, 1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_sums_are_the_bias_gradient(shape: tuple[int, ...], channels_last: bool) -> None:
    """Every path of channel_sums (per image, wide rows, torch's own) sums each channel over N, H, W."""
    torch.manual_seed(0)
    t = torch.randn(*shape)
    if channels_last:
        t = t.contiguous(memory_format=CL)
    torch.testing.assert_close(channel_sums(t), t.double().sum((0, 2, 3)).float())


@pytest.mark.parametrize("stride, kernel", [(2, 5), (3, 7), (2, 1)])
def test_subpixel_forward_is_the_transposed_conv(stride: int, kernel: int) -> None:
    """The sub-pixel forward (one conv per output phase, then a pixel shuffle) computes the transposed
    conv, with and without autograd, and comes out channels_last at stride x the input size."""
    torch.manual_seed(0)
    plain = up_conv(5, 3, kernel, stride)
    fast = _fast(up_conv(5, 3, kernel, stride))
    fast.load_state_dict(plain.state_dict())
    assert fast.subpixel_index is not None
    x = torch.randn(2, 5, 6, 7).contiguous(memory_format=CL)
    want = plain(x.contiguous())
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            got = fast(x)
        assert got.shape == (2, 3, 6 * stride, 7 * stride) and is_channels_last(got)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_subpixel_is_left_out_where_it_cannot_compute() -> None:
    layer = _fast(nn.ConvTranspose2d(4, 3, 3, 2, 1, 1))  # kernel 3, stride 2: phases reach 0..1, not symmetric
    assert isinstance(layer, ConvTranspose2dConvGrad) and layer.subpixel_index is None


_STACKS = [
    (lambda: FrameEncoder(8).net, (4, 3, 64, 64), "_convolution_pointwise"),
    (lambda: ConvTrunk(9, 4, 8).net, (4, 9, 21, 21), "_convolution_pointwise"),
    (lambda: FrameDecoder(12, 8).net, (4, 12, 1, 1), "_convolution_transpose_pointwise"),
    (lambda: PixelDecoder((9, 21, 21), 6, 4, 8).deconvs, (4, 8, 4, 4), "_convolution_transpose_pointwise"),
]
_STACK_IDS = ["slac_encoder", "sac_ae_trunk", "slac_decoder", "sac_ae_decoder"]


@pytest.mark.parametrize("make, shape, op", _STACKS, ids=_STACK_IDS)
def test_conv_stacks_fuse_their_activations_without_changing_values(
        make: Callable[[], nn.Sequential], shape: tuple[int, ...], op: str) -> None:
    """channels_last CPU passes run each conv or transposed conv with its activation as one oneDNN
    op: the plain layers' values and, through autograd, their gradients. The gradient a caller
    hands in stays as it was (only the stack's own intermediate gradients are overwritten)."""
    torch.manual_seed(0)
    plain = make()
    net = _fast(make())
    net.load_state_dict(plain.state_dict())
    x = torch.rand(shape).contiguous(memory_format=CL)
    with torch.no_grad(), torch.profiler.profile() as prof:
        fused = net(x)
    assert f"mkldnn::{op}" in {e.name for e in prof.events()}
    with torch.no_grad():
        want = plain(x.contiguous())
    torch.testing.assert_close(fused, want, rtol=1e-5, atol=1e-5)
    grads = []
    upstream = torch.linspace(-0.5, 1, want.numel()).view_as(want).contiguous(memory_format=CL)  # sums far from 0
    kept = upstream.clone()
    for module in (net, plain):
        xg = x.clone().requires_grad_()
        module(xg).backward(upstream)
        grads.append([xg.grad] + [p.grad for p in module.parameters()])
    assert torch.equal(upstream, kept)
    for fused_grad, plain_grad in zip(*grads):
        assert fused_grad is not None and fused_grad.abs().sum() > 0
        torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flag", ["MKLDNN_POINTWISE", "ATEN_BACKWARD"])
@pytest.mark.parametrize("make, shape, op", _STACKS, ids=_STACK_IDS)
def test_conv_fallbacks_have_the_kernels_math(monkeypatch: pytest.MonkeyPatch, flag: str,
                                              make: Callable[[], nn.Sequential], shape: tuple[int, ...],
                                              op: str) -> None:
    """Without a private op (an older or newer torch) the swapped-in layers run plain PyTorch: the
    same outputs and gradients as with the kernel, and no oneDNN fused op."""
    torch.manual_seed(0)
    net = _fast(make())
    x = torch.rand(shape).contiguous(memory_format=CL)
    runs = []
    for available in (True, False):
        monkeypatch.setattr(support, flag, available)
        xg = x.clone().requires_grad_()
        with torch.profiler.profile() as prof:
            y = net(xg)
        assert (f"mkldnn::{op}" in {e.name for e in prof.events()}) == available
        y.backward(torch.linspace(-0.5, 1, y.numel()).view_as(y))
        runs.append([y.detach(), xg.grad] + [p.grad.clone() for p in net.parameters()])
        net.zero_grad(set_to_none=True)
    for kernel, fallback in zip(*runs):
        torch.testing.assert_close(kernel, fallback, rtol=1e-4, atol=1e-5)


def test_squared_error_sums_match_the_plain_ones_and_keep_the_layout() -> None:
    a = torch.randn(3, 9, 10, 10).contiguous(memory_format=CL).requires_grad_()
    b = torch.randn(3, 9, 10, 10).contiguous(memory_format=CL)
    fast = squared_error_sums(a, b)
    (grad,) = torch.autograd.grad(fast.sum(), a)
    plain = plain_layers.squared_error_sums(a, b)
    (plain_grad,) = torch.autograd.grad(plain.sum(), a)
    torch.testing.assert_close(fast, plain)
    torch.testing.assert_close(grad, plain_grad)
    assert is_channels_last(grad)  # no layout copies in a channels_last decoder's backward


@pytest.mark.parametrize("shape, dtype", [((2, 9, 5, 6), torch.uint8), ((3, 3, 4, 4), torch.float32),
                                          ((2, 1, 3, 3), torch.uint8)])
def test_channels_last_copy_is_the_layout_copy(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """The plane-by-plane layout copy of a batch (here a strided view, as replay stacks are) has
    torch's values and channels_last strides; an input already laid out so is returned as it is."""
    base = torch.arange(2 * math.prod(shape)).to(dtype).view(shape[0], 2 * shape[1], *shape[2:])
    frames = base[:, 1::2]
    got = channels_last_copy(frames)
    want = frames.contiguous(memory_format=CL)
    assert torch.equal(got, want) and got.stride() == want.stride()
    assert channels_last_copy(want) is want


# ------------------------------------------------------------------------------- Adam, soft updates
def _adam_runs(make_opts: list[Callable[[list[nn.Parameter]], torch.optim.Optimizer]],
               nchw_grad_at: tuple[int, int] | None = None,
               ) -> tuple[list[list[nn.Parameter]], list[torch.optim.Optimizer]]:
    """Four steps of each optimizer on the same channels_last / 2-d / 1-d parameters and gradients;
    nchw_grad_at=(step, param): that gradient assigned in NCHW layout to a channels_last parameter."""
    torch.manual_seed(0)
    shapes = [(6, 5, 7, 7), (8, 3, 3, 3), (4, 9), (4,)]
    made = [torch.randn(s).contiguous(memory_format=CL) if len(s) == 4 else torch.randn(s) for s in shapes]
    runs = [[nn.Parameter(t.clone(memory_format=torch.preserve_format)) for t in made] for _ in make_opts]
    opts = [make(params) for make, params in zip(make_opts, runs)]
    for step in range(4):
        for i, s in enumerate(shapes):
            g = torch.randn(s)
            g = g.contiguous(memory_format=CL) if len(s) == 4 and (step, i) != nchw_grad_at else g
            for params in runs:
                params[i].grad = g.clone()
        for opt in opts:
            opt.step()
    for params in runs:
        assert is_channels_last(params[0]) and not torch.equal(params[0], made[0])
    return runs, opts


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_fused_adam_is_torch_fused_adam_bit_for_bit(weight_decay: float) -> None:
    """FusedAdam hands channels_last tensors to torch's fused kernel as flat views (no layout copies):
    the same parameters and state as torch.optim.Adam(fused=True), layouts kept."""
    runs, opts = _adam_runs([lambda ps: FusedAdam(ps, 1e-2, (0.5, 0.999), weight_decay),
                             lambda ps: torch.optim.Adam(ps, 1e-2, (0.5, 0.999), weight_decay=weight_decay,
                                                         fused=True)])
    for mine, theirs in zip(*runs):
        assert torch.equal(mine, theirs) and mine.stride() == theirs.stride()
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opts[0].state[mine][key], opts[1].state[theirs][key])


def test_fused_adam_pairs_a_gradient_laid_out_unlike_its_parameter() -> None:
    """A hand-assigned NCHW gradient for a channels_last weight updates the right elements (the
    per-tensor Adam loop's result), where torch's fused CPU kernel pairs them in memory order."""
    (mine, loop), _ = _adam_runs([lambda ps: FusedAdam(ps, 1e-2), lambda ps: torch.optim.Adam(ps, 1e-2, foreach=False)],
                                 nchw_grad_at=(2, 1))
    for p, q in zip(mine, loop):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_adam_fallback_has_the_fused_kernels_math(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch's fused Adam kernel the fast backend's Adam is the plain one: the same update."""
    def make(available: bool) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
        def build(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            monkeypatch.setattr(support, "FUSED_ADAM", available)
            return fast_adam(params, 1e-2, (0.5, 0.999), 1e-2)
        return build

    (fused, plain), opts = _adam_runs([make(True), make(False)])
    assert isinstance(opts[0], FusedAdam) and not isinstance(opts[1], FusedAdam)
    for p, q in zip(fused, plain):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_soft_update_and_its_fallback_are_the_plain_lerp(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(3, 4), nn.Conv2d(2, 3, 3))
    targets = [nn.Sequential(nn.Linear(3, 4), nn.Conv2d(2, 3, 3)) for _ in range(3)]
    for t in targets[1:]:
        t.load_state_dict(targets[0].state_dict())
    soft_update(source, targets[0], 0.05)
    for target, available in zip(targets[1:], (True, False)):
        monkeypatch.setattr(support, "FOREACH_LERP", available)
        fast_soft_update(source, target, 0.05)
        for p, q in zip(targets[0].parameters(), target.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_bf16_query_falls_back_to_no_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "CPU_BF16_QUERY", False)
    assert support.cpu_has_bf16_units() is False


# ------------------------------------------------------------------------------- reconstruction loss
def _fused(rec: torch.Tensor, obs: torch.Tensor, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    rec = rec.detach().requires_grad_()
    loss = fused_reconstruction_loss(rec, obs, 5, seeds)
    (grad,) = torch.autograd.grad(loss, rec)
    return loss, grad


@pytest.mark.parametrize("batch", [7, 2])  # not a multiple of the noise runs; fewer samples than runs
def test_fused_reconstruction_loss_is_the_plain_loss(batch: int) -> None:
    """The fused CPU reconstruction loss is the plain one: F.mse_loss against reconstruction_target
    with the same dequantisation noise (the one rule: torch generators seeded per run of samples);
    its gradient is mse_loss's, scaled by an upstream gradient other than 1."""
    seeds = [11, 12, 13, 14]
    obs = torch.randint(0, 256, (batch, 6, 9, 8), dtype=torch.uint8)
    rec = torch.randn(obs.shape)
    loss, grad = _fused(rec, obs, seeds)
    target = reconstruction_target(obs, 5, dequantisation_noise(obs, seeds))
    plain_rec = rec.clone().requires_grad_()
    plain = reconstruction_loss(plain_rec, obs, 5, seeds)
    torch.testing.assert_close(plain, F.mse_loss(rec, target), rtol=0, atol=0)
    (plain_grad,) = torch.autograd.grad(plain * 3.0, plain_rec)
    torch.testing.assert_close(loss, plain)
    rec3 = rec.clone().requires_grad_()
    (grad3,) = torch.autograd.grad(fused_reconstruction_loss(rec3, obs, 5, seeds) * 3.0, rec3)
    torch.testing.assert_close(grad3, plain_grad)
    torch.testing.assert_close(grad * 3.0, plain_grad)
    levels = torch.floor((target + 0.5) * 32)
    assert torch.equal(levels, (obs // 8).float())  # 5 bits: each level 8 of the 256 values
    noise = (target + 0.5) * 32 - levels
    assert len(torch.unique(noise.flatten(1), dim=0)) == batch  # every sample drew its own noise


def test_fused_reconstruction_noise_is_seeded_and_layout_free() -> None:
    seeds = [1, 2, 3, 4]
    obs = torch.randint(0, 256, (5, 9, 8, 8), dtype=torch.uint8)
    rec = torch.randn(obs.shape)
    loss, grad = _fused(rec, obs, seeds)
    again, grad_again = _fused(rec, obs, seeds)
    assert torch.equal(loss, again) and torch.equal(grad, grad_again)
    loss_cl, grad_cl = _fused(rec.contiguous(memory_format=CL), obs.contiguous(memory_format=CL), seeds)
    assert is_channels_last(grad_cl)  # the gradient keeps the decoder's layout
    assert torch.equal(grad_cl, grad)  # the same noise, whatever the layout
    torch.testing.assert_close(loss_cl, loss)
    other, _ = _fused(rec, obs, [1, 2, 3, 5])
    assert not torch.equal(loss, other)
