"""SAC+AE gradient routing and update rates (appendix B): who moves the shared conv trunk, and how fast
the targets follow."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from train import config as C
from train.replay import FrameReplay
from train.layers import channels_last_copy, is_channels_last, linear_to_map, map_linear, mean_squared_error
from train.sac import SacAgent, reconstruction_loss, reconstruction_target
from train.torch_utils import FusedAdam


def _agent(algo: str = "sac-ae", mirror: bool = False, **kw: object) -> tuple[SacAgent, FrameReplay]:
    """mirror: the replay gathers batches as torch tensors, as it does on a GPU."""
    cfg = C.resolve(algo, "smoke", **kw)
    pixels = algo != "sac-state"
    shape = (3, cfg.image_size, cfg.image_size) if pixels else (5,)
    torch.manual_seed(0)
    agent = SacAgent(cfg, (9, cfg.image_size, cfg.image_size) if pixels else shape, 1, torch.device("cpu"))
    replay = FrameReplay(200, shape, np.uint8 if pixels else np.float32, 1,
                         device=torch.device("cpu") if mirror else None)
    rng = np.random.default_rng(0)
    for ep in range(3):
        replay.add_first(rng.integers(0, 255, shape).astype(replay.obs_dtype))
        for _ in range(30):
            replay.add(rng.integers(0, 255, shape).astype(replay.obs_dtype), rng.uniform(-1, 1, 1).astype(np.float32),
                       float(rng.uniform()), 1.0)
    return agent, replay


def _batch(agent: SacAgent, replay: FrameReplay) -> tuple[torch.Tensor, ...]:
    """(obs, action, reward, discount, next_obs), the observations `prepare`d as `update` does."""
    b = replay.sample(agent.cfg.batch_size, np.random.default_rng(1), stack=3)
    return (agent.prepare(agent._obs(b["obs"])), torch.as_tensor(b["action"]), torch.as_tensor(b["reward"])[:, None],
            torch.as_tensor(b["discount"])[:, None] * 0.99, agent.prepare(agent._obs(b["next_obs"])))


def _clone(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_actor_and_critic_share_the_trunk_but_not_the_head() -> None:
    agent, _ = _agent()
    assert agent.actor.encoder.trunk is agent.critic.encoder.trunk
    assert agent.actor.encoder.fc is not agent.critic.encoder.fc
    assert agent.critic_target.encoder.trunk is not agent.critic.encoder.trunk


@pytest.mark.parametrize("algo", ["sac-ae", "sac-state"])
def test_updates_from_a_device_mirrored_replay_match_the_host_path(algo: str) -> None:
    runs = []
    for mirror in (False, True):
        agent, replay = _agent(algo, mirror=mirror)
        rng = np.random.default_rng(2)
        runs.append([{k: float(v) for k, v in agent.update(replay, rng, step).items()} for step in range(2)])
    assert runs[0] == runs[1]


def test_actor_loss_leaves_conv_weights_unchanged() -> None:
    agent, replay = _agent()
    obs = _batch(agent, replay)[0]
    trunk, head = _clone(agent.critic.encoder.trunk), _clone(agent.actor.encoder.fc)
    critic_heads = _clone(agent.critic.q1)
    agent.update_actor_and_alpha(obs, None)
    assert not _changed(trunk, agent.critic.encoder.trunk)
    assert _changed(head, agent.actor.encoder.fc)  # the actor trains its own fc
    assert not _changed(critic_heads, agent.critic.q1)
    # The loss runs through the critic, but computes no gradients there for its next step to inherit.
    assert all(p.grad is None for p in agent.critic.parameters())


def test_critic_and_decoder_losses_move_the_trunk() -> None:
    agent, replay = _agent()
    x, action, reward, discount, next_x = _batch(agent, replay)
    trunk = _clone(agent.critic.encoder.trunk)
    agent.update_critic(x, action, reward, discount, next_x)
    assert _changed(trunk, agent.critic.encoder.trunk)
    trunk, dec = _clone(agent.critic.encoder.trunk), _clone(agent.decoder)
    frames = (x * 255).round().to(torch.uint8)
    agent.update_decoder(frames, agent.critic.encoder.trunk(frames), np.random.default_rng(0))
    assert _changed(trunk, agent.critic.encoder.trunk) and _changed(dec, agent.decoder)


def test_reused_trunk_pass_gives_the_same_actor_update() -> None:
    """The actor may reuse the decoder's trunk pass: the result is identical to a fresh pass."""
    a, replay = _agent()
    b, _ = _agent()
    x = _batch(a, replay)[0]
    torch.manual_seed(5)
    a.update_actor_and_alpha(x, a.critic.encoder.trunk.run(x))
    torch.manual_seed(5)
    b.update_actor_and_alpha(x, None)
    for pa, pb in zip(a.actor.parameters(), b.actor.parameters()):
        assert torch.equal(pa, pb)


def test_targets_follow_at_their_own_rates() -> None:
    agent, replay = _agent("sac-pixel", critic_target_update_freq=1, actor_update_freq=100)  # no decoder step after
    q_before, enc_before = _clone(agent.critic_target.q1), _clone(agent.critic_target.encoder)
    agent.update(replay, np.random.default_rng(0), step=1)
    for old, src, tgt in zip(q_before, agent.critic.q1.parameters(), agent.critic_target.q1.parameters()):
        assert torch.allclose(tgt, 0.99 * old + 0.01 * src, atol=1e-6)  # tau_Q = 0.01
    for old, src, tgt in zip(enc_before, agent.critic.encoder.parameters(), agent.critic_target.encoder.parameters()):
        assert torch.allclose(tgt, 0.95 * old + 0.05 * src, atol=1e-6)  # tau_enc = 0.05


def test_actor_update_frequency_and_alpha() -> None:
    agent, replay = _agent()
    rng = np.random.default_rng(0)
    assert "actor_loss" not in agent.update(replay, rng, step=1)  # odd step: critic (+ decoder) only
    m = agent.update(replay, rng, step=2)
    assert {"actor_loss", "alpha", "ae_loss"} <= m.keys()
    assert float(m["alpha"]) == pytest.approx(0.1, rel=1e-2)  # init temperature 0.1, lr 1e-4


def test_sac_pixel_has_no_decoder_and_sac_state_no_conv() -> None:
    pixel, replay = _agent("sac-pixel")
    assert pixel.decoder is None and "ae_loss" not in pixel.update(replay, np.random.default_rng(0), 2)
    state, sreplay = _agent("sac-state")
    assert not any(isinstance(m, torch.nn.Conv2d) for m in state.critic.modules())
    metrics = state.update(sreplay, np.random.default_rng(0), 2)
    assert np.isfinite(float(metrics["critic_loss"]))


def test_reconstruction_target_is_5_bit() -> None:
    obs = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    noise = torch.rand(obs.shape)
    t = reconstruction_target(obs, 5, noise.clone())
    assert t.min() >= -0.5 and t.max() < 0.5
    levels = torch.floor((t + 0.5) * 32)
    assert torch.equal(levels.flatten(), (torch.arange(256) // 8).float())
    assert torch.allclose(t - (levels / 32 - 0.5), noise / 32, atol=1e-6)  # the noise dequantises within a level


def _cpu_reconstruction(rec: torch.Tensor, obs: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rec = rec.detach().requires_grad_()
    loss = reconstruction_loss(rec, obs, 5, np.random.default_rng(seed))
    (grad,) = torch.autograd.grad(loss, rec)
    return loss, grad


@pytest.mark.parametrize("batch", [7, 2])  # not a multiple of the noise chunks; fewer samples than chunks
def test_cpu_reconstruction_loss_is_the_5_bit_target_mse(batch: int) -> None:
    """The fused CPU reconstruction loss is F.mse_loss against a 5-bit target with its levels'
    dequantisation noise; its gradient is mse_loss's. With rec = 0 the gradient exposes the target."""
    obs = torch.randint(0, 256, (batch, 6, 9, 8), dtype=torch.uint8)
    loss0, grad0 = _cpu_reconstruction(torch.zeros(obs.shape), obs, 4)
    target = -grad0 * obs.numel() / 2
    assert target.min() >= -0.5 and target.max() <= 0.5  # u + 31 may round up to 32
    levels = torch.floor((target + 0.5) * 32)
    assert torch.equal(levels, (obs // 8).float())  # 5 bits: each level 8 of the 256 values
    noise = (target + 0.5) * 32 - levels  # U[0, 1) within the level, 1 for a value that rounded up
    assert 0 <= float(noise.min()) and float(noise.max()) <= 1 and float(noise.mean() - 0.5) ** 2 < 1e-3
    assert len(torch.unique(noise.flatten(1), dim=0)) == batch  # every sample drew its own noise
    torch.testing.assert_close(loss0, target.pow(2).mean())
    rec = torch.randn(obs.shape)
    loss, grad = _cpu_reconstruction(rec, obs, 4)
    torch.testing.assert_close(loss, F.mse_loss(rec, target))
    (ref_grad,) = torch.autograd.grad(F.mse_loss(rec.requires_grad_(), target) * 3.0, rec)
    rec3 = rec.detach().requires_grad_()
    (grad3,) = torch.autograd.grad(reconstruction_loss(rec3, obs, 5, np.random.default_rng(4)) * 3.0, rec3)
    torch.testing.assert_close(grad3, ref_grad)  # an upstream gradient other than 1 scales it


def test_cpu_reconstruction_noise_is_seeded_and_layout_free() -> None:
    obs = torch.randint(0, 256, (5, 9, 8, 8), dtype=torch.uint8)
    rec = torch.randn(obs.shape)
    loss, grad = _cpu_reconstruction(rec, obs, 4)
    again, grad_again = _cpu_reconstruction(rec, obs, 4)
    assert torch.equal(loss, again) and torch.equal(grad, grad_again)
    cl = torch.channels_last
    loss_cl, grad_cl = _cpu_reconstruction(rec.contiguous(memory_format=cl), obs.contiguous(memory_format=cl), 4)
    assert grad_cl.is_contiguous(memory_format=cl)  # the gradient keeps the decoder's layout
    assert torch.equal(grad_cl, grad)  # the same noise, whatever the layout
    torch.testing.assert_close(loss_cl, loss)
    other, _ = _cpu_reconstruction(rec, obs, 5)
    assert not torch.equal(loss, other)


def test_unfused_reconstruction_loss_is_the_reference_computation() -> None:
    """With `fused` off the loss is computed as the reference implementation does: F.mse_loss on the
    5-bit target dequantised with torch.rand noise from torch's seeded stream."""
    obs = torch.randint(0, 256, (3, 9, 8, 8), dtype=torch.uint8)
    rec = torch.randn(obs.shape, requires_grad=True)
    torch.manual_seed(7)
    plain = reconstruction_loss(rec, obs, 5, np.random.default_rng(4), fused=False)
    (grad,) = torch.autograd.grad(plain, rec)
    torch.manual_seed(7)
    target = reconstruction_target(obs, 5, torch.rand(obs.shape))
    torch.testing.assert_close(plain, F.mse_loss(rec.detach(), target), rtol=0, atol=0)
    torch.testing.assert_close(grad, 2 * (rec.detach() - target) / rec.numel())
    torch.manual_seed(8)
    assert not torch.equal(reconstruction_loss(rec, obs, 5, np.random.default_rng(4), fused=False), plain)


@pytest.mark.parametrize("channels_last", [False, True])
def test_map_layers_compute_flatten_linear_in_either_layout(channels_last: bool) -> None:
    """map_linear / linear_to_map (the encoder's fc, the decoder's fc) are Linear on the NCHW-flattened
    map; for channels_last maps they read and write that layout in place: the gradient keeps it."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    lin = torch.nn.Linear(4 * 5 * 6, 7)
    x = torch.randn(3, 4, 5, 6).contiguous(memory_format=fmt).requires_grad_()
    y = map_linear(x, lin.weight, lin.bias)
    torch.testing.assert_close(y, lin(x.detach().flatten(1)))
    y.sum().backward()
    assert x.grad is not None and x.grad.is_contiguous(memory_format=fmt)

    up = torch.nn.Linear(7, 4 * 5 * 6)
    z = torch.randn(3, 7)
    m = linear_to_map(z, up.weight.view(4, 5, 6, 7), up.bias.view(4, 5, 6), channels_last)
    torch.testing.assert_close(m, up(z).view(3, 4, 5, 6))
    assert m.is_contiguous(memory_format=fmt)


def test_paper_preset_is_the_paper() -> None:
    cfg = C.resolve("sac-ae", "paper", env="cheetah-run")
    assert (cfg.batch_size, cfg.hidden_dim, cfg.feature_dim, cfg.critic_tau, cfg.encoder_tau) == (128, 1024, 50, 0.01, 0.05)
    assert (cfg.init_temperature, cfg.alpha_lr, cfg.alpha_beta, cfg.replay_capacity) == (0.1, 1e-4, 0.5, 1_000_000)
    assert (cfg.decoder_latent_lambda, cfg.decoder_weight_lambda, cfg.action_repeat) == (1e-6, 1e-7, 4)
    assert C.resolve("sac-ae", "paper", env="cartpole-swingup").action_repeat == 8


def test_speed_options_change_no_math() -> None:
    """channels_last, the shared trunk pass, foreach Adam, the conv-grad deconvolutions, in-place
    ReLUs and pixels scaled once per batch are the reference's computation reordered: the same losses
    and gradients up to fp32 rounding. Learning rates are 0 so that Adam's normalised first steps
    cannot amplify rounding between the runs. (The fused reconstruction loss draws other noise than
    torch.rand: its own tests hold it to the formula.)"""
    reference = dict(channels_last=False, reuse_trunk=False, foreach_adam=False, deconv_conv_grad=False,
                     inplace_relu=False, prepare_once=False)
    frozen = dict(critic_lr=0.0, actor_lr=0.0, encoder_lr=0.0, decoder_lr=0.0, alpha_lr=0.0)
    runs = []
    for options in ({}, reference):
        agent, replay = _agent("sac-ae", **options, **frozen)
        rng = np.random.default_rng(3)
        torch.manual_seed(3)
        metrics = agent.update(replay, rng, step=0)  # critic, actor + alpha, targets, decoder
        grads = {f"{name}.{key}": p.grad.clone() for name, module in agent.modules().items()
                 for key, p in module.named_parameters() if p.grad is not None}
        runs.append((metrics, grads))
    (fast_metrics, fast_grads), (ref_metrics, ref_grads) = runs
    assert fast_metrics.keys() == ref_metrics.keys() and "ae_loss" in fast_metrics and "actor_loss" in fast_metrics
    for key in fast_metrics:
        torch.testing.assert_close(fast_metrics[key], ref_metrics[key], rtol=1e-4, atol=1e-6)
    assert fast_grads.keys() == ref_grads.keys()
    assert any(k.startswith("decoder.deconvs") for k in fast_grads) and any("trunk" in k for k in fast_grads)
    for key, grad in fast_grads.items():
        torch.testing.assert_close(grad, ref_grads[key], rtol=1e-3, atol=1e-6, msg=key)


@pytest.mark.parametrize("shape, dtype", [((2, 9, 5, 6), torch.uint8), ((3, 3, 4, 4), torch.float32), ((2, 1, 3, 3), torch.uint8)])
def test_channels_last_copy_is_the_layout_copy(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """The plane-by-plane layout copy of a batch (here a strided view, as replay stacks are) has
    torch's values and channels_last strides; an input already laid out so is returned as it is."""
    base = torch.arange(2 * math.prod(shape)).to(dtype).view(shape[0], 2 * shape[1], *shape[2:])
    frames = base[:, 1::2]
    got = channels_last_copy(frames)
    want = frames.contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want) and got.stride() == want.stride()
    assert channels_last_copy(want) is want


def _adam_runs(make_opts: list[Callable[[list[nn.Parameter]], torch.optim.Optimizer]],
               nchw_grad_at: tuple[int, int] | None = None) -> tuple[list[list[nn.Parameter]], list[torch.optim.Optimizer]]:
    """Four steps of each optimizer on the same channels_last / 2-d / 1-d parameters and gradients;
    nchw_grad_at=(step, param): that gradient assigned in NCHW layout to a channels_last parameter."""
    torch.manual_seed(0)
    cl = torch.channels_last
    shapes = [(6, 5, 7, 7), (8, 3, 3, 3), (4, 9), (4,)]
    made = [torch.randn(s).contiguous(memory_format=cl) if len(s) == 4 else torch.randn(s) for s in shapes]
    runs = [[nn.Parameter(t.clone(memory_format=torch.preserve_format)) for t in made] for _ in make_opts]
    opts = [make(params) for make, params in zip(make_opts, runs)]
    for step in range(4):
        for i, s in enumerate(shapes):
            g = torch.randn(s)
            g = g.contiguous(memory_format=cl) if len(s) == 4 and (step, i) != nchw_grad_at else g
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
                             lambda ps: torch.optim.Adam(ps, 1e-2, (0.5, 0.999), weight_decay=weight_decay, fused=True)])
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


@pytest.mark.parametrize("channels_last", [False, True])
def test_mean_squared_error_matches_mse_loss_and_keeps_the_layout(channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    a = torch.randn(3, 9, 10, 10).contiguous(memory_format=fmt).requires_grad_()
    b = torch.randn(3, 9, 10, 10).contiguous(memory_format=fmt)
    loss = mean_squared_error(a, b)
    (grad,) = torch.autograd.grad(loss, a)
    (ref_grad,) = torch.autograd.grad(torch.nn.functional.mse_loss(a, b), a)
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(a, b))
    torch.testing.assert_close(grad, ref_grad)
    assert grad.is_contiguous(memory_format=fmt)  # no layout copies in a channels_last decoder's backward


def test_bf16_autocast_update_stays_close_to_float32() -> None:
    """`--set bf16=true`: the same update under bf16 autocast; losses within bf16 rounding of the
    float32 ones, trunk and decoder still learning, parameters kept in float32."""
    metrics = []
    for bf16 in (False, True):
        agent, replay = _agent("sac-ae", bf16=bf16)
        trunk, dec = _clone(agent.critic.encoder.trunk), _clone(agent.decoder)
        torch.manual_seed(3)
        m = agent.update(replay, np.random.default_rng(3), step=0)
        assert _changed(trunk, agent.critic.encoder.trunk) and _changed(dec, agent.decoder)
        assert all(p.dtype == torch.float32 for p in agent.critic.parameters())
        metrics.append(m)
    for key in ("critic_loss", "rec_loss", "actor_loss"):
        assert float(metrics[1][key]) == pytest.approx(float(metrics[0][key]), rel=0.05, abs=1e-3), key


def test_weights_that_do_not_fit_the_networks_are_a_checkpoint_error() -> None:
    """A checkpoint from another configuration (or from before the fc layers kept 4-d weights) is
    refused with a one-line CheckpointError (the CLI's exit 2), not a torch traceback."""
    from train.checkpoint import CheckpointError

    agent, _ = _agent("sac-ae")
    state = agent.state_dict()
    flat = state["critic"]["encoder.fc.weight"]
    state["critic"]["encoder.fc.weight"] = flat.reshape(flat.size(0), -1)  # the old nn.Linear shape
    with pytest.raises(CheckpointError, match="critic weights do not fit") as err:
        agent.load_state_dict(state)
    assert "\n" not in str(err.value)
