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
