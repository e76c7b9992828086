"""OpenVINO IR from our ONNX graphs, and INT8 through NNCF with the calibration images ORT's PTQ uses.

- ``onnx_to_ir``: an exported ONNX graph (FP32, or ORT's INT8 QDQ: e.g. the QAT ranges) -> ``model.xml`` +
  ``model.bin``. Read with ``Core.read_model``, not ``ov.convert_model``: in OpenVINO 2026.4 the
  ``convert_model`` path makes the peer's QDQ graph fail to compile in bf16 ("No suitable implementations"),
  while ``read_model`` compiles it (docs/PERFORMANCE.md). Weights stay FP32 in the IR (``compress_to_fp16``
  off): the IR then runs exactly like the ONNX graph in f32, and bf16 is a compile-time choice
  (``mouaadnet.runtime.session``), not baked into the file. QDQ graphs with the crash pattern are made safe
  first (``model.onnx_passes``).
- ``quantize_openvino``: NNCF post-training quantization (``nncf.quantize``: MinMax ranges on the given
  images, fast bias correction) of the FP32 ONNX graph. The head's logit convs (``model.export.tail_nodes``:
  heatmap, size, offset, attribute logits) stay float as in ORT's PTQ (``model.export.quantize_int8``: +1 pt
  AP50 there), and NNCF never quantizes the decode tail (TopK, GatherElements, Exp, Softmax). Unlike ORT's PTQ
  the stem conv is quantized: ORT keeps it float because its U8S8 kernel is 2x slower than FP32 on a
  3-channel input, OpenVINO's is not (stem float measured no faster, docs/PERFORMANCE.md); ``keep_float``
  takes "stem" and/or "tail".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# OpenVINO in f32 vs ONNX Runtime FP32 on the same graph: the export fails above these (max abs differences).
F32_TOLERANCE = {"scores": 1e-4, "gender": 1e-3, "age": 1e-2}


class OpenVinoExportError(ValueError):
    """Conversion, quantization or the f32 agreement check failed; the message names the file."""


def ir_files(xml: str | Path) -> tuple[Path, Path]:
    xml = Path(xml)
    return xml, xml.with_suffix(".bin")


def ir_size_mb(xml: str | Path) -> float:
    """Size of the IR (.xml + .bin) in MB (10^6 bytes): what the INT8 file-size gate measures."""
    return sum(p.stat().st_size for p in ir_files(xml) if p.is_file()) / 1e6


def _read_onnx(path: Path):
    """ov.Model of an ONNX file, made safe for OpenVINO's CPU plugin when it has the QDQ crash pattern."""
    import onnx
    import openvino as ov

    from model.onnx_passes import has_crash_pattern, make_openvino_safe

    core = ov.Core()
    proto = onnx.load(str(path))
    if has_crash_pattern(proto):
        make_openvino_safe(proto)
        return core.read_model(proto.SerializeToString(), b"")
    return core.read_model(str(path))


def _save(model, xml: Path) -> Path:
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def onnx_to_ir(onnx_path: str | Path, xml: str | Path) -> Path:
    """Convert an ONNX graph to OpenVINO IR (``xml`` and its ``.bin``); returns ``xml``."""
    return _save(_read_onnx(Path(onnx_path)), Path(xml))


def _float_nodes(onnx_path: Path, keep_float: Sequence[str]) -> list[str]:
    """ONNX node names of the convs that stay float: "stem" (the first body conv), "tail" (the head logits)."""
    import onnx

    from model.export import tail_nodes

    proto = onnx.load(str(onnx_path))
    names: list[str] = []
    if "stem" in keep_float:
        stem = next((n.name for n in proto.graph.node if n.op_type == "Conv" and n.name.startswith("/model/")), None)
        names += [stem] if stem else []
    if "tail" in keep_float:
        names += [n for n in tail_nodes(proto) if n.endswith("/Conv")]
    return names


def quantize_openvino(fp32_onnx: str | Path, xml: str | Path, calibration: np.ndarray,
                      keep_float: Sequence[str] = ("tail",), fast_bias_correction: bool = True) -> Path:
    """NNCF INT8 (post-training, MinMax on ``calibration``: float32 [N,3,S,S], the images ORT's PTQ gets) of
    the FP32 ONNX graph; writes the IR and returns ``xml``."""
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)  # its per-node INFO lines and progress bars would drown the CLI's output
    fp32_onnx = Path(fp32_onnx)
    model = _read_onnx(fp32_onnx)
    calibration = np.ascontiguousarray(calibration, np.float32)
    dataset = nncf.Dataset([calibration[i:i + 1] for i in range(calibration.shape[0])])
    # A conv with a bias becomes Convolution "<name>/WithoutBiases" + Add "<name>" in OpenVINO.
    patterns = [re.escape(name) + "(/WithoutBiases)?" for name in _float_nodes(fp32_onnx, keep_float)]
    ignored = nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None
    kwargs = {"ignored_scope": ignored} if ignored else {}
    quantized = nncf.quantize(model, dataset, subset_size=int(calibration.shape[0]),
                              fast_bias_correction=fast_bias_correction, **kwargs)
    return _save(quantized, Path(xml))


def export_ir(fp32_onnx: str | Path, xml: str | Path, check_images: np.ndarray, qdq: str | Path | None = None,
              calibration: np.ndarray | None = None, source: str | Path | None = None, mode: str | None = None,
              size: int | None = None) -> dict:
    """The IR of an exported model, checked and described by a sidecar (``model.artifacts``).

    ``fp32_onnx``: the FP32 graph. ``qdq``: ORT's INT8 QDQ graph (e.g. from the QAT ranges) to convert instead;
    ``calibration``: images for NNCF INT8 instead (the ones ORT's PTQ gets). Neither: the FP32 IR. The IR is run
    in OpenVINO at f32 beside the ONNX graph it comes from in ONNX Runtime on ``check_images``; an FP32 IR must
    agree within ``F32_TOLERANCE``, an INT8 one's differences are reported (accuracy is gated on the validation
    sets: ``mouaadnet gates --openvino``). Returns the report written to the sidecar."""
    from model.artifacts import sha256_file, write_sidecar

    from .session import open_model, output_agreement

    fp32_onnx, xml = Path(fp32_onnx), Path(xml)
    try:
        if calibration is not None:
            quantize_openvino(fp32_onnx, xml, calibration)
            reference, precision = fp32_onnx, "int8-nncf"
        else:
            onnx_to_ir(qdq or fp32_onnx, xml)
            reference, precision = Path(qdq or fp32_onnx), "int8-qdq" if qdq else "fp32"
        model = open_model(xml, "openvino", "f32", 1)
        expected = open_model(reference, "onnxruntime", None, 1)
    except Exception as error:  # noqa: BLE001 - OpenVINO / NNCF / ORT say what failed
        raise OpenVinoExportError(f"{xml}: {type(error).__name__}: {error}") from None
    agreement = output_agreement(expected(check_images), model(check_images))
    failed = {k: v for k, v in agreement.items() if k in F32_TOLERANCE and not v <= F32_TOLERANCE[k]}
    if precision == "fp32" and failed:
        raise OpenVinoExportError(f"{xml}: OpenVINO f32 disagrees with ONNX Runtime on {fp32_onnx.name}: {failed}")
    report = {"precision": precision, "quantized": model.quantized, "ir_mb": ir_size_mb(xml),
              "agreement": agreement, "agreement_reference": reference.name}
    size = size or model.size
    write_sidecar(xml, precision, source=source,
                  metrics={"openvino_f32_vs_onnxruntime": agreement},
                  io={"inputs": [{"name": "images", "dtype": "float32", "shape": ["batch", 3, size, size]}],
                      "outputs": [{"name": n, "dtype": "float32"} for n in model.output_names]},
                  extra={"format": "openvino", "mode": mode or model.mode, "size": size, "fp32": fp32_onnx.name,
                         "bin": xml.with_suffix(".bin").name, "bin_sha256": sha256_file(xml.with_suffix(".bin")),
                         **{k: report[k] for k in ("quantized", "ir_mb", "agreement_reference")}})
    return report
