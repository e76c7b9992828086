"""CPU runtimes for exported models: ONNX Runtime and OpenVINO behind one interface, IR export + NNCF INT8,
and the recorded runtime choice.

- ``session``: ``open_model(path, runtime, precision, threads)`` and ``runtime_factory`` (for apps);
- ``openvino_export``: ONNX -> OpenVINO IR, NNCF INT8 with the calibration images ORT's PTQ uses;
- ``choice``: reads the recorded choice (the fastest runtime/precision that passed the gates) for ``--runtime auto``;
  ``mouaadnet.export.runtime_choice`` writes it.
"""

from .session import (
    OPENVINO_PRECISIONS,
    RUNTIMES,
    RuntimeLoadError,
    RuntimeModel,
    is_quantized,
    open_model,
    openvino_available,
    openvino_default_precision,
    runtime_factory,
)

__all__ = ["OPENVINO_PRECISIONS", "RUNTIMES", "RuntimeLoadError", "RuntimeModel", "is_quantized", "open_model",
           "openvino_available", "openvino_default_precision", "runtime_factory"]
