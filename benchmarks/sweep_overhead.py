"""What `sacae sweep` costs over running its trials by hand.

Measures (1) embedded Ray's start-up time and the memory of its own processes (RSS summed over
the processes ray.init starts, idle workers included, read from /proc), the same `start_ray` the
sweep uses; (2) one smoke trial by hand (`sacae train`) against a sweep of two such trials at once
(`sacae sweep --seeds 2`, 1 CPU each) and against the same two trials started by hand at once.
The target: two at once within 1.2x one trial's wall time plus Ray's start-up, i.e. `ratio` =
(sweep - Ray start-up) / one trial <= 1.2 on a 2-core machine. On a shared machine two runs at once
are slower than one whatever runs them (`ratio_two_by_hand` says by how much), so the sweep's own
cost is `sweep_over_two_by_hand_s`.
The machine's load is stated before and after. The last line of stdout is one JSON object.

    MUJOCO_GL=egl .venv/bin/python benchmarks/sweep_overhead.py [--algo sac-ae] [--env-steps 800]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The repository root goes first: this folder's distractors.py would otherwise shadow the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from machine import StealMeter, describe  # noqa: E402

SACAE = [sys.executable, "-m", "sacae_deploy.cli"]


def _descendants(pid: int) -> list[int]:
    """All processes below `pid` (Ray's GCS, raylet, agents, workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def ray_startup() -> dict[str, float | int]:
    """Start embedded Ray as `sacae sweep` does, time it, weigh its processes, shut it down."""
    import ray

    from train.sweep import SweepSpec, start_ray

    start = time.perf_counter()
    start_ray(SweepSpec(["sac-ae"], ["cartpole-swingup"], 1, Path(tempfile.gettempdir())))
    seconds = time.perf_counter() - start
    time.sleep(5)  # let the agents and pre-started workers settle
    procs = _descendants(os.getpid())
    rss = sum(_rss_mib(p) for p in procs)
    ray.shutdown()
    return {"ray_startup_s": round(seconds, 2), "ray_processes": len(procs), "ray_rss_mib": round(rss, 1)}


def timed(*commands: list[str]) -> float:
    """Wall seconds for these `sacae` commands run at once."""
    start = time.perf_counter()
    procs = [subprocess.Popen([*SACAE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for args in commands]
    for proc, args in zip(procs, commands):
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"sacae {' '.join(args)} failed: {err[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="sac-ae")
    parser.add_argument("--env", default="cartpole-swingup")
    parser.add_argument("--env-steps", type=int, default=800)
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    load_before = os.getloadavg()[0]
    steal = StealMeter()
    startup = ray_startup()
    common = ["--algo", args.algo, "--env", args.env, "--preset", "smoke", "--env-steps", str(args.env_steps)]
    train = ["train", *common, "--set", "threads=1"]
    with tempfile.TemporaryDirectory() as tmp:  # one by hand, two by hand at once, the sweep, one again
        one = timed([*train, "--out", f"{tmp}/one"])
        pair = timed([*train, "--out", f"{tmp}/a"], [*train, "--seed", "2", "--out", f"{tmp}/b"])
        two = timed(["sweep", *common, "--seeds", "2", "--out", f"{tmp}/sweep"])
        one_again = timed([*train, "--out", f"{tmp}/one_again"])
    single = (one + one_again) / 2  # before and after the sweep: the machine's load drifts
    result = {
        "benchmark": "sweep_overhead", "algo": args.algo, "env": args.env, "env_steps": args.env_steps, **startup,
        "one_trial_s": [round(one, 1), round(one_again, 1)], "two_by_hand_s": round(pair, 1),
        "two_trial_sweep_s": round(two, 1),
        "ratio": round((two - startup["ray_startup_s"]) / single, 2), "target_ratio": 1.2,
        "ratio_two_by_hand": round(pair / single, 2),  # what the machine itself gives two runs at once
        "sweep_over_two_by_hand_s": round(two - pair, 1),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "steal_fraction": steal.fraction(), "machine": describe(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
