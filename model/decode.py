"""Turn head tensors into people: peak extraction, top-K, boxes in input pixels, P(female), expected age.

Everything is tensor code with fixed shapes (K rows per image), so the same functions run inside the
exported ONNX graph. Rows past the real detections simply carry low scores; threshold them downstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import HEAD_STRIDE, NUM_AGE_BINS

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


def _gather(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick (N,C,H,W) maps at flat spatial indices (N,K) -> (N,K,C)."""
    n, c = maps.shape[:2]
    flat = maps.reshape(n, c, -1)
    return flat.gather(2, index.unsqueeze(1).expand(n, c, index.shape[1])).transpose(1, 2)


def decode_scene(outputs: dict[str, torch.Tensor], k: int = 100, stride: int = HEAD_STRIDE) -> dict[str, torch.Tensor]:
    """Scene-mode head tensors -> boxes [N,K,4] (input px), scores [N,K], gender P(female) [N,K], age [N,K]."""
    heat = torch.sigmoid(outputs["heatmap"])
    n, _, h, w = heat.shape
    # A cell is a peak when it equals the max of its 3x3 neighbourhood (CenterNet's NMS replacement).
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
    scores, index = peaks.reshape(n, -1).topk(min(k, h * w), dim=1)
    ys = torch.div(index, w, rounding_mode="floor").to(heat.dtype)
    xs = (index - torch.div(index, w, rounding_mode="floor") * w).to(heat.dtype)
    offset = _gather(outputs["offset"], index)
    cx = (xs + offset[..., 0]) * stride
    cy = (ys + offset[..., 1]) * stride
    return {
        "boxes": box_from_regression(cx, cy, _gather(outputs["size"], index), stride),
        "scores": scores,
        "gender": torch.sigmoid(_gather(outputs["gender"], index)[..., 0]),
        "age": expected_age(_gather(outputs["age"], index)),
    }


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
