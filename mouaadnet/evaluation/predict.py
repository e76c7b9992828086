"""One prediction call for every model the evaluation measures: PyTorch (decoded here) or an ONNX session."""

from __future__ import annotations

from typing import Any

import torch

from model import decode_crop, decode_scene


def predict(model: Any, images: torch.Tensor, mode: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Decoded outputs of a batch: scene boxes/scores/gender/age [N,K(,4)] or crop gender/age [N].

    ``model`` is a PyTorch model (raw head outputs, decoded here by ``model.decode_scene`` / ``decode_crop``), or
    any object with ``predict_decoded(images, mode)`` returning the same dict, e.g. ``mouaadnet.evaluation.onnx_eval.OnnxModel``
    (an ONNX Runtime session whose graph already decodes). Every metric below is computed from this dict, so
    PyTorch and ONNX (FP32 or INT8) models are measured by the same code.
    """
    if hasattr(model, "predict_decoded"):
        return model.predict_decoded(images, mode)
    outputs = model(images.to(device), mode=mode)
    if mode == "crop":
        return decode_crop(outputs)
    return decode_scene(
        outputs, k=getattr(getattr(model, "cfg", None), "top_k", 100)
    )  # K of the exported graph
