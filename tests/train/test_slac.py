"""SLAC (train/slac_model.py, train/slac.py): architecture, the model objective's terms against
hand-computed values, gradient routing, the padding contract shared by training windows and acting,
and a CLI run with its resume."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from sacae_deploy.contract import PADDING_RULE
from train import config as train_config
from train.replay import FrameReplay
from train.slac import HistoryPolicy, SlacAgent
from train.slac_model import FrameDecoder, FrameEncoder, Gaussian, LatentModel, gaussian_kl, gaussian_log_prob

A = 2  # action dim of the synthetic data


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny networks: a second intra-op thread only adds synchronisation (and stalls on a busy box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _agent(**kw: object) -> SlacAgent:
    cfg = train_config.resolve("slac", "smoke", **kw)
    torch.manual_seed(0)
    return SlacAgent(cfg, (3, 64, 64), A, torch.device("cpu"))  # type: ignore[arg-type]


def _frame(i: int) -> np.ndarray:
    """A distinct, smooth frame per index: a bright square whose position encodes i."""
    f = np.full((3, 64, 64), 40, np.uint8)
    r, c = (i * 7) % 48, (i * 13) % 48
    f[:, r:r + 16, c:c + 16] = 220
    f[0, 0, 0] = i % 256  # identifies the frame exactly
    return f


def _replay(episodes: int = 3, length: int = 20, seed: int = 0, device: torch.device | None = None) -> FrameReplay:
    rng = np.random.default_rng(seed)
    replay = FrameReplay(500, (3, 64, 64), np.uint8, A, check_memory=False, device=device)
    i = 0
    for _ in range(episodes):
        replay.add_first(_frame(i))
        for _ in range(length):
            i += 1
            replay.add(_frame(i), np.tanh(rng.normal(0, 2, A)).astype(np.float32), float(rng.uniform()), 1.0)
        i += 1
    return replay


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


# ---------------------------------------------------------------------------------------- shapes
def test_paper_architecture_shapes() -> None:
    enc = FrameEncoder(32)
    convs = [m for m in enc.net if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (32, 5, 2), (64, 3, 2), (128, 3, 2), (256, 3, 2), (256, 4, 1)]
    frames = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert enc(frames).shape == (2, 256)
    dec = FrameDecoder(32 + 256, 32)
    deconvs = [m for m in dec.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in deconvs] == [
        (256, 4, 1), (128, 3, 2), (64, 3, 2), (32, 3, 2), (3, 5, 2)]
    assert dec(torch.randn(2, 288)).shape == (2, 3, 64, 64)
    assert not isinstance(dec.net[-1], torch.nn.LeakyReLU)  # the output layer is linear (appendix B)

    cfg = train_config.resolve("slac", "paper", env="cheetah-run")
    assert (cfg.z1_dim, cfg.z2_dim, cfg.batch_size, cfg.model_batch_size, cfg.sequence_length) == (32, 256, 256, 32, 8)
    assert (cfg.action_repeat, cfg.decoder_variance, cfg.replay_capacity) == (4, 0.1, 100_000)
    assert cfg.pretrain_updates == 50_000
    assert cfg.seed_steps == 10 * 1000 // 4 and cfg.eval_mean_action is False
    assert (cfg.history_length, cfg.history_padding) == (8, PADDING_RULE)
    assert train_config.resolve("slac", "paper", env="walker-walk").decoder_variance == 0.4
    assert train_config.resolve("slac", "paper", env="ball_in_cup-catch").decoder_variance == 0.04
    assert train_config.resolve("slac", "paper", env="finger-spin").action_repeat == 1
    # SLAC's own table, not SAC+AE's 8:
    assert train_config.resolve("slac", "paper", env="cartpole-swingup").action_repeat == 4


def test_filter_and_heads_shapes() -> None:
    agent = _agent()
    cfg, model = agent.cfg, agent.model
    b, t = 3, cfg.sequence_length
    feats = torch.randn(b, t + 1, agent.feature_dim)
    post = model.filter(feats, torch.zeros(b, t, A))
    assert post.z.shape == (b, t + 1, cfg.z1_dim + cfg.z2_dim)
    assert (post.z1_std > 0).all()
    history = agent.actor.history_input(feats[:, 1:], torch.zeros(b, t - 1, A))
    pi, log_pi = agent.actor.sample(history)
    assert pi.shape == (b, A) and log_pi.shape == (b, 1) and (pi.abs() < 1).all()
    q1, q2 = agent.critic.q(post.z[:, -1], pi)
    assert q1.shape == q2.shape == (b, 1)


def test_restart_uses_the_first_posterior() -> None:
    """Where a window holds padding, the filter restarts from q(z1|x) at the episode's first frame."""
    model = _agent().model
    feats = torch.randn(2, 4, model.encoder.feature_dim)
    valid = torch.tensor([[True, True, True], [False, False, True]])
    post = model.filter(feats, torch.randn(2, 3, A), valid)
    first_mean, _ = model.z1_first_posterior(feats[1, 2])
    assert torch.allclose(post.z1_mean[1, 2], first_mean)
    assert post.restart.tolist() == [[True, False, False, False], [True, True, True, False]]


# ----------------------------------------------------------------------- objective, hand values
def test_gaussian_helpers_match_hand_values() -> None:
    kl = gaussian_kl(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(0.0), torch.tensor(1.0))
    assert kl.item() == pytest.approx(math.log(1 / 2) + (4 + 1) / 2 - 0.5)
    same = gaussian_kl(torch.tensor(0.3), torch.tensor(0.7), torch.tensor(0.3), torch.tensor(0.7))
    assert same.item() == pytest.approx(0.0, abs=1e-7)
    lp = gaussian_log_prob(torch.tensor(1.0), torch.tensor(0.0), math.sqrt(0.1))
    assert lp.item() == pytest.approx(-0.5 * 1 / 0.1 - 0.5 * math.log(0.1) - 0.5 * math.log(2 * math.pi))


def test_std_gradient_is_clipped_before_softplus() -> None:
    g = Gaussian(3, 1, 4, std_grad_clip=10.0)
    mean, std = g(torch.randn(1, 3))
    (1e6 * std.sum()).backward()
    bias_grad = g.net[-1].bias.grad
    assert bias_grad[1].item() == pytest.approx(10.0)  # d/d(pre-softplus) clipped to +10
    assert bias_grad[0].item() == 0.0  # the mean does not enter the loss


def _constant(head: Gaussian, mean: float, std: float) -> None:
    """Make a Gaussian head output N(mean, std^2) whatever its input."""
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        bias = head.net[-1].bias
        half = bias.numel() // 2
        bias[:half] = mean
        bias[half:] = math.log(math.expm1(std - 1e-5))  # softplus^-1(std - floor)


@pytest.mark.parametrize("valid, frames", [([True, True], 3), ([False, True], 2), ([False, False], 1)])
def test_model_terms_match_hand_values(valid: list[bool], frames: int) -> None:
    """q(z1) = N(1, 0.5^2), priors N(0, 1), decoder 0 on black frames, reward N(0, 1) on r = 0:
    every counted frame adds the same KL and image NLL, every real transition the same reward NLL;
    padding copies count for nothing."""
    model = LatentModel(A, z1_dim=2, z2_dim=3, hidden=8, base_depth=2, decoder_variance=0.1)
    for head in (model.z1_prior, model.reward):
        _constant(head, 0.0, 1.0)
    for p in model.decoder.parameters():
        torch.nn.init.zeros_(p)
    t1 = 3
    post = model.filter(torch.randn(1, t1, model.encoder.feature_dim), torch.zeros(1, t1 - 1, A),
                        torch.tensor([valid]))
    post.z1_mean = torch.ones_like(post.z1_mean)
    post.z1_std = torch.full_like(post.z1_std, 0.5)
    images = FrameEncoder.prepare(torch.zeros(t1, 3, 64, 64, dtype=torch.uint8))
    _, m = model.loss(images, post, torch.zeros(1, t1 - 1, A), torch.zeros(1, t1 - 1), torch.tensor([valid]))

    kl_per_frame = 2 * (math.log(1 / 0.5) + (0.25 + 1) / 2 - 0.5)  # two z1 dimensions
    nll_per_pixel = 0.5 * math.log(0.1) + 0.5 * math.log(2 * math.pi)
    assert m["kl"].item() == pytest.approx(frames * kl_per_frame, rel=1e-5)
    assert m["image_nll"].item() == pytest.approx(frames * 3 * 64 * 64 * nll_per_pixel, rel=1e-5)
    assert m["reward_nll"].item() == pytest.approx(sum(valid) * 0.5 * math.log(2 * math.pi), rel=1e-5)
    assert m["model_loss"].item() == pytest.approx(m["kl"].item() + m["image_nll"].item() + m["reward_nll"].item(),
                                                   rel=1e-5)


def test_model_loss_falls_on_a_fixed_batch() -> None:
    agent = _agent(model_lr=1e-3, base_depth=4, z1_dim=8, z2_dim=16, model_hidden=32)
    batch = _replay().sample_windows(8, np.random.default_rng(1), agent.cfg.sequence_length)
    losses = [agent.update_model(batch)["model_loss"].item() for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_updates_from_a_device_mirrored_replay_match_the_host_path() -> None:
    """On a GPU the replay serves frames as device tensors; the update must not care."""
    runs = []
    for device in (None, torch.device("cpu")):
        agent, replay = _agent(), _replay(device=device)
        rng = np.random.default_rng(7)
        runs.append([{k: float(v) for k, v in agent.update(replay, rng, step).items()} for step in range(2)])
    assert runs[0] == runs[1]


# ----------------------------------------------------------------------------- gradient routing
def test_sac_update_leaves_the_encoder_and_model_unchanged() -> None:
    agent = _agent()
    batch = _replay().sample_windows(agent.cfg.batch_size, np.random.default_rng(2), agent.cfg.sequence_length)
    model, actor, critic = _params(agent.model), _params(agent.actor), _params(agent.critic)
    metrics = agent.update_sac(batch)
    assert not _changed(model, agent.model)  # neither the actor nor the critic moves the conv encoder
    assert _changed(actor, agent.actor) and _changed(critic, agent.critic)
    assert set(metrics) == {"critic_loss", "actor_loss", "alpha_loss", "alpha", "entropy"}
    assert not any(p is q for p in agent.actor.parameters() for q in agent.encoder.parameters())
    enc = _params(agent.encoder)
    agent.update_model(batch)
    assert _changed(enc, agent.encoder)  # the model objective is what trains it


def test_sac_update_encodes_each_distinct_frame_once_with_the_same_result() -> None:
    """Overlapping windows and padding repeat frames: the SAC batch carries each stored frame once
    (`distinct`, what the agent samples by default), the update encodes each once and makes the very
    update that encoding every window position makes."""
    replay = _replay()
    full = replay.sample_windows(64, np.random.default_rng(3), 8)  # 576 positions of 63 stored frames
    once = replay.sample_windows(64, np.random.default_rng(3), 8, distinct=True)
    slots = full["frame_slots"]
    assert slots.shape == (64, 9) and np.array_equal(replay.obs[slots], full["frames"])
    assert np.array_equal(once["frame_slots"], slots) and "frame_of" not in full
    assert np.array_equal(once["frames"][once["frame_of"]], full["frames"])
    distinct = len(np.unique(slots))
    assert len(once["frames"]) == distinct < slots.size
    encoded, metrics, params = [], [], []
    for batch in (once, full):  # full: every position, as the reference
        agent = _agent()
        seen: list[int] = []
        encode = agent._encode_no_grad
        agent._encode_no_grad = lambda f, encode=encode, seen=seen: (seen.append(len(f)), encode(f))[1]  # type: ignore
        torch.manual_seed(1)
        m = agent.update_sac(batch)
        encoded.append(sum(seen))
        metrics.append({k: float(v) for k, v in m.items()})
        params.append(_params(agent.actor) + _params(agent.critic))
    assert encoded == [distinct, slots.size]
    assert metrics[0] == metrics[1]
    assert all(torch.equal(a, b) for a, b in zip(*params))
    for distinct_frames in (True, False):  # False: benchmarks/slac_update.py's reference-style mode
        agent = _agent()
        agent.distinct_frames = distinct_frames
        batch = agent.sample_sac_batch(replay, np.random.default_rng(3))
        assert ("frame_of" in batch) == distinct_frames


def test_windows_ending_on_an_episode_start_do_not_train_the_critic() -> None:
    agent = _agent()
    z = torch.randn(4, agent.cfg.z1_dim + agent.cfg.z2_dim)
    history = torch.randn(4, agent.actor.trunk[0].in_features)
    before = _params(agent.critic)
    out = agent.update_critic(z, torch.zeros(4, A), torch.ones(4), torch.ones(4), z, history,
                              torch.zeros(4, dtype=torch.bool))
    assert out["critic_loss"].item() == 0.0 and not _changed(before, agent.critic)


# ------------------------------------------------------------------------ the padding contract
def test_episode_policy_starts_with_the_padding_rule() -> None:
    agent = _agent()
    policy = agent.episode_policy(mean=False)
    policy.reset(_frame(0))
    frames, actions = policy.history()
    assert frames.shape == (8, 3, 64, 64) and all(np.array_equal(f, _frame(0)) for f in frames)
    assert actions.shape == (7, A) and not actions.any()
    a = policy.act(_frame(0))
    assert a.shape == (A,) and np.all(np.abs(a) < 1)
    frames, actions = policy.history()
    assert all(np.array_equal(f, _frame(0)) for f in frames)  # the first act sees the reset frame only


def test_acting_history_equals_the_training_window() -> None:
    """At every step of an episode the policy's history is the replay window ending there: the
    same padding rule on both sides (contract.PADDING_RULE)."""
    agent = _agent()
    h, rng = agent.cfg.history_length, np.random.default_rng(3)
    replay = FrameReplay(100, (3, 64, 64), np.uint8, A, check_memory=False)
    policy: HistoryPolicy = agent.episode_policy(mean=True)
    expected: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    obs = _frame(0)
    policy.reset(obs)
    replay.add_first(obs)
    for i in range(1, 15):
        if i % 3:
            action = policy.act(obs)
        else:
            action = agent.random_action(rng)
            policy.record(obs, action)
        expected[i - 1] = policy.history()
        obs = _frame(i)
        replay.add(obs, action, 0.0, 1.0)
    windows = replay.sample_windows(200, rng, agent.cfg.sequence_length)
    seen = set()
    for frames, actions in zip(windows["frames"], windows["action"]):
        step = int(frames[-1, 0, 0, 0])
        if step in expected:
            want_frames, want_actions = expected[step]
            np.testing.assert_array_equal(frames[-h:], want_frames)
            np.testing.assert_array_equal(actions[-(h - 1):], want_actions)
            seen.add(step)
    assert {0, 1, 7, 8} <= seen  # padded (0, 1), just-filled (7) and full (8) histories all checked


def test_pretrain_runs_the_model_updates_and_reports_progress() -> None:
    agent = _agent(pretrain_updates=3)
    messages: list[tuple[int, str]] = []
    enc, actor = _params(agent.encoder), _params(agent.actor)
    agent.pretrain(_replay(), np.random.default_rng(7), lambda step, info: messages.append((step, info["message"])))
    assert _changed(enc, agent.encoder) and not _changed(actor, agent.actor)  # the model only
    assert messages[0][1].startswith("pretraining the latent model: 3 updates")
    assert "pretrain 3/3" in messages[-1][1]
    assert {step for step, _ in messages} == {agent.cfg.seed_steps * agent.cfg.action_repeat}


def test_random_action_is_tanh_of_a_wide_gaussian() -> None:
    agent = _agent()
    rng = np.random.default_rng(4)
    a = np.stack([agent.random_action(rng) for _ in range(4000)])
    assert a.dtype == np.float32 and np.all(np.abs(a) < 1)
    assert np.std(np.arctanh(np.clip(a, -0.999999, 0.999999))) == pytest.approx(2.0, rel=0.1)


# ---------------------------------------------------------------------- export-facing modules
def test_exporter_modules_give_the_acting_mean_action() -> None:
    agent = _agent(backend="plain")
    frames = np.stack([_frame(i) for i in range(8)])
    actions = np.random.default_rng(5).uniform(-1, 1, (7, A)).astype(np.float32)
    with torch.no_grad():
        feats = agent.encoder(torch.as_tensor(frames))  # one frame per row: (8, F)
        assert feats.shape == (8, agent.feature_dim)
        out = agent.actor(feats[None], torch.as_tensor(actions)[None])
    np.testing.assert_allclose(out[0].numpy(), agent.act(frames, actions, mean=True), rtol=1e-6, atol=1e-6)


def test_state_dict_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    a, b = _agent(), _agent(seed=7)
    batch = _replay().sample_windows(4, np.random.default_rng(6), 8)
    a.update_model(batch)
    a.update_sac(batch)
    torch.save(a.state_dict(), tmp_path / "agent.pt")
    b.load_state_dict(torch.load(tmp_path / "agent.pt", weights_only=True))
    for k, m in a.modules().items():
        for p, q in zip(m.state_dict().values(), b.modules()[k].state_dict().values()):
            assert torch.equal(p, q)
    assert torch.equal(a.log_alpha, b.log_alpha)
    assert b.model_opt.state_dict()["state"].keys() == a.model_opt.state_dict()["state"].keys()


# --------------------------------------------------------------------------------------- CLI
def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _train(*args: str) -> subprocess.CompletedProcess[str]:
    """`sacae train ...` as a user types it (the virtualenv's entry point), headless rendering."""
    exe = Path(sys.executable).parent / "sacae"
    proc = subprocess.run([str(exe), "train", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_smoke_cli_run_and_resume(run_dir: Path) -> None:
    common = ["--algo", "slac", "--env", "cartpole-swingup", "--out", str(run_dir), "--preset", "smoke"]
    proc = _train(*common)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["env_step"] == 320
    assert "pretrain 5/5" in proc.stderr
    cfg = json.loads((run_dir / "config.json").read_text())
    assert (cfg["algo"], cfg["history_length"], cfg["history_padding"]) == ("slac", 8, PADDING_RULE)
    assert (cfg["image_size"], cfg["frame_stack"], cfg["action_repeat"]) == (64, 1, 4)
    train = _rows(run_dir / "train.csv")
    assert [int(r["env_step"]) for r in train] == list(range(40, 321, 40))
    assert train[-1]["model_loss"] and train[-1]["critic_loss"]
    assert [int(r["env_step"]) for r in _rows(run_dir / "eval.csv")] == [0, 160, 320]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000000320"

    proc = _train(*common, "--resume", "--env-steps", "480")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["env_step"] == 480
    assert "pretrain" not in proc.stderr  # the checkpoint says the model is already pretrained
    train = _rows(run_dir / "train.csv")
    assert [int(r["env_step"]) for r in train] == list(range(40, 481, 40))
    assert [int(r["agent_step"]) for r in train][-1] == 120
    evals = [int(r["env_step"]) for r in _rows(run_dir / "eval.csv")]
    assert set(evals) == {0, 160, 320, 480} and evals[-1] == 480
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000000480"


def test_bf16_autocast_updates_stay_close_to_float32() -> None:
    """`--set bf16=true`: the same update under bf16 autocast; losses within bf16 rounding of the
    float32 ones, every network still learning, parameters kept in float32."""
    batch = _replay().sample_windows(8, np.random.default_rng(3), 8)
    losses = []
    for bf16 in (False, True):
        agent = _agent(bf16=bf16)
        before = _params(agent.model)
        torch.manual_seed(4)
        metrics = {**agent.update_model(batch), **agent.update_sac(batch)}
        assert _changed(before, agent.model) and all(torch.isfinite(v).all() for v in metrics.values())
        assert all(p.dtype == torch.float32 for p in agent.model.parameters())
        losses.append(float(metrics["model_loss"]))
    assert losses[1] == pytest.approx(losses[0], rel=0.05)


def test_the_sac_part_learns_the_action_that_earns_reward() -> None:
    """A sign, detach or indexing error in the critic or actor update fails this: with discount 0 the
    critic's target is the reward itself, here highest at the action (0.5, -0.5) whatever the frames
    show. The policy's actions must come to earn more than at the start, on the target's side of
    each axis (SAC first narrows a wide policy towards a corner, so the mean action need not be at
    the target yet)."""
    target = np.array([0.5, -0.5], np.float32)

    def reward(a: np.ndarray) -> np.ndarray:
        return 1.0 - np.sum((a - target) ** 2, axis=-1)

    rng = np.random.default_rng(0)
    replay = FrameReplay(2_000, (3, 64, 64), np.uint8, A, check_memory=False)
    i = 0
    for _ in range(20):
        replay.add_first(_frame(i))
        for _ in range(40):
            i += 1
            a = rng.uniform(-1, 1, A).astype(np.float32)
            replay.add(_frame(i), a, float(reward(a)), 1.0)
        i += 1
    agent = _agent(discount=0.0, init_log_alpha=-5.0, actor_lr=3e-3, critic_lr=3e-3)
    frames, actions = np.stack([_frame(i) for i in range(8)]), np.zeros((7, A), np.float32)

    def earned() -> float:
        return float(np.mean([reward(agent.act(frames, actions, mean=False)) for _ in range(200)]))

    start = earned()
    for _ in range(300):
        agent.update_sac(agent.sample_sac_batch(replay, rng))
    end, mean_action = earned(), agent.act(frames, actions, mean=True)
    assert end > start + 0.3 and end > 0.4, (start, end)
    assert np.array_equal(np.sign(mean_action), np.sign(target)), mean_action
