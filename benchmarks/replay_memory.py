"""Replay memory per transition at 84x84 with a 3-frame stack: the frame-once store against the
reference implementation's layout (obs and next_obs stacks stored per transition).

Measured, not computed: the resident memory a filled buffer adds to the process (/proc/self/statm),
divided by its capacity. Also reported: what a transition costs once episode starts are counted
(an episode of T transitions stores T + 1 frames), per action repeat of the paper's table 3.

    python benchmarks/replay_memory.py [--capacity 20000]

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import describe  # noqa: E402

from train.replay import FrameReplay  # noqa: E402

FRAME = (3, 84, 84)
STACK = 3
# denisyarats/pytorch_sac_ae ReplayBuffer: obses and next_obses uint8 (9, 84, 84) each, plus
# action (float32 x A), reward and not_done (float32); A = 1 here as below (127,040 B at A = 6).
REFERENCE_BYTES = 2 * STACK * int(np.prod(FRAME)) + 4 * 1 + 4 + 4


def resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--capacity", type=int, default=20_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, FRAME, dtype=np.uint8)
    action = np.zeros(1, np.float32)

    before = resident_bytes()
    replay = FrameReplay(args.capacity, FRAME, np.uint8, 1)
    replay.add_first(frame)
    for _ in range(args.capacity - 1):
        replay.add(frame, action, 0.0, 1.0)
    measured = (resident_bytes() - before) / args.capacity
    batch = replay.sample(4, rng, stack=STACK)
    assert batch["obs"].shape == (4, 3 * STACK, 84, 84)  # stacks are rebuilt at sample time

    with_starts = {f"action_repeat_{k}": round(replay.bytes_per_slot() * (1000 // k + 1) / (1000 // k))
                   for k in (2, 4, 8)}
    print(json.dumps({
        "benchmark": "replay_memory",
        "machine": describe(),
        "image": "84x84 RGB uint8, stack 3",
        "capacity": args.capacity,
        "bytes_per_transition": round(measured),
        "bytes_per_transition_allocated": replay.bytes_per_slot(),
        "bytes_per_transition_with_episode_starts": with_starts,
        "frame_bytes": int(np.prod(FRAME)),
        "reference_bytes_per_transition": REFERENCE_BYTES,
        "ratio_reference_over_ours": round(REFERENCE_BYTES / measured, 2),
        "paper_capacity_1M_gib": round(replay.bytes_per_slot() * 1_000_000 / 2**30, 1),
        "target_bytes_per_transition": 21_300,
    }))


if __name__ == "__main__":
    main()
