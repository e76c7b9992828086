"""Evaluation of a model on scene and crop validation sets; used by training validation and `evaluate`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mouaadnet.data.dataset import CropDataset, SceneDataset, collate_crop, collate_scene
from mouaadnet.data.types import UNKNOWN, EvalSet, Sample
from mouaadnet.evaluation import attributes
from mouaadnet.evaluation.metrics import (
    age_bin_metrics,
    age_group_metrics,
    age_metrics,
    box_fit,
    box_iou,
    detection_metrics,
    gender_metrics,
)
from mouaadnet.evaluation.predict import predict

MIN_DETECTION_SCORE = 0.01  # detections kept for AP (COCO evaluates the whole ranked list)
MATCH_IOU = 0.5  # a labelled person's attributes are read from the detection matching it at this IoU


@dataclass
class EvalResult:
    """Metrics (JSON-ready) and the raw arrays the plots need."""

    name: str
    mode: str
    metrics: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


def match_attributes(gt_boxes: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray, threshold: float) -> np.ndarray:
    """For each ground-truth person, the index of its best detection (score >= threshold, IoU >= 0.5), else -1."""
    keep = np.flatnonzero(det_scores >= threshold)
    iou = box_iou(gt_boxes, det_boxes[keep])
    matches = np.full(len(gt_boxes), -1, np.int64)
    if iou.size:
        best = iou.argmax(1)
        ok = iou[np.arange(len(gt_boxes)), best] >= MATCH_IOU
        matches[ok] = keep[best[ok]]
    return matches


def _loader(dataset, batch_size: int, collate) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=0)


@torch.no_grad()
def evaluate_scene(model: torch.nn.Module, samples: list[Sample], size: int, batch_size: int = 16,
                   device: str = "cpu", threshold: float = 0.3, crop_size: int | None = None,
                   flip: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """COCO AP of persons plus gender/age of the labelled people matched by a detection (age groups where a person
    has one but no exact age, e.g. PETA bodies pasted into scenes).

    ``crop_size`` set: a second pass classifies each found person's crop in crop mode (``flip``: with its mirror
    image too) and its gender/age replace the scene head's (``mouaadnet.evaluation.attributes``)."""
    predictions, ground_truths = [], []
    prob_female, gender_true, pred_age, age_true, group_true, matched, labelled = [], [], [], [], [], 0, 0
    second_pass_seconds, second_pass_people = 0.0, 0
    for batch in _loader(SceneDataset(samples, size, augment=False), batch_size, collate_scene):
        decoded = predict(model, batch["images"], "scene", device)
        if crop_size:
            start = time.perf_counter()
            decoded, people = attributes.second_pass(model, batch["images"], decoded, crop_size, threshold, flip)
            second_pass_seconds += time.perf_counter() - start
            second_pass_people += people
        decoded = {k: v.float().cpu().numpy() for k, v in decoded.items()}
        for i in range(len(batch["images"])):
            rows = batch["box_mask"][i].numpy()
            gt = batch["boxes"][i].numpy()[rows]
            keep = decoded["scores"][i] >= MIN_DETECTION_SCORE
            predictions.append({"boxes": decoded["boxes"][i][keep], "scores": decoded["scores"][i][keep]})
            ground_truths.append({"boxes": gt})
            genders, ages = batch["gender"][i].numpy()[rows], batch["age"][i].numpy()[rows]
            groups = np.where(ages >= 0, UNKNOWN, batch["age_group"][i].numpy()[rows])
            has_label = (genders >= 0) | (ages >= 0) | (groups >= 0)
            if not has_label.any():
                continue
            found = match_attributes(gt, decoded["boxes"][i], decoded["scores"][i], threshold)
            labelled += int(has_label.sum())
            for row in np.flatnonzero(has_label & (found >= 0)):
                matched += 1
                prob_female.append(decoded["gender"][i][found[row]])
                gender_true.append(genders[row])
                pred_age.append(decoded["age"][i][found[row]])
                age_true.append(ages[row])
                group_true.append(groups[row])
    detection = detection_metrics(predictions, ground_truths)
    metrics = {k: v for k, v in detection.items() if k != "pr_curve"}
    metrics.update(box_fit(predictions, ground_truths))
    metrics.update(_prefixed("gender", gender_metrics(prob_female, gender_true)))
    metrics.update(_prefixed("age", age_metrics(pred_age, age_true)))
    groups = age_group_metrics(pred_age, group_true)
    if groups["count"]:  # only sets with age groups but no exact ages report them (exact ages say more)
        metrics.update(_prefixed("age_group", groups))
    metrics["attr_matched_fraction"] = matched / labelled if labelled else float("nan")
    if second_pass_people:
        metrics["second_pass_ms_per_person"] = 1000 * second_pass_seconds / second_pass_people
    details = {"pr_curve": detection.get("pr_curve"), "pred_age": pred_age, "true_age": age_true}
    return metrics, details


@torch.no_grad()
def evaluate_crop(model: torch.nn.Module, samples: list[Sample], size: int, batch_size: int = 64,
                  device: str = "cpu", flip: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gender, exact-age and age-group metrics on crops (``flip``: averaged with each crop's mirror image)."""
    prob_female, gender_true, pred_age, age_true, group_true = [], [], [], [], []
    for batch in _loader(CropDataset(samples, size, augment=False), batch_size, collate_crop):
        decoded = attributes.classify_crops(model, batch["images"].to(device), flip)
        prob_female += decoded["gender"].float().cpu().tolist()
        pred_age += decoded["age"].float().cpu().tolist()
        gender_true += batch["gender"].tolist()
        age_true += batch["age"].tolist()
        group_true += batch["age_group"].tolist()
    metrics = _prefixed("gender", gender_metrics(prob_female, gender_true))
    metrics.update(_prefixed("age", age_metrics(pred_age, age_true)))
    metrics.update(_prefixed("age_group", age_group_metrics(pred_age, group_true)))
    bins = age_bin_metrics(pred_age, group_true)
    if bins["count"]:  # only FairFace-style sets carry age bins
        metrics.update(_prefixed("age_bin", bins))
    details = {"pred_age": pred_age, "true_age": age_true, "p_female": prob_female, "true_gender": gender_true}
    return metrics, details


def _prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def evaluate_sets(model: torch.nn.Module, sets: list[EvalSet], scene_size: int, crop_size: int,
                  device: str = "cpu", threshold: float = 0.3, flip: bool = False,
                  second_pass: bool = False) -> list[EvalResult]:
    """Evaluate an eval-mode model on every validation set (``flip`` / ``second_pass``: the attribute levers of
    ``mouaadnet.evaluation.attributes``)."""
    results = []
    for eval_set in sets:
        if eval_set.mode == "scene":
            metrics, details = evaluate_scene(model, eval_set.samples, scene_size, device=device, threshold=threshold,
                                              crop_size=crop_size if second_pass else None, flip=flip)
        else:
            metrics, details = evaluate_crop(model, eval_set.samples, crop_size, device=device, flip=flip)
        metrics["count_images"] = len(eval_set.samples)
        results.append(EvalResult(eval_set.name, eval_set.mode, metrics, details))
    return results


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def summary_score(results: list[EvalResult]) -> float:
    """Checkpoint-selection score: mean of person AP50, gender accuracy, ±5-year and age-group accuracy."""
    keys = ("AP50", "gender_accuracy", "age_acc_within_5", "age_group_accuracy")
    values = [r.metrics[k] for r in results for k in keys if _finite(r.metrics.get(k))]
    return float(np.mean(values)) if values else float("nan")


def flat_metrics(results: list[EvalResult], prefix: str = "val") -> dict[str, float]:
    """{"val/<set>/<metric>": value} for every scalar metric, plus "val/score"."""
    flat = {f"{prefix}/{r.name}/{k}": float(v) for r in results for k, v in r.metrics.items() if _finite(v)}
    flat[f"{prefix}/score"] = summary_score(results)
    return flat
