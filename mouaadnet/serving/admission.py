"""Admission control for decoding: one budget of pixels in flight shared by every preprocess instance of a server.

The per-request budget (prepost.MAX_REQUEST_PIXELS) bounds what one request may cost, not what many cost
together: 32 senders of in-budget decode bombs (48 KB PNGs that decode to 50 MP) held both preprocess instances
all the time and the good clients' p50 went from 14 ms to 11 s (issue 24), waiting in Triton's queue behind them.
With this budget a request whose decode would push the pixels in flight over ``limit`` is refused at once with a
"busy, retry" error (UNAVAILABLE): the instance is free again within milliseconds, so an expensive decode holds
at most one instance while the others keep serving. Requests of at most ``always_admit`` pixels (an ordinary
photo: JPEGs count at the reduced scale they are decoded at, a 12 MP JPEG costs 0.75 MP) are never refused, so
good clients are never told to retry because of the bad ones; they still count towards the total.

The instances are separate stub processes, so the count lives in a small file under /dev/shm (one per
tritonserver: its pid names it), changed under an exclusive flock: {pid: pixels in flight}. An instance that
died mid-decode is dropped from the count the next time anyone looks (its pid is gone), so no budget leaks.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")


class BusyError(RuntimeError):
    """The server is decoding as much as its budget allows; the client should retry shortly."""


def budget_path(server_pid: int) -> Path:
    return SHM_DIR / f"mouaadnet-decode-budget-{server_pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DecodeBudget:
    """``admit(pixels)`` before decoding (raises BusyError), ``release()`` after; shared through ``path``."""

    def __init__(self, path: Path, limit: int, always_admit: int):
        self.path, self.limit, self.always_admit = Path(path), int(limit), int(always_admit)
        self.pid = os.getpid()

    def _update(self, change) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 1 << 16, 0)
            try:
                table = {int(k): int(v) for k, v in json.loads(raw or b"{}").items()}
            except ValueError:
                table = {}
            table = {pid: px for pid, px in table.items() if px and (pid == self.pid or _alive(pid))}
            change(table)
            data = json.dumps(table).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)  # closing releases the lock

    def admit(self, pixels: int) -> None:
        def change(table: dict[int, int]) -> None:
            others = sum(px for pid, px in table.items() if pid != self.pid)
            if pixels > self.always_admit and others + pixels > self.limit:
                raise BusyError(
                    f"server busy: this request decodes {pixels / 1e6:.1f} MP while {others / 1e6:.1f} MP are being "
                    f"decoded for other requests (at most {self.limit / 1e6:.0f} MP at once across the server; "
                    f"requests up to {self.always_admit / 1e6:.0f} MP always pass): retry in a moment")
            table[self.pid] = pixels

        self._update(change)

    def release(self) -> None:
        self._update(lambda table: table.pop(self.pid, None))


class CostGate:
    """Admission by cost class, in the request guard, before a request reaches Triton (issue 24, item 2).

    ``DecodeBudget`` alone kept the good clients' p50 at 111 ms beside 32 bomb senders: every bomb still crossed
    the guard, Triton's queue, the ensemble and a preprocess stub to be refused there, ~370 a second on 2 shared
    cores, and the small requests queued behind those refusals. Per client fairness is no answer here (every
    client is 127.0.0.1, one connection per thread); what separates them is what a request costs, which the
    image headers tell before any pixel is decoded. So requests are put in two classes:

    - small (at most ``always_admit`` pixels decoded: an ordinary photo) pass at once, never wait for anything;
    - big ones share ``limit`` pixels in flight (64 MP: one budget-sized request at a time, so with 2 preprocess
      instances one is always free for the small ones). A big request that does not fit waits up to ``wait`` s
      for its turn, then is refused as busy (UNAVAILABLE, "retry"); when ``max_waiting`` already wait it is
      refused at once. The wait is what keeps senders in a retry loop from spinning: each holds a thread that
      sleeps, not a core, and sends at most 1 / ``wait`` requests a second.
    """

    def __init__(self, limit: int, always_admit: int, wait: float = 0.5, max_waiting: int = 64):
        self.limit, self.always_admit, self.wait, self.max_waiting = int(limit), int(always_admit), wait, max_waiting
        self.in_flight = 0
        self.waiting = 0
        self._cond = threading.Condition()

    def enter(self, pixels: int) -> bool:
        """Admit a request decoding ``pixels`` (True: call ``leave(pixels)`` when it is done; False: a small one,
        nothing to leave) or raise BusyError."""
        if pixels <= self.always_admit:
            return False
        with self._cond:
            if self._fits(pixels):
                self.in_flight += pixels
                return True
            if self.waiting >= self.max_waiting:
                raise self._busy(pixels, "and the queue for big requests is full")
            self.waiting += 1
            try:
                deadline = time.monotonic() + self.wait
                while not self._fits(pixels):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._busy(pixels, f"after waiting {self.wait:.1f} s")
                    self._cond.wait(left)
                self.in_flight += pixels
                return True
            finally:
                self.waiting -= 1

    def leave(self, pixels: int) -> None:
        with self._cond:
            self.in_flight -= pixels
            self._cond.notify_all()

    def _fits(self, pixels: int) -> bool:
        return self.in_flight == 0 or self.in_flight + pixels <= self.limit

    def _busy(self, pixels: int, why: str) -> BusyError:
        return BusyError(
            f"server busy: this request decodes {pixels / 1e6:.1f} MP while {self.in_flight / 1e6:.1f} MP are being "
            f"decoded for other big requests (at most {self.limit / 1e6:.0f} MP at once; requests up to "
            f"{self.always_admit / 1e6:.0f} MP never wait), {why}: retry in a moment")
