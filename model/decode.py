"""Turn head tensors into people: peak extraction, top-K, boxes in input pixels, P(female), expected age.

Everything is tensor code with fixed shapes (K rows per image), so the same functions run inside the
exported ONNX graph. Rows past the real detections simply carry low scores; threshold them downstream.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import HEAD_STRIDE, NUM_AGE_BINS

# Pooled attribute features at K cells [N,K,C] -> (gender logit [N,K], age logits [N,K,101]).
AttributeDecision = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
SIZE_LOG_LIMIT = 6.0  # exp(6) * stride ~ 3200 px: keeps exp() finite in fp16 / INT8 graphs


def expected_age(age_logits: torch.Tensor) -> torch.Tensor:
    """Age in years = expectation of the softmax over the 0..100 bins (last dim), not the argmax."""
    ages = torch.arange(NUM_AGE_BINS, dtype=age_logits.dtype, device=age_logits.device)
    return (torch.softmax(age_logits, dim=-1) * ages).sum(dim=-1)


def box_from_regression(cx: torch.Tensor, cy: torch.Tensor, size: torch.Tensor, stride: int) -> torch.Tensor:
    """x1,y1,x2,y2 from a center (pixels) and the size head's log(w/stride), log(h/stride) in the last dim."""
    wh = torch.exp(size.clamp(-SIZE_LOG_LIMIT, SIZE_LOG_LIMIT)) * stride
    half_w, half_h = wh[..., 0] / 2, wh[..., 1] / 2
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


def box_from_ltrb(ax: torch.Tensor, ay: torch.Tensor, ltrb: torch.Tensor, stride: int) -> torch.Tensor:
    """x1,y1,x2,y2 from an anchor point (pixels) and log-distances to the left, top, right, bottom sides (stride
    units) in the last dim (arch v2)."""
    d = torch.exp(ltrb.clamp(-SIZE_LOG_LIMIT, SIZE_LOG_LIMIT)) * stride
    return torch.stack([ax - d[..., 0], ay - d[..., 1], ax + d[..., 2], ay + d[..., 3]], dim=-1)


def cell_anchor(cell: torch.Tensor, stride: int) -> torch.Tensor:
    """Pixel coordinate of a cell's centre, the point arch v2 measures box sides from."""
    return (cell + 0.5) * stride


def cell_anchors(height: int, width: int, stride: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor x and y (px) of every cell of an h x w map, flat in row-major order [h*w]."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                            torch.arange(width, dtype=torch.float32, device=device), indexing="ij")
    return cell_anchor(xs.flatten(), stride), cell_anchor(ys.flatten(), stride)


def cell_boxes(ltrb: torch.Tensor, stride: int = HEAD_STRIDE) -> torch.Tensor:
    """Arch v2 ``ltrb`` maps [N,4,h,w] (log-distances) -> the box every cell decodes [N,h*w,4], float32."""
    n, _, h, w = ltrb.shape
    ax, ay = cell_anchors(h, w, stride, ltrb.device)
    return box_from_ltrb(ax, ay, ltrb.float().reshape(n, 4, -1).transpose(1, 2), stride)


def box_iou_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU [N,K,K] of x1,y1,x2,y2 boxes [N,K,4] (plain Min/Max/Mul ops: any ONNX runtime)."""
    a, b = boxes.unsqueeze(2), boxes.unsqueeze(1)
    iw = (torch.min(a[..., 2], b[..., 2]) - torch.max(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.min(a[..., 3], b[..., 3]) - torch.max(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return inter / (area.unsqueeze(2) + area.unsqueeze(1) - inter).clamp(min=1e-6)


def fast_nms(decoded: dict[str, torch.Tensor], iou: float) -> dict[str, torch.Tensor]:
    """Class-agnostic Fast NMS (YOLACT, Bolya et al. 2019) on score-sorted rows [N,K,...]: a row whose box overlaps
    any higher-scored row by more than ``iou`` gets score 0, then the rows are re-sorted by score.

    Why Fast NMS and not ONNX NonMaxSuppression: it is a fixed-shape K x K IoU matrix, an upper-triangular max and
    a TopK, so every runtime (ORT, OpenVINO, onnxruntime-web, TensorRT, INT8 graphs) runs it and the graph contract
    [N,K,...] does not change. It may also drop a row that only an already-suppressed row overlaps (slightly stricter
    than greedy NMS; not measured against it here).
    """
    k = decoded["scores"].shape[1]
    overlap = box_iou_matrix(decoded["boxes"])
    # Row j is compared with every row i < j (higher or equal score: the rows come sorted from TopK).
    higher = torch.ones(k, k, dtype=torch.bool, device=overlap.device).triu(diagonal=1)
    worst = (overlap * higher.to(overlap.dtype)).amax(dim=1)  # [N,K]: max IoU of row j with any earlier row
    scores = decoded["scores"] * (worst <= iou).to(decoded["scores"].dtype)
    scores, order = scores.topk(k, dim=1)
    return {"boxes": decoded["boxes"].gather(1, order.unsqueeze(-1).expand(-1, -1, 4)), "scores": scores,
            "gender": decoded["gender"].gather(1, order), "age": decoded["age"].gather(1, order)}


def _gather(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick (N,C,H,W) maps at flat spatial indices (N,K) -> (N,K,C)."""
    n, c = maps.shape[:2]
    flat = maps.reshape(n, c, -1)
    return flat.gather(2, index.unsqueeze(1).expand(n, c, index.shape[1])).transpose(1, 2)


def score_map(outputs: dict[str, torch.Tensor], iou_power: float = 0.0) -> torch.Tensor:
    """Each cell's person score [N,1,h,w]: the heatmap, or with the IoU branch heatmap^(1-a) * IoU^a."""
    heat = torch.sigmoid(outputs["heatmap"])
    if iou_power > 0 and "iou" in outputs:
        heat = heat.pow(1.0 - iou_power) * torch.sigmoid(outputs["iou"]).pow(iou_power)
    return heat


def decode_scene(outputs: dict[str, torch.Tensor], k: int = 100, stride: int = HEAD_STRIDE,
                 nms_iou: float = 0.0, iou_power: float = 0.0,
                 attribute_decision: AttributeDecision | None = None) -> dict[str, torch.Tensor]:
    """Scene-mode head tensors -> boxes [N,K,4] (input px), scores [N,K], gender P(female) [N,K], age [N,K].

    Arch v1 (``size`` + ``offset``) or v2 (``ltrb``: the box is read at the peak cell). ``nms_iou`` > 0 runs
    class-agnostic Fast NMS after top-K (suppressed rows: score 0, sorted last). ``iou_power`` a > 0 with an
    ``iou`` output: peaks and scores are found on heatmap^(1-a) * predicted IoU^a (``ModelConfig.iou_score``).
    Outputs with pooled ``attributes`` instead of gender/age maps (the deploy graph) need ``attribute_decision``:
    it maps the features picked at the K peaks [N,K,C] to gender and age logits, so the 101-bin decision runs at K
    cells, not at every cell."""
    heat = score_map(outputs, iou_power)
    n, _, h, w = heat.shape
    # A cell is a peak when it equals the max of its 3x3 neighbourhood (CenterNet's NMS replacement).
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
    scores, index = peaks.reshape(n, -1).topk(min(k, h * w), dim=1)
    ys = torch.div(index, w, rounding_mode="floor").to(heat.dtype)
    xs = (index - torch.div(index, w, rounding_mode="floor") * w).to(heat.dtype)
    if "ltrb" in outputs:
        boxes = box_from_ltrb(cell_anchor(xs, stride), cell_anchor(ys, stride), _gather(outputs["ltrb"], index), stride)
    else:
        offset = _gather(outputs["offset"], index)
        boxes = box_from_regression((xs + offset[..., 0]) * stride, (ys + offset[..., 1]) * stride,
                                    _gather(outputs["size"], index), stride)
    gender, age = _attribute_logits(outputs, index, attribute_decision)
    decoded = {"boxes": boxes, "scores": scores, "gender": torch.sigmoid(gender), "age": expected_age(age)}
    return fast_nms(decoded, nms_iou) if nms_iou > 0 else decoded


def _attribute_logits(outputs: dict[str, torch.Tensor], index: torch.Tensor,
                      attribute_decision: AttributeDecision | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gender logit [N,K] and age logits [N,K,101] at the peak cells."""
    if "attributes" not in outputs:
        return _gather(outputs["gender"], index)[..., 0], _gather(outputs["age"], index)
    if attribute_decision is None:
        raise ValueError("scene outputs carry pooled attribute features: decoding needs the attribute decision "
                         "(AttributeHead.decide)")
    return attribute_decision(_gather(outputs["attributes"], index))


def decode_crop(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Crop-mode logits -> gender P(female) [N] and expected age [N]."""
    return {"gender": torch.sigmoid(outputs["gender"]), "age": expected_age(outputs["age"])}


def filter_detections(decoded: dict[str, torch.Tensor], threshold: float) -> list[dict[str, torch.Tensor]]:
    """Per image, keep the rows of a decode_scene result whose score reaches ``threshold``."""
    results = []
    for i in range(decoded["scores"].shape[0]):
        keep = decoded["scores"][i] >= threshold
        results.append({name: value[i][keep] for name, value in decoded.items()})
    return results
