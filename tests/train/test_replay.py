"""Frame-once replay: bytes per transition, stacks and windows that never mix episodes, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sacae_deploy.history import history_index, start_history
from train.replay import FrameReplay, ReplayError


def _fill(replay: FrameReplay, episodes: list[int]) -> None:
    """Frames encode (episode, step) in their first two pixels; actions encode the step."""
    for ep, length in enumerate(episodes):
        frame = np.zeros(replay.obs_shape, np.uint8)
        frame[0, 0, 0], frame[0, 0, 1] = ep, 0
        replay.add_first(frame)
        for t in range(1, length + 1):
            frame = np.zeros(replay.obs_shape, np.uint8)
            frame[0, 0, 0], frame[0, 0, 1] = ep, t
            replay.add(frame, np.full(replay.action_dim, t, np.float32), float(t), 1.0)


def _ids(stack: np.ndarray) -> list[tuple[int, int]]:
    return [(int(stack[3 * k, 0, 0]), int(stack[3 * k, 0, 1])) for k in range(stack.shape[0] // 3)]


def test_bytes_per_transition_at_84() -> None:
    replay = FrameReplay(10, (3, 84, 84), np.uint8, action_dim=6)
    assert replay.bytes_per_slot() <= 21_300
    assert replay.obs.nbytes / replay.capacity == 21_168


def test_stacks_respect_episode_boundaries() -> None:
    replay = FrameReplay(1000, (3, 4, 4), np.uint8, action_dim=1)
    _fill(replay, [5, 1, 7, 3])
    batch = replay.sample(512, np.random.default_rng(0), stack=3)
    for obs, nxt, action, reward in zip(batch["obs"], batch["next_obs"], batch["action"], batch["reward"]):
        o, n = _ids(obs), _ids(nxt)
        assert len({e for e, _ in o + n}) == 1, (o, n)  # one episode per sample
        t = o[-1][1]
        # padding rule: the episode's first frame repeats before its start
        assert o == [(o[0][0], max(t - 2, 0)), (o[0][0], max(t - 1, 0)), (o[0][0], t)]
        assert n == o[1:] + [(o[0][0], t + 1)]
        assert action[0] == t + 1 and reward == t + 1


def test_ring_wraparound_never_serves_overwritten_history() -> None:
    replay = FrameReplay(20, (3, 2, 2), np.uint8, action_dim=1)
    _fill(replay, [30])  # one long episode, overwritten several times
    batch = replay.sample(256, np.random.default_rng(1), stack=3)
    for obs in batch["obs"]:
        steps = [s for _, s in _ids(obs)]
        assert steps == [steps[0], steps[0] + 1, steps[0] + 2] and steps[0] >= 30 - 19


def test_windows_padding_rule() -> None:
    replay = FrameReplay(1000, (3, 2, 2), np.uint8, action_dim=2)
    _fill(replay, [3, 12])
    w = replay.sample_windows(256, np.random.default_rng(2), length=8)
    assert w["frames"].shape == (256, 9, 3, 2, 2) and w["action"].shape == (256, 8, 2)
    for frames, actions, valid in zip(w["frames"], w["action"], w["valid"]):
        ids = [(int(f[0, 0, 0]), int(f[0, 0, 1])) for f in frames]
        assert len({e for e, _ in ids}) == 1
        t = ids[-1][1]
        assert [s for _, s in ids] == [max(t - k, 0) for k in range(8, -1, -1)]
        # action j leads to frame j+1; it is real only if that frame is not an episode start
        expect = [float(max(t - k, 0)) if t - k > 0 else 0.0 for k in range(7, -1, -1)]
        assert actions[:, 0].tolist() == expect
        assert valid.tolist() == [t - k > 0 for k in range(7, -1, -1)]


def test_one_padding_rule_for_replay_windows_and_episode_starts() -> None:
    """history_index is the rule at any step; start_history (frame stacks, the runtime, the export
    graphs) is the same rule at step 0: the first frame repeated, zero actions."""
    back, real = history_index(np.array([0, 2, 9]), 4)
    assert back.tolist() == [[0, 0, 0, 0], [2, 2, 1, 0], [3, 2, 1, 0]]
    assert real.tolist() == [[False] * 3, [False, True, True], [True] * 3]
    first = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    frames, actions = start_history(first, 4, action_dim=2)
    assert len(frames) == 4 and all(f is first for f in frames)
    assert actions is not None and actions.dtype == np.float32 and actions.tolist() == [[0.0, 0.0]] * 3
    assert start_history(first, 4)[1] is None
    replay = FrameReplay(100, (3, 2, 2), np.uint8, action_dim=2)
    _fill(replay, [6])
    slots, valid = replay._history_index(np.array([0]), 3)  # the episode's first slot: all padding
    assert slots.tolist() == [[0, 0, 0, 0]] and not valid.any()


def test_refuses_capacity_that_cannot_fit() -> None:
    with pytest.raises(ReplayError, match="replay_capacity"):
        FrameReplay(10**9, (3, 84, 84), np.uint8, action_dim=1)


def test_save_load_roundtrip_links_unchanged_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import train.replay as R

    monkeypatch.setattr(R, "CHUNK_SLOTS", 8)
    replay = FrameReplay(64, (3, 2, 2), np.uint8, action_dim=1)
    _fill(replay, [20])
    replay.save(tmp_path / "a")
    _fill(replay, [3])  # touches only the last chunk(s)
    replay.save(tmp_path / "b", previous=tmp_path / "a")
    assert (tmp_path / "b" / "chunk00000.npz").stat().st_nlink == 2  # hard-linked, not rewritten
    restored = FrameReplay(64, (3, 2, 2), np.uint8, action_dim=1)
    restored.load(tmp_path / "b")
    assert restored.total == replay.total
    for name in ("obs", "action", "reward", "discount", "step"):
        assert np.array_equal(getattr(restored, name), getattr(replay, name))
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(replay.sample(32, rng_a, 3)["obs"], restored.sample(32, rng_b, 3)["obs"])


def test_device_mirror_serves_the_same_batches_and_survives_a_reload(tmp_path: Path) -> None:
    """The GPU path (frames mirrored on the device, gathered there) must serve exactly what the host
    path serves; torch's CPU device stands in for a GPU here."""
    host = FrameReplay(40, (3, 2, 2), np.uint8, action_dim=1)
    mirrored = FrameReplay(40, (3, 2, 2), np.uint8, action_dim=1, device=torch.device("cpu"))
    for replay in (host, mirrored):
        _fill(replay, [25, 30])  # wraps the ring
    mirrored.save(tmp_path / "ckpt")
    restored = FrameReplay(40, (3, 2, 2), np.uint8, action_dim=1, device=torch.device("cpu"))
    restored.load(tmp_path / "ckpt")
    for replay in (mirrored, restored):
        a, b = host.sample(64, np.random.default_rng(4), 3), replay.sample(64, np.random.default_rng(4), 3)
        assert isinstance(b["obs"], torch.Tensor) and b["obs"].shape == (64, 9, 2, 2)
        for key in ("obs", "next_obs"):
            assert np.array_equal(a[key], b[key].numpy())
        assert np.array_equal(a["action"], b["action"])
        for distinct in (False, True):
            wa = host.sample_windows(16, np.random.default_rng(5), 8, distinct=distinct)
            wb = replay.sample_windows(16, np.random.default_rng(5), 8, distinct=distinct)
            assert np.array_equal(wa["frames"], wb["frames"].numpy()) and np.array_equal(wa["valid"], wb["valid"])


def test_the_memory_check_counts_only_the_slots_a_run_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host pages are committed as slots are written: a 10k-step run of a 1M replay (the demo) must
    not be refused for the 1M it never fills, and a run that fills it still is."""
    monkeypatch.setattr("train.replay.available_memory_bytes", lambda: 50 * 2**20)
    slot = FrameReplay(2, (100,), np.uint8, 1, check_memory=False).bytes_per_slot()
    with pytest.raises(ReplayError, match=r"replay of 1,000,000 transitions needs 0\.1 GiB"):
        FrameReplay(1_000_000, (100,), np.uint8, 1, headroom_bytes=0)
    with pytest.raises(ReplayError, match=r"\(this run fills 900,000 of them\)"):
        FrameReplay(1_000_000, (100,), np.uint8, 1, headroom_bytes=0, max_writes=900_000)
    replay = FrameReplay(1_000_000, (100,), np.uint8, 1, headroom_bytes=0, max_writes=10_000)
    assert replay.capacity == 1_000_000 and 10_000 * slot < 50 * 2**20
