"""Latency of calls, the one timer: warm-up, then interleaved rounds so that a change of load on a shared CPU
hits every timed function alike; and the CPU's name, which every timing is reported beside."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    """The CPU's model name (lscpu's 'Model name'), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def call_times_ms(fns: dict[str, Callable[[], object]], runs: int, warmup: int,
                  rounds: int = 10) -> dict[str, list[float]]:
    """Milliseconds of each call: ``warmup`` calls of each function, then ``rounds`` rounds in which every function
    runs ``runs / rounds`` times in turn (``runs`` calls each in all)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds = max(1, min(rounds, runs))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        n = runs // rounds + (1 if r < runs % rounds else 0)
        for name, fn in fns.items():
            for _ in range(n):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def time_interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int,
                     rounds: int = 10) -> dict[str, tuple[float, float, float]]:
    """(p50 ms, p90 ms, mean ms) of each function, timed by ``call_times_ms``."""
    out = {}
    for name, values in call_times_ms(fns, runs, warmup, rounds).items():
        arr = np.asarray(values)
        out[name] = (float(np.percentile(arr, 50)), float(np.percentile(arr, 90)), float(arr.mean()))
    return out
