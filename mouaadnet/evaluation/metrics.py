"""Metrics shared by training validation and the ``evaluate`` command.

Every function returns plain Python floats / ints / lists so the result can go straight to JSON or MLflow.
Empty inputs give ``count`` 0 and NaN metrics instead of raising.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mouaadnet.data.types import (
    AGE_GROUP_RANGES,
    AGE_GROUPS,
    FAIRFACE_AGE_BINS,
    FAIRFACE_AGE_RANGES,
    FAIRFACE_BIN_OFFSET,
    MAX_AGE,
    UNKNOWN,
)

NAN = float("nan")
GENDER_CLASSES: tuple[str, ...] = ("male", "female")  # index = label value (0 male, 1 female)
AGE_TOLERANCES: tuple[int, ...] = (1, 3, 5, 10, 15)
PERSON_CATEGORY_ID = 1
COCO_MAX_DETS: list[int] = [1, 10, 100]  # COCO's defaults; AR100 reads the last one


# ----------------------------------------------------------------------------------------------- helpers


def _as_array(values: Any, dtype: type = np.float64) -> np.ndarray:
    """Flatten a list / numpy array / torch tensor into a 1-D numpy array."""
    if hasattr(values, "detach"):  # torch tensor: leave autograd and the device first
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype).reshape(-1)


def _as_boxes(values: Any) -> np.ndarray:
    """Convert boxes to a float (N, 4) array, accepting an empty list."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1, 4)


def _safe_div(num: float, den: float) -> float:
    """Divide, giving NaN rather than an error when the denominator is zero."""
    return float(num) / float(den) if den else NAN


def _round_half_up(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer year, halves going up (np.round would send 2.5 to 2)."""
    return np.floor(values + 0.5)


# ----------------------------------------------------------------------------------------------- detection


def _xyxy_to_xywh(boxes: np.ndarray) -> list[list[float]]:
    """Convert x1,y1,x2,y2 boxes to COCO's x,y,w,h as plain floats."""
    return [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes]


def _build_coco_gt(ground_truths: list[dict]) -> COCO:
    """Build an in-memory COCO ground-truth object, one image per entry (ids from 1)."""
    images, annotations = [], []
    for image_id, gt in enumerate(ground_truths, start=1):
        images.append({"id": image_id})
        for box in _xyxy_to_xywh(_as_boxes(gt["boxes"])):
            # ids start at 1: COCOeval treats a matched id of 0 as "unmatched".
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": PERSON_CATEGORY_ID,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": PERSON_CATEGORY_ID, "name": "person"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _build_coco_dt(coco_gt: COCO, predictions: list[dict]) -> COCO:
    """Build the COCO detections object; loadRes raises on an empty list, so that case is built by hand."""
    results = []
    for image_id, pred in enumerate(predictions, start=1):
        boxes = _xyxy_to_xywh(_as_boxes(pred["boxes"]))
        scores = _as_array(pred["scores"])
        if len(boxes) != len(scores):
            raise ValueError(f"image {image_id - 1}: {len(boxes)} boxes but {len(scores)} scores")
        for box, score in zip(boxes, scores, strict=True):
            results.append(
                {"image_id": image_id, "category_id": PERSON_CATEGORY_ID, "bbox": box, "score": float(score)}
            )
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            return coco_gt.loadRes(results)
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": list(coco_gt.dataset["images"]),
            "annotations": [],
            "categories": list(coco_gt.dataset["categories"]),
        }
        coco_dt.createIndex()
    return coco_dt


def _empty_detection_result(reason: str, num_images: int, num_detections: int) -> dict:
    """Detection result when AP is undefined (no ground-truth boxes at all)."""
    return {
        "AP50": NAN,
        "AP75": NAN,
        "AP50_95": NAN,
        "AR100": NAN,
        "pr_curve": {"recall": [], "precision": []},
        "num_images": num_images,
        "num_gt": 0,
        "num_detections": num_detections,
        "reason": reason,
    }


def detection_metrics(predictions: list[dict], ground_truths: list[dict]) -> dict:
    """COCO-style person detection metrics (AP50, AP75, AP50_95, AR100, PR curve at IoU 0.5) via pycocotools."""
    if len(predictions) != len(ground_truths):
        raise ValueError(
            f"{len(predictions)} prediction entries but {len(ground_truths)} ground-truth entries"
        )
    num_gt = sum(len(_as_boxes(gt["boxes"])) for gt in ground_truths)
    num_dets = sum(len(_as_boxes(pred["boxes"])) for pred in predictions)
    if num_gt == 0:
        return _empty_detection_result("no ground-truth boxes: AP is undefined", len(ground_truths), num_dets)

    coco_gt = _build_coco_gt(ground_truths)
    coco_dt = _build_coco_dt(coco_gt, predictions)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.params.maxDets = list(COCO_MAX_DETS)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats

    # precision is [IoU thr, recall thr, category, area range, maxDets]; IoU 0.5, area "all", 100 dets.
    precision = np.asarray(evaluator.eval["precision"][0, :, 0, 0, -1], dtype=np.float64)
    precision = np.where(precision < 0, 0.0, precision)  # -1 marks "no data"; treat as zero precision
    return {
        "AP50": float(stats[1]),
        "AP75": float(stats[2]),
        "AP50_95": float(stats[0]),
        "AR100": float(stats[8]),
        "pr_curve": {"recall": [float(r) for r in evaluator.params.recThrs], "precision": precision.tolist()},
        "num_images": len(ground_truths),
        "num_gt": int(num_gt),
        "num_detections": int(num_dets),
    }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of x1,y1,x2,y2 boxes: (A,4) x (B,4) -> (A,B)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


# Person height in the image the boxes are given in (the model input for `evaluate`: 320 px scenes), in pixels.
SIZE_BANDS: dict[str, tuple[float, float]] = {"small": (0, 32), "medium": (32, 96), "large": (96, math.inf)}


def size_bands(heights: np.ndarray) -> dict[str, np.ndarray]:
    """For each ``SIZE_BANDS`` band, which of the people of ``heights`` (px) fall in it (boolean mask)."""
    return {band: (heights >= low) & (heights < high) for band, (low, high) in SIZE_BANDS.items()}


def box_fit(predictions: list[dict], ground_truths: list[dict]) -> dict[str, float]:
    """How well the box a user sees fits each person: for every labelled person, the IoU of the highest-scoring
    detection that overlaps it (0 when none does). ``box_fit_mean_iou`` overall and per person height band,
    ``box_fit_at75``: the share of people whose box reaches IoU 0.75 (what AP75 needs)."""
    best, heights = [], []
    for pred, truth in zip(predictions, ground_truths, strict=True):
        gt, det = _as_boxes(truth["boxes"]), _as_boxes(pred["boxes"])
        scores = _as_array(pred.get("scores", np.ones(len(det))))
        iou = box_iou(gt, det)
        for row in range(len(gt)):
            overlapping = np.flatnonzero(iou[row] > 0) if iou.size else np.empty(0, np.int64)
            top = overlapping[scores[overlapping].argmax()] if len(overlapping) else -1
            best.append(float(iou[row, top]) if top >= 0 else 0.0)
        heights.extend((gt[:, 3] - gt[:, 1]).tolist())
    best_iou, height = np.asarray(best), np.asarray(heights)
    out = {"box_fit_mean_iou": float(best_iou.mean()) if len(best_iou) else NAN,
           "box_fit_at75": float((best_iou >= 0.75).mean()) if len(best_iou) else NAN}
    for band, inside in size_bands(height).items():
        out[f"box_fit_mean_iou_{band}"] = float(best_iou[inside].mean()) if inside.any() else NAN
        out[f"box_fit_count_{band}"] = float(inside.sum())
    return out


# ----------------------------------------------------------------------------------------------- gender


def gender_metrics(prob_female: Any, labels: Any, threshold: float = 0.5) -> dict:
    """Gender accuracy, per-class precision / recall / F1 and a 2x2 confusion (rows true, cols predicted)."""
    probs = _as_array(prob_female)
    truth = _as_array(labels)
    if probs.shape != truth.shape:
        raise ValueError(f"{probs.size} probabilities but {truth.size} labels")
    known = truth != UNKNOWN
    truth = truth[known].astype(np.int64)
    predicted = (probs[known] >= threshold).astype(np.int64)

    confusion = np.zeros((2, 2), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    result: dict[str, Any] = {
        "accuracy": _safe_div(np.trace(confusion), confusion.sum()),
        "confusion": confusion.tolist(),
        "count": int(confusion.sum()),
    }
    for index, name in enumerate(GENDER_CLASSES):
        true_pos = confusion[index, index]
        precision = _safe_div(true_pos, confusion[:, index].sum())
        recall = _safe_div(true_pos, confusion[index, :].sum())
        result[f"precision_{name}"] = precision
        result[f"recall_{name}"] = recall
        result[f"f1_{name}"] = _f1(precision, recall)
    return result


def _f1(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall; NaN when either is undefined, 0 when both are 0."""
    if math.isnan(precision) or math.isnan(recall):
        return NAN
    return _safe_div(2 * precision * recall, precision + recall) if precision + recall else 0.0


# ----------------------------------------------------------------------------------------------- age


def age_metrics(pred_age: Any, true_age: Any) -> dict:
    """Age MAE, exact accuracy and accuracy within ±k years (on the age rounded to whole years)."""
    pred = _as_array(pred_age)
    truth = _as_array(true_age)
    if pred.shape != truth.shape:
        raise ValueError(f"{pred.size} predicted ages but {truth.size} true ages")
    known = truth != UNKNOWN
    pred, truth = pred[known], truth[known]
    count = int(truth.size)

    # Tolerances use the rounded age so that exact accuracy is simply "within 0" and the series is monotone.
    rounded_error = np.abs(_round_half_up(pred) - truth)
    result: dict[str, Any] = {
        "mae": float(np.mean(np.abs(pred - truth))) if count else NAN,
        "acc_exact": float(np.mean(rounded_error == 0)) if count else NAN,
    }
    for tolerance in AGE_TOLERANCES:
        result[f"acc_within_{tolerance}"] = float(np.mean(rounded_error <= tolerance)) if count else NAN
    result["count"] = count
    return result


def _to_range_index(age: Any, ranges: tuple[tuple[int, int], ...]) -> np.ndarray:
    years = np.clip(_round_half_up(_as_array(age)), 0, MAX_AGE)
    upper_bounds = np.array([high for _, high in ranges])
    # Index of the first range whose inclusive upper bound is >= the age.
    return np.searchsorted(upper_bounds, years, side="left").astype(np.int64)


def age_to_group(age: Any) -> np.ndarray:
    """Map ages in years to PETA age-group indices (rounded to whole years, clipped to 0..MAX_AGE)."""
    return _to_range_index(age, AGE_GROUP_RANGES)


def age_to_fairface_bin(age: Any) -> np.ndarray:
    """Map ages in years to FairFace age-bin indices (0 = '0-2' ... 8 = 'more than 70')."""
    return _to_range_index(age, FAIRFACE_AGE_RANGES)


def _range_confusion(pred_age: Any, true_index: Any, first: int, labels: tuple[str, ...], to_index) -> dict:
    pred = _as_array(pred_age)
    truth = _as_array(true_index)
    if pred.shape != truth.shape:
        raise ValueError(f"{pred.size} predicted ages but {truth.size} true groups")
    # age_group indexes model.config.AGE_RANGES: keep only this scheme's rows (PETA groups or FairFace bins).
    known = (truth >= first) & (truth < first + len(labels))
    truth = truth[known].astype(np.int64) - first
    predicted = to_index(pred[known])
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    return {
        "accuracy": _safe_div(np.trace(confusion), confusion.sum()),
        "confusion": confusion.tolist(),
        "labels": list(labels),
        "count": int(confusion.sum()),
    }


def age_group_metrics(pred_age: Any, true_group: Any) -> dict:
    """PETA age-group accuracy and 5x5 confusion (rows true, cols predicted) of predicted ages mapped to groups."""
    return _range_confusion(pred_age, true_group, 0, AGE_GROUPS, age_to_group)


def age_bin_metrics(pred_age: Any, true_group: Any) -> dict:
    """FairFace age-bin accuracy and 9x9 confusion over the rows labelled with a FairFace bin."""
    return _range_confusion(pred_age, true_group, FAIRFACE_BIN_OFFSET, FAIRFACE_AGE_BINS, age_to_fairface_bin)
