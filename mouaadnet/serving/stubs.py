"""The Python-backend stub processes of a running tritonserver, read from /proc (Triton itself neither restarts
nor reports a dead stub: ``server`` watches them with these)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .triton_install import STUB_BINARY

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
