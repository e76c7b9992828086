"""Helpers of the reliability suite: bounded vs full mode, subprocess environment, request builders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

FULL = os.environ.get("MOUAADNET_RELIABILITY", "bounded") == "full"
ROOT = Path(__file__).resolve().parents[2]
THRESHOLD = 0.05  # the stand-in network is untrained: its scores sit around 0.1


def full_only(reason: str):
    return pytest.mark.skipif(not FULL, reason=f"full run only (make reliability): {reason}")


def child_env(**extra) -> dict[str, str]:
    """Environment for subprocesses of this checkout: its sources first, one thread, quiet."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


PYTHON = sys.executable


def image_input(blobs, name="image", dtype="BYTES", shape=None):
    import tritonclient.grpc as grpcclient

    array = np.array([[b] for b in blobs], dtype=np.object_)
    inp = grpcclient.InferInput(name, list(shape or array.shape), dtype)
    inp.set_data_from_numpy(array.reshape(shape) if shape else array)
    return inp


def tensor_input(name, array, dtype="FP32"):
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput(name, list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    return inp


def server_rss_parts(server) -> dict[str, float]:
    """RSS in MB of a TritonServer's processes: tritonserver, each stub (by model instance name), the guard."""
    import psutil

    proc = psutil.Process(server.pid)
    parts = {"tritonserver": proc.memory_info().rss / 2**20}
    for child in proc.children(recursive=True):
        try:
            instance = next((a for a in child.cmdline() if "_0_" in a), str(child.pid))
            parts[instance] = child.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            pass
    if server.guard is not None:
        parts["guard"] = psutil.Process(server.guard.pid).memory_info().rss / 2**20
    return parts


def server_shm_mb(server) -> float:
    """MB of /dev/shm its stubs' regions occupy (allocated blocks: the Python backend grows them, never shrinks)."""
    from mouaadnet.serving.stubs import SHM_DIR

    total = 0
    for stub in server.stubs():
        path = SHM_DIR / stub.shm_region
        if path.exists():
            total += path.stat().st_blocks * 512
    return total / 2**20
