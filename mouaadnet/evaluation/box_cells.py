"""Where box precision is lost (arch v2): in the regression, or in which cell's box the score picks.

For every labelled person: the IoU of the box the product reports (the highest-scoring peak among the detections
nearest that person), of the box decoded at the person's own centre cell, and of the best box any cell of its
TTFNet core decodes (an oracle for "which cell to read"); and where that top peak lies relative to the centre
cell. `mouaadnet evaluate --box-cells` prints it per scene set (docs/BENCHMARKS.md, "Where the box is lost").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from model.config import HEAD_STRIDE
from model.decode import cell_boxes, score_map
from model.losses import dense_box_targets
from mouaadnet.data.dataset import SceneDataset, collate_scene
from mouaadnet.data.types import Sample
from mouaadnet.evaluation.metrics import box_iou, size_bands

MIN_SCORE = 0.05  # peaks below this are not reported detections
GOOD_IOU = 0.75


COLUMNS = ("reported", "centre_cell", "best_core_cell", "peak_at_centre", "peak_offset_w", "peak_offset_h",
           "core_peaks", "height")


def _people(gt: torch.Tensor, heat: torch.Tensor, cells: torch.Tensor, k: int) -> list[tuple[float, ...]]:
    """``COLUMNS`` per person of one image: reported IoU, centre-cell IoU, best-core-cell IoU, peak at centre 0/1,
    |dx|/w, |dy|/h, how many reported peaks (before NMS) lie in its own core (a plateau's duplicates), its height
    in px; a person no peak is nearest to reports IoU 0 and NaN for the peak's place."""
    h, w = heat.shape[-2:]
    peaks = heat * (F.max_pool2d(heat[None], 3, 1, 1)[0] == heat)
    scores, index = peaks.flatten().topk(min(k, h * w))
    index = index[scores >= MIN_SCORE]
    iou = box_iou(gt.numpy(), cells[index].numpy())
    nearest = iou.argmax(0) if iou.size else np.zeros(0, np.int64)
    core = dense_box_targets(gt[None], torch.ones(1, len(gt), dtype=torch.bool), h, w)
    rows = []
    for j, box in enumerate(gt):
        cx = int(((box[0] + box[2]) / 2 / HEAD_STRIDE).clamp(0, w - 1))
        cy = int(((box[1] + box[3]) / 2 / HEAD_STRIDE).clamp(0, h - 1))
        centre = float(box_iou(box[None].numpy(), cells[cy * w + cx][None].numpy())[0, 0])
        own = [(float(iou[j, i]), int(index[i])) for i in range(len(index)) if nearest[i] == j and iou[j, i] > 0]
        mine = torch.nonzero((core["weight"][0] > 0) & (core["boxes"][0] == box).all(-1)).flatten()
        best = float(box_iou(box[None].numpy(), cells[mine].numpy()).max()) if len(mine) else centre
        core_peaks = float(np.isin(index.numpy(), mine.numpy()).sum())
        height = float(box[3] - box[1])
        if not own:
            rows.append((0.0, centre, best, np.nan, np.nan, np.nan, core_peaks, height))
            continue
        reported, cell = own[0]  # index is sorted by score: the first is the top peak
        py, px = divmod(cell, w)
        size_w, size_h = max(float(box[2] - box[0]) / HEAD_STRIDE, 1.0), max(float(box[3] - box[1]) / HEAD_STRIDE, 1.0)
        rows.append((reported, centre, best, float(px == cx and py == cy), abs(px - cx) / size_w, abs(py - cy) / size_h,
                     core_peaks, height))
    return rows


def _summary(table: np.ndarray, suffix: str = "") -> dict[str, float]:
    """Means of one block of ``_people`` rows (``suffix`` names a size band)."""
    nan = float("nan")
    out: dict[str, float] = {}
    for col, name in enumerate(COLUMNS[:3]):
        out[f"{name}_mean_iou{suffix}"] = float(table[:, col].mean()) if len(table) else nan
        out[f"{name}_at75{suffix}"] = float((table[:, col] >= GOOD_IOU).mean()) if len(table) else nan
    for col, name in enumerate(COLUMNS[3:7], start=3):
        finite = table[:, col][np.isfinite(table[:, col])]
        out[f"{name}{suffix}"] = float(finite.mean()) if len(finite) else nan
    return out


@torch.no_grad()
def box_cell_report(model: torch.nn.Module, samples: list[Sample], size: int, batch_size: int = 16) -> dict[str, Any]:
    """Mean IoU and share >= 0.75 of the reported, centre-cell and best-core-cell boxes, how often the top peak is
    the centre cell, how far off it lies and how many peaks a person's core holds before NMS, over every labelled
    person of ``samples`` (an arch-v2 model), then the same per person-height band (``_small`` ...)."""
    rows: list[tuple[float, ...]] = []
    for batch in DataLoader(SceneDataset(samples, size, augment=False), batch_size=batch_size, shuffle=False,
                            collate_fn=collate_scene):
        outputs = model(batch["images"], mode="scene")
        if "ltrb" not in outputs:
            raise ValueError("box cells need an arch-v2 model (a box at every cell)")
        # the score decode ranks by: the heatmap, or with the IoU branch heatmap^(1-a) * IoU^a
        heat = score_map({k: v.float() for k, v in outputs.items()}, getattr(model.cfg, "iou_score", 0.0))
        cells = cell_boxes(outputs["ltrb"])
        for i in range(len(batch["images"])):
            gt = batch["boxes"][i][batch["box_mask"][i]]
            if len(gt):
                rows += _people(gt, heat[i, 0], cells[i], getattr(model.cfg, "top_k", 100))
    table = np.array(rows, dtype=np.float64).reshape(-1, len(COLUMNS))
    report: dict[str, Any] = {"people": len(table), **_summary(table)}
    for band, inside in size_bands(table[:, -1]).items():  # person height in the model input, as box_fit bands it
        report[f"people_{band}"] = int(inside.sum())
        report.update(_summary(table[inside], f"_{band}"))
    return report
