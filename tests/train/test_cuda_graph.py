"""Whole-step CUDA graphs (train/cuda_graph.py): a replayed step must update exactly as the eager
step does. Needs a GPU; skipped elsewhere (CI has none; run on a GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from train import config as train_config
from train.cuda_graph import GraphedStep
from train.replay import FrameReplay
from train.slac import SlacAgent

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _regression_step(net: nn.Module, opt: torch.optim.Optimizer):  # type: ignore[no-untyped-def]
    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = (net(x) - y).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}
    return step


def test_replayed_steps_update_exactly_as_eager_steps() -> None:
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)).to(CUDA) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.Adam(n.parameters(), lr=1e-2, fused=True, capturable=True) for n in nets]
    eager = GraphedStep(_regression_step(nets[0], opts[0]), enabled=False)
    graphed = GraphedStep(_regression_step(nets[1], opts[1]), enabled=True, warmup=2)
    for i in range(8):  # 2 warm-up calls, the capture, then replays with new data each time
        x = torch.randn(64, 8, device=CUDA)
        y = x.sum(-1, keepdim=True) * (1 + i)
        a, b = eager(x, y), graphed(x, y)
        torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
    assert graphed.graph is not None
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _slac_replay(action_dim: int) -> FrameReplay:
    rng = np.random.default_rng(0)
    replay = FrameReplay(400, (3, 64, 64), np.uint8, action_dim, check_memory=False, device=CUDA)
    for _ in range(3):
        replay.add_first(rng.integers(0, 256, (3, 64, 64), dtype=np.uint8))
        for _ in range(40):
            replay.add(rng.integers(0, 256, (3, 64, 64), dtype=np.uint8),
                       np.tanh(rng.normal(0, 2, action_dim)).astype(np.float32), float(rng.uniform()), 1.0)
    return replay


def test_graphed_slac_updates_learn_and_move_every_network() -> None:
    cfg = train_config.resolve("slac", "smoke", env="cheetah-run", model_lr=1e-3)
    torch.manual_seed(0)
    agent = SlacAgent(cfg, (3, 64, 64), 6, CUDA)  # type: ignore[arg-type]
    assert agent.graphs
    replay = _slac_replay(6)
    fixed = replay.sample_windows(cfg.model_batch_size, np.random.default_rng(1), cfg.sequence_length)
    losses = [float(agent.update_model(fixed)["model_loss"]) for _ in range(30)]
    assert agent._model_step.graph is not None and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5]), losses  # noise frames: ~0.87 after 30 steps
    rng = np.random.default_rng(2)
    for _ in range(4):  # warm-up and capture of the SAC step
        agent.update(replay, rng, 0)
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in agent.modules().items()}
    metrics = agent.update(replay, rng, 0)  # a replay of both graphs
    assert agent._sac_step.graph is not None
    assert all(np.isfinite(float(v)) for v in metrics.values())
    for name, module in agent.modules().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters())), name
