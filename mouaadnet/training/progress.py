"""Training progress as plain lines: epoch, step, loss, images/s and ETA, at most one line every few seconds.

A tqdm bar needs a terminal. Under kfp.local a task's output is a pipe that the runner relays line by line (and a
log file is no terminal either), so the pipeline's train step prints these lines instead; `mouaadnet demo` shows
them live. The ETA covers the steps still to run at the pace measured so far, validation included.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

PREFIX = "progress"


def format_eta(seconds: float) -> str:
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ProgressLog:
    """Counts optimisation steps over the whole run and prints a line on the first step, then at most every
    ``every`` seconds, and on the last step of each epoch."""

    def __init__(self, total_steps: int, done_steps: int = 0, every: float = 10.0, out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.done, self.every = total_steps, done_steps, every
        self.out, self.clock = out, clock
        self.start, self.start_done = clock(), done_steps
        self.last: float | None = None

    def step(self, epoch: int, epochs: int, step: int, steps: int, loss: float, images_per_second: float) -> str | None:
        """Record one finished step (1-based ``epoch`` and ``step``); returns the line when one was printed."""
        self.done += 1
        now = self.clock()
        if self.last is not None and now - self.last < self.every and step < steps:
            return None
        self.last = now
        rate = (self.done - self.start_done) / max(now - self.start, 1e-9)  # steps/s, validation included
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        line = (f"{PREFIX}  epoch {epoch}/{epochs}  step {step}/{steps}  loss {loss:.4f}  "
                f"{images_per_second:.1f} img/s  ETA {format_eta(eta)}")
        print(line, file=self.out or sys.stdout, flush=True)
        return line
