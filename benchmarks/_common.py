"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_line() -> str:
    """Cores, architecture and Python: the machine a result belongs to."""
    return f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def kernel_peak_rss(pid: int | str = "self") -> int | None:
    """The kernel's peak RSS (``VmHWM``) of process ``pid`` in bytes, or None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
