"""What machine a benchmark ran on, for its JSON line (benchmarks compare only like with like)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpuinfo() -> dict[str, str]:
    """The first processor's /proc/cpuinfo fields ({} where there is none)."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}


def cpu_bf16_units() -> str | None:
    """The bf16 units the CPU shows ("AMX", "AVX512-BF16"), None without: VMs of one CPU model
    differ here (a hypervisor may hide them), and without them bf16 autocast is emulated and slow."""
    flags = set(_cpuinfo().get("flags", "").split())
    return "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None


def cpu_name() -> str:
    """The CPU's name with its family/model numbers and bf16 units: cloud VMs often name every
    Xeon alike."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    if "model" in info:
        name += f" (family {info.get('cpu family', '?')} model {info['model']}, {cpu_bf16_units() or 'no'} bf16 units)"
    return name


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
