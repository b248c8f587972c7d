"""Side-by-side timing on a noisy shared machine: each variant lives in its own process (allocator
settings are process-wide) and the variants run step by step in lockstep, the order rotating, so a
burst of CPU steal slows the variants of one step alike and every step gives a paired ratio."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any, Callable


def serve(ready: dict[str, Any], handle: Callable[[list[str]], dict[str, Any]]) -> None:
    """Worker side: print `ready`, then answer each command line on stdin with one JSON line
    (`handle(words)`) until `quit` or end of input."""
    reply = ready
    while True:
        print(json.dumps(reply), flush=True)
        command = sys.stdin.readline().split()
        if not command or command[0] == "quit":
            return
        reply = handle(command)


class Worker:
    """One variant's process (`script --worker NAME ...`), kept alive between commands."""

    def __init__(self, script: str, name: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, script, "--worker", name, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.ready: dict[str, Any] = {}

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"benchmark worker failed (exit code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def start(script: str, names: list[str], *args: str) -> dict[str, Worker]:
    """All variants' processes, set up concurrently, each past its `ready` line."""
    workers = {name: Worker(script, name, *args) for name in names}
    for w in workers.values():
        w.ready = w.read()
    return workers


def run(script: str, names: list[str], steps: int, *args: str,
        show: Callable[[dict[str, dict[str, Any]]], str] = lambda r: "",
        ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """`steps` rounds of one `step` command per variant, back to back, the order rotating; each
    round's replies are summarised on stderr by `show`. Returns each variant's replies and its
    `ready` line."""
    workers = start(script, names, *args)
    replies: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for i in range(steps):
            for name in names[i % len(names):] + names[:i % len(names)]:
                replies[name].append(workers[name].ask("step"))
            print(f"step {i}: {show({n: replies[n][-1] for n in names})}", file=sys.stderr)
    finally:
        for w in workers.values():
            w.close()
    return replies, {n: w.ready for n, w in workers.items()}


def step_count(text: str) -> int:
    """argparse type for a number of timed steps: quartiles of paired ratios need two of them."""
    n = int(text)
    if n < 2:
        raise argparse.ArgumentTypeError(f"needs at least 2 timed steps (quartiles of paired ratios), got {n}")
    return n


def paired(reference: list[float], candidate: list[float]) -> dict[str, Any]:
    """The median of the per-step ratios reference/candidate (the headline), their quartiles, and
    the ratio of the means beside them."""
    ratios = [r / c for r, c in zip(reference, candidate)]
    q = statistics.quantiles(ratios, n=4)
    return {"median": round(statistics.median(ratios), 2), "quartiles": [round(q[0], 2), round(q[2], 2)],
            "of_means": round(statistics.mean(reference) / statistics.mean(candidate), 2)}
