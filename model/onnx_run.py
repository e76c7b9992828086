"""The exported graph's I/O names, and running a graph with ONNX Runtime on the CPU (the one session builder).

Plain library (numpy, onnxruntime); no MLOps imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

Mode = Literal["scene", "crop"]
INPUT_NAME = "images"
SCENE_OUTPUT_NAMES = ("boxes", "scores", "gender", "age")
CROP_OUTPUT_NAMES = ("gender", "age")


class OnnxValidationError(ValueError):
    """An .onnx file that cannot be used; the message names the file."""


def output_names(mode: Mode) -> tuple[str, ...]:
    return SCENE_OUTPUT_NAMES if mode == "scene" else CROP_OUTPUT_NAMES


def ort_session(model: str | Path | bytes, threads: int = 1, spinning: bool = False):
    """A CPU ONNX Runtime session from a file or serialized bytes; idle-thread spinning off by default so
    sessions timed in turn don't fight."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, images: torch.Tensor | np.ndarray, mode: Mode | None = None) -> dict[str, np.ndarray]:
    """Every output of a graph (file or session) on ``images``, by output name."""
    sess = ort_session(path_or_session) if isinstance(path_or_session, (str, Path, bytes)) else path_or_session
    arr = images.numpy() if isinstance(images, torch.Tensor) else images
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {INPUT_NAME: np.ascontiguousarray(arr, np.float32)})))
