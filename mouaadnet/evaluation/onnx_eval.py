"""Exported models (ONNX Runtime or OpenVINO) that look like the model's decoded outputs, so
``mouaadnet.evaluation.evaluate`` measures them.

An exported graph already decodes (``model.export``): scene graphs return the final ``boxes``/``scores``/
``gender``/``age`` [N,K(,4)], crop graphs ``gender``/``age`` [N]. ``OnnxModel.predict_decoded`` returns exactly the
dict ``mouaadnet.evaluation.predict.predict`` builds from a PyTorch model, so every metric has one implementation,
whichever runtime (``mouaadnet.runtime``) runs the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.export import validate_onnx


class OnnxModel:
    """One model file per mode (scene and/or crop), each run by ``runtime`` ("onnxruntime", or "openvino" with
    OpenVINO's inference ``precision``: "f32", "bf16" or None = its default on this CPU).

    ``paths``: ONNX files (or OpenVINO IR .xml with runtime "openvino"); the mode of each is read from its
    outputs (``boxes`` present -> scene). ``sizes``: the square input size per mode, from the graph's input
    shape when it is static.
    """

    def __init__(self, paths: list[str | Path] | tuple[str | Path, ...], threads: int = 2,
                 runtime: str = "onnxruntime", precision: str | None = None):
        from mouaadnet.runtime import open_model

        self.paths: dict[str, Path] = {}
        self.sessions = {}
        self.sizes: dict[str, int | None] = {}
        self.runtime, self.precision = runtime, precision
        for path in paths:
            if Path(path).suffix == ".onnx":
                validate_onnx(path)
            session = open_model(path, runtime, precision, threads)
            mode = session.mode
            if mode in self.paths:
                raise ValueError(f"two {mode}-mode model files given: {self.paths[mode]} and {path}")
            self.sizes[mode] = session.size if session.static_size else None
            self.paths[mode] = Path(path)
            self.sessions[mode] = session
            self.precision = session.precision  # the stated one (OpenVINO's default resolved)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.paths)

    def eval(self) -> OnnxModel:  # duck-typing with nn.Module for callers that switch to eval mode
        return self

    def predict_decoded(self, images: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
        if mode not in self.sessions:
            raise ValueError(f"no {mode}-mode model loaded (have: {', '.join(self.modes) or 'none'})")
        x = np.ascontiguousarray(images.detach().cpu().numpy(), np.float32)
        return {name: torch.from_numpy(v) for name, v in self.sessions[mode](x).items()}

