"""What machine a benchmark ran on, for its JSON line (benchmarks compare only like with like)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """One line: CPU model, core count and the 1-minute load when the benchmark ended."""
    return f"{cpu_name()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"


class StealMeter:
    """Share of CPU time the hypervisor gave to other guests since construction (/proc/stat's
    `steal`): on a shared VM the reason one run is much slower than another. None where unknown."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> list[int] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            return [int(f) for f in fields]
        except (OSError, ValueError, IndexError):
            return None

    def fraction(self) -> float | None:
        end = self._read()
        if self.start is None or end is None or len(end) < 8:
            return None
        delta = [b - a for a, b in zip(self.start, end)]
        total = sum(delta[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
        return round(delta[7] / total, 3) if total else None
