"""Has a SLAC run's latent model learned the scene? A probe of its newest checkpoint on fresh episodes.

SLAC's critic sees only the filtering latent z, so SLAC learns nothing until its model encodes the
robot. This script plays `--episodes` fresh episodes of the run's task with SLAC's seed actions
(tanh(N(0, 2^2))), runs the model's filter over each, and reports:

- a ridge-regression probe from the posterior means z1 to the physics state (positions as cos/sin
  for hinges, and velocities), fitted on all but the last two episodes and scored (R^2) on those;
  the same probe on the conv features of single frames, and on an untrained model's z1, as anchors;
- how much the decoder's image depends on z (mean |decode(z) - decode(z shuffled over frames)|,
  against |decode(z) - decode(0)|): a decoder that draws the same picture for every z has not
  learned the objects;
- the critic: correlation of min(Q1, Q2)(z_t, a_t) with the discounted return-to-go, and mean
  |Q(z, +1) - Q(z, -1)| over each action dimension;
- which of the model's parameter groups get no gradient from one model loss (eq. 7) on 8-step
  windows cut from the episodes (a detach there would leave the latent untrained);
- DIR/slac_reconstruction.png (with `--out DIR`): frames of a held-out episode over their decoded
  posterior samples.

    MUJOCO_GL=egl .venv/bin/python benchmarks/slac_latent_probe.py RUN_DIR [--episodes 6] [--out DIR]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

# The repository root goes first: this folder's distractors.py would otherwise shadow the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from export.onnx_export import load_run  # noqa: E402
from sacae_deploy.sim.envs import make_env  # noqa: E402
from train.workspace import make_agent  # noqa: E402

HELD_OUT = 2  # episodes the probe is scored on
RIDGE = 1.0  # on standardised inputs


def physics_state(env: Any) -> np.ndarray:
    """Joint positions (hinges as cos, sin; slides as they are) and velocities."""
    physics = env.physics
    model, qpos = physics.model, physics.data.qpos
    parts = []
    for j in range(model.njnt):
        adr = model.jnt_qposadr[j]
        if model.jnt_type[j] == 3:  # mjJNT_HINGE
            parts += [np.cos(qpos[adr]), np.sin(qpos[adr])]
        elif model.jnt_type[j] == 2:  # mjJNT_SLIDE
            parts.append(qpos[adr])
    return np.asarray(parts + list(physics.data.qvel), np.float64)


def play(cfg: Any, episodes: int, seed: int) -> list[dict[str, np.ndarray]]:
    env = make_env(cfg.env, seed, pixels=True, action_repeat=cfg.action_repeat, image_size=cfg.image_size,
                   frame_stack=1, episode_length=cfg.episode_length)
    rng = np.random.default_rng(seed)
    out = []
    try:
        for e in range(episodes):
            frames, actions, rewards, states = [env.reset(seed=seed + e)], [], [], [physics_state(env)]
            done = False
            while not done:
                action = np.tanh(rng.normal(0.0, cfg.random_action_scale, env.action_dim)).astype(np.float32)
                step = env.step(action)
                frames.append(step.obs)
                actions.append(action)
                rewards.append(step.reward)
                states.append(physics_state(env))
                done = step.last
            out.append({"frames": np.stack(frames), "actions": np.stack(actions), "rewards": np.asarray(rewards),
                        "states": np.stack(states)})
    finally:
        env.close()
    return out


@torch.no_grad()
def filtered(agent: Any, episode: dict[str, np.ndarray]) -> tuple[Any, torch.Tensor]:
    """The filtering posterior over a whole episode and its per-frame conv features."""
    features = agent.model.encoder(torch.as_tensor(episode["frames"])).float()
    return agent.model.filter(features[None], torch.as_tensor(episode["actions"])[None]), features


def probe_r2(inputs: list[np.ndarray], targets: list[np.ndarray]) -> list[float]:
    """R^2 per target on the held-out episodes of a ridge fit on the others."""
    x, y = np.concatenate(inputs[:-HELD_OUT]), np.concatenate(targets[:-HELD_OUT])
    xt, yt = np.concatenate(inputs[-HELD_OUT:]), np.concatenate(targets[-HELD_OUT:])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    a = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.linalg.solve(a.T @ a + RIDGE * np.eye(a.shape[1]), a.T @ y)
    pred = np.c_[(xt - mu) / sd, np.ones(len(xt))] @ w
    return [round(float(1 - ((pred[:, j] - yt[:, j]) ** 2).mean() / max(yt[:, j].var(), 1e-12)), 3)
            for j in range(y.shape[1])]


@torch.no_grad()
def critic_check(agent: Any, cfg: Any, episodes: list[dict[str, np.ndarray]]) -> dict[str, float]:
    corr, spread = [], []
    for episode in episodes[-HELD_OUT:]:
        z = filtered(agent, episode)[0].z[0]
        actions = torch.as_tensor(episode["actions"])
        q = torch.min(*agent.critic.q(z[:-1], actions)).squeeze(-1).numpy()
        to_go, acc = np.zeros(len(q)), 0.0
        for t in range(len(q) - 1, -1, -1):
            acc = episode["rewards"][t] + cfg.discount * acc
            to_go[t] = acc
        half = len(q) // 2  # the tail's return-to-go is cut short by the episode's end
        corr.append(float(np.corrcoef(q[:half], to_go[:half])[0, 1]))
        for d in range(actions.shape[1]):
            plus, minus = actions.clone(), actions.clone()
            plus[:, d], minus[:, d] = 1.0, -1.0
            spread.append(float((torch.min(*agent.critic.q(z[:-1], plus)) -
                                 torch.min(*agent.critic.q(z[:-1], minus))).abs().mean()))
    return {"corr_q_return_to_go": round(float(np.mean(corr)), 3),
            "mean_abs_q_plus_minus": round(float(np.mean(spread)), 4)}


@torch.no_grad()
def decoder_check(agent: Any, episode: dict[str, np.ndarray], out: Path | None) -> dict[str, float]:
    post, _ = filtered(agent, episode)
    z = post.z[0]
    decoded = agent.model.decoder(z)
    shuffled = agent.model.decoder(z[torch.randperm(len(z), generator=torch.Generator().manual_seed(0))])
    zero = agent.model.decoder(torch.zeros_like(z))
    if out is not None:
        import imageio.v3 as iio

        picks = np.linspace(5, len(z) - 5, 6).astype(int)
        top = np.concatenate([episode["frames"][i].transpose(1, 2, 0) for i in picks], 1)
        bottom = np.concatenate([(decoded[i].clamp(0, 1) * 255).byte().numpy().transpose(1, 2, 0) for i in picks], 1)
        out.mkdir(parents=True, exist_ok=True)
        picture = np.kron(np.concatenate([top, bottom]), np.ones((2, 2, 1), np.uint8))  # 2x: easier to see
        iio.imwrite(out / "slac_reconstruction.png", picture)
    return {"decoder_shuffled_z_diff": round(float((decoded - shuffled).abs().mean()), 4),
            "decoder_zero_z_diff": round(float((decoded - zero).abs().mean()), 4)}


def gradient_check(agent: Any, cfg: Any, episodes: list[dict[str, np.ndarray]]) -> list[str]:
    """The model's parameter groups with no gradient from one model loss on windows of `episodes`."""
    length, windows = cfg.sequence_length, []
    for episode in episodes:
        for start in range(0, len(episode["actions"]) - length + 1, 50):
            windows.append({"frames": episode["frames"][start:start + length + 1],
                            "action": episode["actions"][start:start + length],
                            "reward": episode["rewards"][start:start + length].astype(np.float32)})
    batch = {k: np.stack([w[k] for w in windows]) for k in windows[0]}
    batch["discount"] = np.ones_like(batch["reward"])
    batch["valid"] = np.ones(batch["reward"].shape, bool)
    agent.model_opt.zero_grad(set_to_none=True)
    agent.train_mode(True)
    agent.update_model(batch)  # one real update step: backward, then Adam (the weights move slightly)
    return [name for name, module in agent.model.named_children()
            if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--episodes", type=int, default=6, help=f"fresh episodes (the last {HELD_OUT} score the probe)")
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("--out", type=Path, default=None, help="write slac_reconstruction.png here")
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    if args.episodes <= HELD_OUT:
        raise SystemExit(f"--episodes must be more than {HELD_OUT}")
    run = load_run(args.run)
    if run.cfg.algo != "slac":
        raise SystemExit(f"{args.run} is a {run.cfg.algo} run; this probe reads SLAC's latent model")
    torch.manual_seed(0)
    untrained = make_agent(dataclasses.replace(run.cfg, backend="plain", bf16=False), (3, run.cfg.image_size,
                           run.cfg.image_size), run.facts.action_dim, torch.device("cpu"))
    episodes = play(run.cfg, args.episodes, args.seed)
    states = [e["states"] for e in episodes]
    probes = {}
    for name, agent in (("trained", run.agent), ("untrained", untrained)):
        posts = [filtered(agent, e) for e in episodes]
        probes[f"{name} z1 mean"] = probe_r2([p.z1_mean[0].numpy() for p, _ in posts], states)
        probes[f"{name} conv features"] = probe_r2([f.numpy() for _, f in posts], states)
    report = {"benchmark": "slac_latent_probe", "run": str(args.run), "env": run.cfg.env, "env_step": run.env_steps,
              "episodes": args.episodes, "held_out": HELD_OUT, "state_dims": int(states[0].shape[1]),
              "probe_r2": probes, **decoder_check(run.agent, episodes[-1], args.out),
              **critic_check(run.agent, run.cfg, episodes),
              "model_groups_without_gradient": gradient_check(run.agent, run.cfg, episodes)}
    for name, r2 in probes.items():
        print(f"{name:26s} R^2 per state dim (held out): {r2}", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
