"""Does an exported ONNX graph compute what the PyTorch model computes? The same answer on every CPU.

Two checks, both on the file that ships:
1. **Raw head tensors.** The last conv of each detection head (heatmap, size, offset, ltrb, iou) and, for the
   attributes, the decision conv (crop) or the pooled attribute features the scene graph's decision reads at its
   peaks, are found in the graph by their module path and exposed as extra outputs of an in-memory copy; ONNX
   Runtime's tensors are compared with PyTorch's with a tolerance. The scene decision itself is checked through
   the decoded gender and age of every kept detection (2.).
2. **Decoded detections, tie-aware.** Peak extraction keeps a cell that equals the max of its 3x3
   neighbourhood. On a near-flat heatmap two neighbouring cells differ by ~1e-7, and which one is "the" peak
   depends on the CPU's kernels (PyTorch's and ONNX Runtime's differ between an Intel AMX and an AMD EPYC
   machine), so comparing sorted top-K lists shifts a whole detection. Instead every ONNX detection must be a
   cell that PyTorch also calls a peak *up to the score tolerance*, with the same score and box; and every
   PyTorch peak that wins by more than the tolerance (over its neighbours and at the top-K cut) must be among
   the ONNX detections, unless NMS may drop it (a peak-like cell scoring at least as high, up to the tolerance,
   overlaps it by the NMS threshold or more, up to ``NMS_IOU_TIE``). A tie may go either way; a real graph error
   still fails.

Plain library (torch, numpy, onnx, onnxruntime); no MLOps imports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import HEAD_STRIDE
from .decode import box_from_ltrb, box_from_regression, cell_anchor, expected_age, score_map
from .onnx_run import Mode, OnnxValidationError, ort_session, output_names, run_onnx

# FP32 ONNX Runtime vs PyTorch. Raw head logits are compared relative to each tensor's largest magnitude (at
# least 1): the detection heads (heatmap, size, offset) to 1e-4 (the shipped weights: 5e-7); the attribute
# logits to 1e-2, because they come from attention pooling avg(g*f)/avg(g), which divides float rounding by a
# small avg(g) on weakly attended windows (the shipped weights on real photos: 9.4e-4, on background cells).
# Decoded: gender gets 1e-3, not 1e-4, for the same reason (QAT checkpoints showed 1.4e-4 and 1.8e-4 while
# scores stayed at ~5e-7); 1e-3 of a probability still catches any real graph error and changes no decision.
# Age gets 0.1 y, the same 1e-3 of its 0-100 range as gender of its [0, 1]: the expected value over 101 bins
# sums that rounding again (the narrow v2 run's scene graph: 0.0116 y from pooled features 2.4e-4 apart, every
# score and box at ~1e-6; 0.01 y had failed its export). "unmatched": detections found on one side only, ties
# excepted.
PARITY_TOLERANCE = {"heads_detection": 1e-4, "heads_attributes": 1e-2, "scores": 1e-4, "boxes_px": 0.5,
                    "gender": 1e-3, "age_years": 0.1, "unmatched": 0}
KEEP_SCORE = 0.05  # from this score on a detection's gender and age are compared too
HEAD_CONVS = ("heatmap", "size", "offset", "ltrb", "iou", "decision")  # module names of the heads' last convs
SCENE_HEADS = {"v1": ("heatmap", "size", "offset", "attributes"), "v2": ("heatmap", "ltrb", "attributes")}
# The scene graph's pooled attribute features (AttributeHead.pool's weighted average, the decision's input).
POOLED_ATTRIBUTES_NODE = "/model/attributes/Div"
NMS_IOU_TIE = 1e-3  # box IoU this close to the NMS threshold may go either way on another CPU


def parity(onnx_path: str | Path, reference: nn.Module, images: torch.Tensor, mode: Mode) -> dict:
    """Max differences ONNX Runtime vs ``reference`` (an export wrapper: ``.model`` is the deploy network) on
    ``images``: raw heads, then decoded detections (scene) or gender/age (crop). ``parity_failures`` judges it."""
    import onnx

    proto = onnx.load(str(onnx_path))
    with torch.no_grad():
        ref_heads = reference.model(images, mode=mode)
        if mode == "scene":
            ref_heads["attributes"] = reference.model(images, mode=mode, defer_attributes=True)["attributes"]
        ref = dict(zip(output_names(mode), (t.numpy() for t in reference(images))))
    got, got_heads = _run_with_heads(proto, images, mode)
    report = {**_heads_difference(ref_heads, got_heads, mode), "images": int(images.shape[0])}
    if mode == "crop":
        report["gender"] = float(np.abs(ref["gender"] - got["gender"]).max())
        report["age_years"] = float(np.abs(ref["age"] - got["age"]).max())
        return report
    decoded = dense_decode(ref_heads, iou_power=getattr(reference, "iou_power", 0.0))
    report.update(match_detections(decoded, got, nms_iou=getattr(reference, "nms_iou", 0.0)))
    return report


def parity_failures(report: dict, tolerance: dict | None = None) -> list[str]:
    """The checks of a parity report that exceed their tolerance, one readable line each."""
    tolerance = tolerance or PARITY_TOLERANCE
    failed = [f"{key} max abs diff {report[key]:.3g} > {tol:g}" for key, tol in tolerance.items()
              if key in report and key != "unmatched" and not report[key] <= tol]
    if report.get("unmatched", 0) > tolerance.get("unmatched", 0):
        failed.append(f"{report['unmatched']} detection(s) on one side only: " + "; ".join(report["unmatched_examples"]))
    return failed


def head_tensor_names(proto) -> dict[str, str]:
    """Output tensor of each head's last conv in an exported graph, found by the exporter's module-path node names
    (``/model/detection/heatmap/Conv``), and of the scene graph's pooled attribute features ("attributes");
    crop-mode graphs have only ``decision``."""
    found: dict[str, list[str]] = {}
    for node in proto.graph.node:
        parts = node.name.rsplit("/", 2)
        if node.op_type == "Conv" and node.name.startswith("/model/") and len(parts) == 3 and parts[1] in HEAD_CONVS:
            found.setdefault(parts[1], []).append(node.output[0])
        if node.name == POOLED_ATTRIBUTES_NODE:
            found.setdefault("attributes", []).append(node.output[0])
    if any(len(outputs) > 1 for outputs in found.values()) or not {"decision", "attributes"} & set(found):
        raise OnnxValidationError(f"cannot find the head convs {HEAD_CONVS} by name in the graph (found {found})")
    return {name: outputs[0] for name, outputs in found.items()}


def _run_with_heads(proto, images: torch.Tensor, mode: Mode) -> tuple[dict, dict]:
    """Run an in-memory copy of the graph that also outputs the raw head tensors."""
    import onnx

    heads = head_tensor_names(proto)
    wanted = SCENE_HEADS["v2" if "ltrb" in heads else "v1"] if mode == "scene" else ("decision",)
    if mode == "scene" and "iou" in heads:  # arch v2 with the IoU branch (ModelConfig.iou_score)
        wanted = (*wanted, "iou")
    missing = [name for name in wanted if name not in heads]
    if missing:
        raise OnnxValidationError(f"scene graph without the head conv(s) {missing}")
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for name in wanted:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(heads[name], onnx.TensorProto.FLOAT, None))
    outputs = run_onnx(ort_session(probe.SerializeToString()), images)
    final = {name: outputs[name] for name in output_names(mode)}
    return final, {name: outputs[heads[name]] for name in wanted}


def _heads_difference(ref_heads: dict[str, torch.Tensor], got_heads: dict[str, np.ndarray], mode: Mode) -> dict:
    """Largest |ONNX - PyTorch| of the detection and the attribute head logits, each tensor's difference relative
    to its largest magnitude (at least 1)."""
    if mode == "crop":
        ref = {"decision": torch.cat([ref_heads["gender"][:, None], ref_heads["age"]], 1)}
    else:
        ref = {name: ref_heads[name] for name in ("heatmap", "size", "offset", "ltrb", "iou", "attributes")
               if name in ref_heads}
    report = {"heads_attributes": 0.0} if mode == "crop" else {"heads_detection": 0.0, "heads_attributes": 0.0}
    for name, tensor in ref.items():
        expected = tensor.numpy().reshape(got_heads[name].shape)
        relative = float(np.abs(got_heads[name] - expected).max()) / max(1.0, float(np.abs(expected).max()))
        key = "heads_attributes" if name in ("decision", "attributes") else "heads_detection"
        report[key] = max(report[key], relative)
    return report


def dense_decode(heads: dict[str, torch.Tensor], stride: int = HEAD_STRIDE, iou_power: float = 0.0
                 ) -> dict[str, np.ndarray]:
    """Every cell decoded as if it were a peak: score, box, gender, age [N, H*W(,4)], plus the 3x3
    neighbourhood max of the score (with and without the cell itself) to tell peaks and ties. The score is
    ``decode_scene``'s (with the IoU branch: heatmap^(1-a) * IoU^a)."""
    with torch.no_grad():
        heat = score_map(heads, iou_power)
        n, _, h, w = heat.shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=heat.dtype), torch.arange(w, dtype=heat.dtype), indexing="ij")
        if "ltrb" in heads:
            boxes = box_from_ltrb(cell_anchor(xs, stride), cell_anchor(ys, stride), heads["ltrb"].permute(0, 2, 3, 1),
                                  stride)
        else:
            cx = (xs + heads["offset"][:, 0]) * stride
            cy = (ys + heads["offset"][:, 1]) * stride
            boxes = box_from_regression(cx, cy, heads["size"].permute(0, 2, 3, 1), stride)
        around = F.max_pool2d(heat, 3, stride=1, padding=1)
        neighbours = _neighbour_max(heat)
        flat = {"scores": heat, "around": around, "neighbours": neighbours,
                "gender": torch.sigmoid(heads["gender"]), "age": expected_age(heads["age"].permute(0, 2, 3, 1))}
        out = {name: value.reshape(n, h * w).numpy() for name, value in flat.items()}
        out["boxes"] = boxes.reshape(n, h * w, 4).numpy()
    return out


def _neighbour_max(heat: torch.Tensor) -> torch.Tensor:
    """Max over the 8 neighbours of each cell (cells outside the map do not count)."""
    padded = F.pad(heat, (1, 1, 1, 1), value=-1.0)
    h, w = heat.shape[-2:]
    shifts = [padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    return torch.stack(shifts).amax(0)


def match_detections(dense: dict[str, np.ndarray], got: dict[str, np.ndarray],
                     tie: float = PARITY_TOLERANCE["scores"], nms_iou: float = 0.0) -> dict:
    """Match every ONNX detection row (but the zero-score fillers of an image with fewer than K peaks, and rows NMS
    zeroed) to a PyTorch cell that is a peak up to ``tie`` with the same score and the nearest box; then count
    PyTorch peaks that win by more than ``tie`` yet are missing from the ONNX rows and that NMS (``nms_iou`` > 0)
    could not have dropped."""
    report = {"scores": 0.0, "boxes_px": 0.0, "gender": 0.0, "age_years": 0.0, "matched": 0, "kept": 0, "unmatched": 0,
              "unmatched_examples": []}
    k = got["scores"].shape[1]
    for i in range(got["scores"].shape[0]):
        score, peak_like = dense["scores"][i], dense["scores"][i] >= dense["around"][i] - tie
        used = np.zeros(score.shape, bool)
        for row in np.argsort(-got["scores"][i], kind="stable"):
            if got["scores"][i, row] <= tie:  # a filler row (fewer peaks than K): peak extraction zeroed its score
                continue
            candidates = peak_like & ~used & (np.abs(score - got["scores"][i, row]) <= tie)
            box_err = np.abs(dense["boxes"][i] - got["boxes"][i, row]).max(axis=1)
            box_err[~candidates] = np.inf
            cell = int(box_err.argmin())
            if not np.isfinite(box_err[cell]):
                _unmatched(report, f"image {i} row {row}: ONNX score {got['scores'][i, row]:.6g} is no PyTorch peak")
                continue
            used[cell] = True
            report["matched"] += 1
            report["scores"] = max(report["scores"], float(abs(score[cell] - got["scores"][i, row])))
            report["boxes_px"] = max(report["boxes_px"], float(box_err[cell]))
            if got["scores"][i, row] >= KEEP_SCORE:
                report["kept"] += 1
                report["gender"] = max(report["gender"], float(abs(dense["gender"][i, cell] - got["gender"][i, row])))
                report["age_years"] = max(report["age_years"], float(abs(dense["age"][i, cell] - got["age"][i, row])))
        for cell in _certain_peaks(dense, i, k, tie):
            if not used[cell] and not (nms_iou > 0 and _nms_may_drop(dense, i, cell, peak_like, nms_iou, tie)):
                _unmatched(report, f"image {i}: PyTorch peak at cell {cell} (score {score[cell]:.6g}) missing in ONNX")
    return report


def _certain_peaks(dense: dict[str, np.ndarray], i: int, k: int, tie: float) -> np.ndarray:
    """Cells that are peaks on any CPU: above every neighbour by more than ``tie`` and inside the top-K by more
    than ``tie`` (fewer than K peak-like cells could outrank them)."""
    score = dense["scores"][i]
    peak_like = score >= dense["around"][i] - tie
    clear = np.nonzero((score > dense["neighbours"][i] + tie) & (score >= KEEP_SCORE))[0]
    contenders = np.sort(score[peak_like])[::-1]
    outranked_by = np.searchsorted(-contenders, -(score[clear] - 2 * tie), side="left") - 1  # minus itself
    return clear[outranked_by < k]


def _nms_may_drop(dense: dict[str, np.ndarray], i: int, cell: int, peak_like: np.ndarray, nms_iou: float,
                  tie: float) -> bool:
    """Could NMS drop ``cell`` on some CPU: does another peak-like cell scoring at least as high (up to ``tie``)
    overlap its box by ``nms_iou - NMS_IOU_TIE`` or more?"""
    score, boxes = dense["scores"][i], dense["boxes"][i]
    rivals = np.nonzero(peak_like & (score >= score[cell] - tie))[0]
    rivals = rivals[rivals != cell]
    if not len(rivals):
        return False
    a, b = boxes[cell], boxes[rivals]
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return bool((inter / np.maximum(union, 1e-6) >= nms_iou - NMS_IOU_TIE).any())


def _unmatched(report: dict, what: str) -> None:
    report["unmatched"] += 1
    if len(report["unmatched_examples"]) < 3:
        report["unmatched_examples"].append(what)
