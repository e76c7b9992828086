"""How many intra-op threads a CPU run uses when it shares the machine.

Measured here (docs/BENCHMARKS.md, "Training under contention"): with other work on both cores, every step of a
2-thread run waits for its slowest thread, so it fell to 3.4 img/s at load 9 where the same run resumed with 1
thread made 18.9 img/s. ``threads: auto`` re-decides every few steps from the 1-minute load average: all cores
when the machine is otherwise idle, one thread fewer for each core busy with other work, never below 1.
"""

from __future__ import annotations

import os

import torch

RECHECK_STEPS = 25  # the load average moves over a minute: checking more often only adds noise


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_processes() -> int:
    """Training processes on this machine: torchrun's LOCAL_WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def auto_threads(load: float | None = None, current: int | None = None, available: int | None = None,
                 processes: int | None = None) -> int:
    """Threads to use given the 1-minute load average (which includes this run's own ``current`` threads).

    Under torchrun the ``processes`` of this machine (LOCAL_WORLD_SIZE) share its cores: each gets its share, and
    its siblings' threads are not other work (2 DDP processes on 2 idle cores: 1 thread each, not 2)."""
    load = os.getloadavg()[0] if load is None else load
    current = torch.get_num_threads() if current is None else current
    available = cores() if available is None else available
    processes = local_processes() if processes is None else processes
    share = max(1, available // processes)
    others = max(0.0, load - current * processes)  # work that is not ours
    return max(1, min(share, share - round(others / processes)))


def apply_threads(setting: int | str, step: int) -> int | None:
    """Set torch's intra-op threads from the config value (an int, or "auto" re-checked every RECHECK_STEPS);
    returns the new count when it changed."""
    if setting != "auto":
        wanted = int(setting)
    elif step % RECHECK_STEPS:
        return None
    else:
        wanted = auto_threads()
    if wanted == torch.get_num_threads():
        return None
    torch.set_num_threads(wanted)
    return wanted
