"""ONNX export of the deploy form, with decoding in the graph, validation, and INT8 static quantization.

Plain library (torch, onnx, onnxruntime, onnxslim, numpy, pillow); no MLOps imports.

Graph contract (checked by ``validate_onnx`` and the tests):
- input ``images`` float32 [N,3,H,W], RGB, pixel value / 255 (``model.preprocess.image_to_tensor``), N dynamic;
- scene mode: ``boxes`` [N,K,4] (x1,y1,x2,y2 in input pixels), ``scores`` [N,K], ``gender`` [N,K] (P(female)),
  ``age`` [N,K] (years), all float32, final detections (peak extraction, top-K and, when the config's NMS
  threshold is > 0, class-agnostic Fast NMS run inside the graph: suppressed rows have score 0, sorted last);
- crop mode: ``gender`` [N] (P(female)) and ``age`` [N] (years), float32.

Exporter choice (torch 2.13): the legacy TorchScript exporter (``dynamo=False``). It works here with no extra
dependency, exports this model in ~1 s (the torch.export-based exporter needs ``onnxscript`` and takes ~20 s on
this CPU), and it maps ``torch.fake_quantize_per_{channel,tensor}_affine`` to QuantizeLinear/DequantizeLinear for
any int8 range, while the dynamo exporter's torchlib rejects the symmetric (-127, 127) weight range that
TensorRT and ONNX Runtime's per-channel weights use. It warns that it is deprecated; torch is pinned to 2.13,
and the exporter is isolated in ``_torch_export`` so switching is one function.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from .decode import decode_crop, decode_scene
from .onnx_run import (  # noqa: F401  (the graph contract and ORT runner, re-exported: model.export is their API)
    CROP_OUTPUT_NAMES,
    INPUT_NAME,
    SCENE_OUTPUT_NAMES,
    Mode,
    OnnxValidationError,
    ort_session,
    output_names,
    run_onnx,
)
from .parity import KEEP_SCORE, PARITY_TOLERANCE, parity, parity_failures  # noqa: F401
from .reparam import reparameterize_model

MIN_OPSET = 17
# Ops of the network body that INT8 quantizes; the decode tail (TopK, GatherElements, Exp, Softmax, ...) stays float.
QUANT_OP_TYPES = ("Conv", "Add", "Concat", "MaxPool", "Resize", "Mul", "Sigmoid", "Split", "Slice",
                  "GlobalAveragePool", "ReduceMean", "Clip")


class SceneExport(nn.Module):
    """Deploy model + in-graph decoding: images -> (boxes, scores, gender, age), the final detections."""

    def __init__(self, model: nn.Module, k: int, nms_iou: float = 0.0, iou_power: float = 0.0):
        super().__init__()
        self.model, self.k, self.nms_iou = model, k, nms_iou  # nms_iou 0: no NMS (arch v1's graph as shipped)
        self.iou_power = iou_power  # 0: the score is the heatmap (no IoU branch)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # The attribute decision (1 + 101 logits) runs at the K peaks only: at every cell it cost 0.1-0.45 ms of a
        # ~5 ms scene (1 thread, AMD EPYC), for maps the graph never outputs (docs/BENCHMARKS.md).
        outputs = self.model(images, mode="scene", defer_attributes=True)
        out = decode_scene(outputs, self.k, nms_iou=self.nms_iou, iou_power=self.iou_power,
                           attribute_decision=self.model.attributes.decide)
        return tuple(out[name] for name in SCENE_OUTPUT_NAMES)


class CropExport(nn.Module):
    """Deploy model + decoding in crop mode: images -> (gender P(female) [N], age years [N])."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = decode_crop(self.model(images, mode="crop"))
        return tuple(out[name] for name in CROP_OUTPUT_NAMES)


def export_wrapper(model: nn.Module, mode: Mode, k: int | None = None, reparameterize: bool = True) -> nn.Module:
    """The module that is exported: the re-parameterized model (BatchNorm folded) with decoding appended."""
    if mode not in ("scene", "crop"):
        raise ValueError(f"mode must be 'scene' or 'crop', got {mode!r}")
    deploy = reparameterize_model(model, mode) if reparameterize else model.eval()
    if mode == "scene":
        cfg = getattr(model, "cfg", None)
        k = k or getattr(cfg, "top_k", 100)
        return SceneExport(deploy, k, cfg.nms_threshold() if cfg is not None else 0.0,
                           getattr(cfg, "iou_score", 0.0)).eval()
    return CropExport(deploy).eval()


def _torch_export(module: nn.Module, example: torch.Tensor, path: Path, names: Sequence[str], opset: int) -> None:
    dynamic = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation of the TorchScript exporter, tracer notes on shape checks
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(names), dynamic_axes=dynamic,
                          do_constant_folding=True)


def _set_output_shapes(path: Path, shapes: list[list[int]]) -> None:
    """Write the static non-batch output dims (K, 4) the tracer left symbolic; the batch axis stays 'batch'."""
    import onnx

    proto = onnx.load(str(path))
    for out, dims in zip(proto.graph.output, shapes):
        shape = out.type.tensor_type.shape
        del shape.dim[:]
        shape.dim.add().dim_param = "batch"
        for d in dims:
            shape.dim.add().dim_value = int(d)
    onnx.save(proto, str(path))


def drop_noop_slices_file(path: str | Path) -> list[str]:
    """``model.onnx_passes.drop_noop_slices`` on a file, in place: the GhostModule's channel slice keeps every
    channel when its width is even, and left in the graph it becomes, after INT8 quantization, the pattern that
    crashes OpenVINO's CPU plugin (``model/onnx_passes.py``). Exact: the outputs do not change."""
    import onnx

    from .onnx_passes import drop_noop_slices

    proto = onnx.load(str(path))
    removed = drop_noop_slices(proto)
    if removed:
        onnx.save(proto, str(path))
    return removed


def simplify_onnx(path: str | Path) -> None:
    """Simplify in place with onnxslim (constant folding, dead-code and shape-op elimination)."""
    import onnx
    import onnxslim

    slim = onnxslim.slim(onnx.load(str(path)))
    onnx.save(slim, str(path))


def export_onnx(model: nn.Module, path: str | Path, mode: Mode = "scene", size: int | None = None,
                k: int | None = None, opset: int = MIN_OPSET, images: torch.Tensor | None = None,
                simplify: bool = True, reparameterize: bool = True) -> dict:
    """Export ``model`` (training or deploy form) to ONNX and validate it; returns the parity report.

    The graph is always built from ``reparameterize_model(model)`` (RepVGG merged, every BatchNorm folded),
    with a dynamic batch axis, simplified with onnxslim, then checked by ``validate_onnx`` and by
    ONNX Runtime vs PyTorch parity on ``images`` (float32 [N,3,S,S]; random if None). Raises
    ``OnnxValidationError`` when a check fails.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = export_wrapper(model, mode, k, reparameterize)
    cfg = getattr(model, "cfg", None)
    size = size or (getattr(cfg, f"{mode}_size", None) if cfg is not None else None) or (320 if mode == "scene" else 112)
    example = images[:1] if images is not None else torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    names = output_names(mode)
    # Built and checked in a temp file beside ``path``, renamed over it only when complete: a full disk or a
    # kill mid-export never leaves a truncated model.onnx, and the previous good file stays until then.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _torch_export(wrapper, example, tmp, names, opset)
        if simplify:
            simplify_onnx(tmp)
        drop_noop_slices_file(tmp)
        with torch.no_grad():
            _set_output_shapes(tmp, [list(t.shape[1:]) for t in wrapper(example)])
        validate_onnx(tmp, mode)
        if images is None:
            images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        report = parity(tmp, wrapper, images, mode)
        failed = parity_failures(report)
        if failed:
            raise OnnxValidationError(f"{path}: ONNX Runtime disagrees with PyTorch: {', '.join(failed)}")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def _load(path: Path):
    import onnx

    if not path.is_file():
        raise OnnxValidationError(f"{path}: ONNX file not found")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf DecodeError, truncated external data, ...
        raise OnnxValidationError(f"{path}: not a readable ONNX model (truncated or corrupt file?): "
                                  f"{type(error).__name__}: {error}") from None


def validate_onnx(path: str | Path, mode: Mode | None = None, contract: bool = True):
    """Load and check an ONNX file: full checker, strict shape inference, and the documented I/O contract.

    ``mode`` None infers it from the outputs. ``contract=False`` skips the I/O contract (a benchmark peer's
    graph). Returns the ModelProto; raises ``OnnxValidationError`` naming the file on a truncated, corrupt or
    non-conforming model.
    """
    import onnx

    path = Path(path)
    proto = _load(path)
    if not proto.graph.node:
        raise OnnxValidationError(f"{path}: the ONNX graph has no nodes (truncated or corrupt file?)")
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as error:
        raise OnnxValidationError(f"{path}: ONNX check failed: {type(error).__name__}: {error}") from None
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise OnnxValidationError(f"{path}: opset {opset} is below {MIN_OPSET}")
    if not contract:
        return proto
    io = describe_io(proto)
    outs = [o["name"] for o in io["outputs"]]
    if mode is None:
        mode = "scene" if "boxes" in outs else "crop"
    problems = []
    if [i["name"] for i in io["inputs"]] != [INPUT_NAME] or io["inputs"][0]["dtype"] != "float32":
        problems.append(f"input must be one float32 tensor '{INPUT_NAME}', got {io['inputs']}")
    elif len(io["inputs"][0]["shape"]) != 4 or io["inputs"][0]["shape"][1] != 3:
        problems.append(f"input '{INPUT_NAME}' must be [N,3,H,W], got {io['inputs'][0]['shape']}")
    if outs != list(output_names(mode)):
        problems.append(f"{mode}-mode outputs must be {list(output_names(mode))}, got {outs}")
    for out in io["outputs"]:
        rank = (3 if out["name"] == "boxes" else 2) if mode == "scene" else 1
        if out["dtype"] != "float32" or len(out["shape"]) != rank:
            problems.append(f"output '{out['name']}' must be float32 of rank {rank}, got {out['dtype']} {out['shape']}")
    if problems:
        raise OnnxValidationError(f"{path}: " + "; ".join(problems))
    return proto


def describe_io(proto) -> dict:
    """Names, dtypes and shapes (ints, or the symbolic name of a dynamic axis) of a model's inputs and outputs."""
    import onnx

    def one(value) -> dict:
        t = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name if t.elem_type else "?"
        return {"name": value.name, "dtype": dtype, "shape": shape}

    return {"inputs": [one(v) for v in proto.graph.input], "outputs": [one(v) for v in proto.graph.output]}


# ---------------------------------------------------------------------------------------------- calibration


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a float32 [N,3,S,S] tensor, one image per batch."""

    def __init__(self, images: torch.Tensor):
        self._it = iter([{INPUT_NAME: images[i:i + 1].numpy()} for i in range(images.shape[0])])

    def get_next(self):
        return next(self._it, None)


def body_nodes(proto) -> list[str]:
    """Names of the nodes of the network body (scope '/model/...') whose op INT8 may quantize.

    The decode tail lives at the wrapper's top-level scope and is left out, so peak extraction, TopK,
    exp() of the box sizes and the age softmax stay float.
    """
    return [n.name for n in proto.graph.node if n.name.startswith("/model/") and n.op_type in QUANT_OP_TYPES]


PASS_THROUGH_OPS = ("Slice", "Split", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def tail_nodes(proto) -> list[str]:
    """Body convs whose output leaves the body, directly or through shape-only ops (``PASS_THROUGH_OPS``, e.g.
    the Slice splitting the attribute logits into gender and age), and those ops: the head logits the decode
    tail reads (heatmap, sizes, offsets, attribute logits)."""
    body = set(body_nodes(proto))
    graph_outputs = {o.name for o in proto.graph.output}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches_tail(node, path: list[str]) -> bool:
        leaves = False
        for output in node.output:
            if output in graph_outputs:
                leaves = True
            for consumer in consumers.get(output, []):
                if consumer.name not in body:
                    leaves = True
                elif consumer.op_type in PASS_THROUGH_OPS and reaches_tail(consumer, path):
                    path.append(consumer.name)
                    leaves = True
        return leaves

    tail: list[str] = []
    for node in proto.graph.node:
        path: list[str] = []
        if node.name in body and node.op_type == "Conv" and reaches_tail(node, path):
            tail += [node.name, *path]
    return tail


def _int8_nodes(proto, float_stem: bool, float_tail: bool) -> list[str]:
    nodes = body_nodes(proto)
    if float_stem:
        stem = next((n.name for n in proto.graph.node if n.op_type == "Conv" and n.name.startswith("/model/")), None)
        nodes = [n for n in nodes if n != stem]
    if float_tail:
        tail = set(tail_nodes(proto))
        nodes = [n for n in nodes if n not in tail]
    return nodes


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: torch.Tensor,
                  activation: Literal["u8", "s8"] = "u8", overrides: dict | None = None,
                  calibrate_method: str = "MinMax", float_stem: bool = True, float_tail: bool = True,
                  contract: bool = True) -> Path:
    """Static INT8 quantization with ONNX Runtime: QDQ format, per-channel symmetric INT8 weights.

    ``calibration``: float32 [N,3,S,S] real images (``load_images``). ``activation`` "u8" (QUInt8 activations:
    U8S8, the fast path of ONNX Runtime on x86 CPUs, ~2x FP32 here; S8S8 is slower than FP32 on this CPU) or
    "s8" (symmetric QInt8 activations, zero point 0: what TensorRT requires). ``overrides``: ORT
    ``TensorQuantOverrides`` (e.g. activation ranges learned by QAT). Only body nodes are quantized; the decode
    tail stays float. ``float_stem``: keep the first conv (3 input channels) in FP32: ONNX Runtime's U8S8
    QLinearConv is ~2x slower than its FP32 NCHWc kernel there (profiled on this CPU, docs/BENCHMARKS.md) and
    the input is then quantized after it. ``float_tail``: keep the head's last convs (``tail_nodes``: heatmap,
    size, offset and attribute logits, 1 to 102 output channels) in FP32: ORT would put their outputs, the
    logits the decode ranks and exponentiates, on an 8-bit grid; on the smoke QAT checkpoint that cost 1.0 pt
    AP50 (0.810 -> 0.800) for no measurable latency (docs/BENCHMARKS.md). The result is validated like every export
    (``contract=False``: without the I/O contract, for the benchmark's peer graph).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    proto = validate_onnx(fp32_path, contract=contract)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_optimization=False, skip_symbolic_shape=True)
        drop_noop_slices_file(pre)  # an FP32 graph exported before export_onnx dropped them (OpenVINO crash)
        symmetric = activation == "s8"
        extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        quantize_static(
            str(pre), str(out_path), _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=_int8_nodes(onnx.load(str(pre)), float_stem, float_tail),
            calibrate_method=CalibrationMethod[calibrate_method],
            extra_options=extra)
    finally:
        pre.unlink(missing_ok=True)
    _finish_int8(proto, out_path)
    validate_onnx(out_path, contract=contract)
    return out_path


def _finish_int8(source, path: Path) -> None:
    """Keep the symbolic batch name / output shapes of the FP32 graph on the quantized graph's I/O, and shorten
    its internal tensor names (``onnx_passes.shorten_tensor_names``: ~13 % of the file, same outputs)."""
    import onnx

    from .onnx_passes import shorten_tensor_names

    proto = onnx.load(str(path))
    for dst, src in zip(list(proto.graph.input) + list(proto.graph.output),
                        list(source.graph.input) + list(source.graph.output)):
        if dst.name == src.name:
            dst.type.CopyFrom(src.type)
    shorten_tensor_names(proto)
    onnx.save(proto, str(path))


def count_qdq(path: str | Path) -> dict[str, int]:
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return {op: ops.count(op) for op in ("QuantizeLinear", "DequantizeLinear")}


def int8_agreement(fp32_path: str | Path, int8_path: str | Path, images: torch.Tensor) -> dict:
    """How far INT8 outputs are from FP32 (reported, not gated: accuracy gates run on the validation set)."""
    a, b = run_onnx(fp32_path, images), run_onnx(int8_path, images)
    report = {}
    for name in a:
        x, y = a[name], b[name]
        if name == "boxes" or x.ndim == 2 and name != "scores":
            continue
        report[name] = float(np.abs(np.sort(x, -1) - np.sort(y, -1)).max()) if name == "scores" else float(np.abs(x - y).max())
    if "scores" in a:
        report["top1_score_diff"] = float(np.abs(a["scores"][:, 0] - b["scores"][:, 0]).max())
    return {k: (v if math.isfinite(v) else None) for k, v in report.items()}
