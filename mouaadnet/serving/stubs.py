"""The Python-backend stub processes of a running tritonserver, read from /proc (Triton itself neither restarts
nor reports a dead stub: ``server`` watches them with these, and the request guard's health answers use
``StubWatch``)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

STUB_BINARY = "triton_python_backend_stub"  # the Python backend's stub executable

SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class Stub:
    """One Python-backend stub process (one model instance) of a tritonserver."""

    pid: int
    instance: str  # e.g. detector_0_1
    model: str  # the model folder name, e.g. detector
    shm_region: str  # its /dev/shm region, e.g. triton_python_backend_shm_region_<uuid>


def proc_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (R, S, Z, ...), None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def stub_of(pid: int) -> Stub | None:
    """Parse a stub's command line: stub, model.py, shm region, sizes, parent pid, backend dir, ?, instance."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in args if a]
    if len(args) < 9 or not args[0].endswith(STUB_BINARY):
        return None
    model_py = Path(args[1])
    return Stub(pid, args[8], model_py.parent.parent.name, args[2])


def server_pid_by_port(grpc_port: int) -> int | None:
    """The tritonserver process whose command line has ``--grpc-port=<grpc_port>`` (the guard's upstream)."""
    flag = f"--grpc-port={grpc_port}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_tritonserver(int(entry.name), flag):
            return int(entry.name)
    return None


def _is_tritonserver(pid: int, flag: bytes) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(args) and args[0].endswith(b"/tritonserver") and flag in args


def reload_marker(server_pid: int) -> Path:
    """While `serve` reloads models of this server: a file naming them (see ``StubWatch``)."""
    return SHM_DIR / f"mouaadnet-reloading-{server_pid}"


class StubWatch:
    """Which Python-backend models of the tritonserver on internal gRPC port ``grpc_port`` cannot answer: no
    stub of the copy Triton routes requests to is alive.

    Triton 2.51 keeps answering READY for a model all of whose stubs died while every request to it fails, so
    the request guard asks this before it answers a readiness call. A model with one of several stubs dead is
    not down: the other instances serve (and the guard sends the dead one's requests again). While `serve`
    reloads a model (``reload_marker`` names it), the new copy's stubs, seen only since the marker was written,
    do not count: Triton moves traffic to them only when the load is complete. Results are cached for
    ``min_interval`` s (one look is a scan of /proc, a few ms). The server is found again by its port after a
    restart (a new pid; stubs seen before it are forgotten). A dead stub's command line is gone (a zombie has
    none), so ``watch()`` looks every ``every`` s in the background to have seen each stub alive."""

    def __init__(self, grpc_port: int, min_interval: float = 0.2):
        self.flag = f"--grpc-port={grpc_port}".encode()
        self.grpc_port, self.min_interval = grpc_port, min_interval
        self._pid: int | None = None
        self._seen: dict[int, tuple[Stub, float]] = {}  # pid -> (stub, wall time first seen)
        self._down: set[str] = set()
        self._checked = 0.0
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def watch(self, every: float = 1.0) -> StubWatch:
        def loop() -> None:
            while not self._stopped.wait(every):
                self.down_models()

        self.down_models()
        threading.Thread(target=loop, name="stub-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def down_models(self) -> set[str]:
        with self._lock:
            if time.monotonic() - self._checked >= self.min_interval:
                self._down = self._scan()
                self._checked = time.monotonic()
            return set(self._down)

    def _scan(self) -> set[str]:
        if self._pid is None or not _is_tritonserver(self._pid, self.flag):
            self._pid, self._seen = server_pid_by_port(self.grpc_port), {}
            if self._pid is None:
                return set()
        now = time.time()
        for stub in map(stub_of, children(self._pid)):
            if stub is not None and stub.pid not in self._seen:
                self._seen[stub.pid] = (stub, now)
        reloading, since = _read_marker(reload_marker(self._pid))
        alive = {stub.model for pid, (stub, seen) in self._seen.items()
                 if proc_state(pid) not in (None, "Z", "X") and not (stub.model in reloading and seen >= since)}
        return {stub.model for stub, _ in self._seen.values()} - alive


def _read_marker(path: Path) -> tuple[set[str], float]:
    """(models being reloaded, when the marker was written) or (empty, 0)."""
    try:
        return set(path.read_text().split()), path.stat().st_mtime
    except OSError:
        return set(), 0.0
