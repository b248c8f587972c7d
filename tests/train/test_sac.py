"""SAC+AE gradient routing and update rates (appendix B): who moves the shared conv trunk, and how fast
the targets follow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train import config as train_config
from train.reconstruction import dequantisation_noise, noise_seeds, reconstruction_loss, reconstruction_target
from train.replay import FrameReplay
from train.sac import SacAgent


def _agent(algo: str = "sac-ae", mirror: bool = False, **kw: object) -> tuple[SacAgent, FrameReplay]:
    """mirror: the replay gathers batches as torch tensors, as it does on a GPU."""
    cfg = train_config.resolve(algo, "smoke", **kw)
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
    # Temperature: d(alpha loss)/d(log alpha) = alpha * (entropy - target entropy), and Adam's first
    # step moves log alpha by the learning rate against that sign: alpha falls while the policy's
    # entropy is above the target -|A| and rises below it.
    gap = float(m["entropy"]) - agent.target_entropy
    assert agent.target_entropy == -1.0  # cartpole: one action dimension
    want = agent.cfg.init_temperature * np.exp(-agent.cfg.alpha_lr * np.sign(gap))
    assert float(m["alpha"]) == pytest.approx(want, rel=1e-5)


def test_sac_pixel_has_no_decoder_and_sac_state_no_conv() -> None:
    pixel, replay = _agent("sac-pixel")
    assert pixel.decoder is None and "ae_loss" not in pixel.update(replay, np.random.default_rng(0), 2)
    state, sreplay = _agent("sac-state")
    assert not any(isinstance(m, torch.nn.Conv2d) for m in state.critic.modules())
    before = _clone(state.critic)
    metrics = state.update(sreplay, np.random.default_rng(0), 2)
    assert float(metrics["critic_loss"]) > 0 and _changed(before, state.critic)  # a squared TD error, and a step


def test_reconstruction_target_is_5_bit() -> None:
    obs = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    noise = torch.rand(obs.shape)
    t = reconstruction_target(obs, 5, noise.clone())
    assert t.min() >= -0.5 and t.max() < 0.5
    levels = torch.floor((t + 0.5) * 32)
    assert torch.equal(levels.flatten(), (torch.arange(256) // 8).float())
    assert torch.allclose(t - (levels / 32 - 0.5), noise / 32, atol=1e-6)  # the noise dequantises within a level


def test_reconstruction_loss_is_mse_to_the_seeded_5_bit_target() -> None:
    """F.mse_loss on the 5-bit target dequantised with noise drawn by one rule on every device: runs
    of samples, each from a torch.Generator seeded by the update's rng (`noise_seeds`)."""
    obs = torch.randint(0, 256, (5, 9, 8, 8), dtype=torch.uint8)
    rec = torch.randn(obs.shape, requires_grad=True)
    seeds = noise_seeds(np.random.default_rng(4))
    assert seeds == noise_seeds(np.random.default_rng(4)) and len(set(seeds)) == len(seeds)
    loss = reconstruction_loss(rec, obs, 5, seeds)
    (grad,) = torch.autograd.grad(loss, rec)
    noise = dequantisation_noise(obs, seeds)
    assert torch.equal(noise[:2], torch.rand((2, 9, 8, 8), generator=torch.Generator().manual_seed(seeds[0])))
    target = reconstruction_target(obs, 5, noise)
    torch.testing.assert_close(loss, F.mse_loss(rec.detach(), target), rtol=0, atol=0)
    torch.testing.assert_close(grad, 2 * (rec.detach() - target) / rec.numel())
    assert not torch.equal(reconstruction_loss(rec, obs, 5, noise_seeds(np.random.default_rng(5))), loss)


def test_paper_preset_is_the_paper() -> None:
    cfg = train_config.resolve("sac-ae", "paper", env="cheetah-run")
    assert (cfg.batch_size, cfg.hidden_dim, cfg.feature_dim) == (128, 1024, 50)
    assert (cfg.critic_tau, cfg.encoder_tau) == (0.01, 0.05)
    assert (cfg.init_temperature, cfg.alpha_lr, cfg.alpha_beta, cfg.replay_capacity) == (0.1, 1e-4, 0.5, 1_000_000)
    assert (cfg.decoder_latent_lambda, cfg.decoder_weight_lambda, cfg.action_repeat) == (1e-6, 1e-7, 4)
    assert train_config.resolve("sac-ae", "paper", env="cartpole-swingup").action_repeat == 8


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
    """A checkpoint from another configuration is refused with a one-line CheckpointError (the
    CLI's exit 2), not a torch traceback."""
    from train.checkpoint import CheckpointError

    agent, _ = _agent("sac-ae")
    state = agent.state_dict()
    weight = state["critic"]["encoder.fc.weight"]
    state["critic"]["encoder.fc.weight"] = weight[:, :-8]  # another image size's fc
    with pytest.raises(CheckpointError, match="critic weights do not fit") as err:
        agent.load_state_dict(state)
    assert "\n" not in str(err.value)
