"""How much of each person the cell that boxes it looks at: the effective receptive field (Luo et al. 2016) of the
box outputs at a person's centre cell, measured on real images (issue 21 item 2: does one stride-8 map serve people
from 10 px to the full frame?).

For every labelled person: |d (box outputs at its centre cell) / d input|, summed over colour channels. Its row and
column profiles give the half-extents around the centre that hold ``MASS`` of the gradient, which are set against
the person's own half-height and half-width (a ratio below 1: the cell does not see the person's top and bottom,
so it guesses where they are), and the share of the gradient that falls inside the person's box.
`mouaadnet evaluate --receptive-field` prints it per scene set and person-height band.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from model.config import HEAD_STRIDE
from mouaadnet.data.dataset import SceneDataset, collate_scene
from mouaadnet.data.types import Sample
from mouaadnet.evaluation.metrics import size_bands

MASS = 0.9  # share of the gradient the reported extents hold
BOX_OUTPUTS = ("ltrb", "size", "offset")  # the box maps of arch v2 (ltrb) and v1 (size + offset)


def half_extent(profile: np.ndarray, centre: float, mass: float = MASS) -> float:
    """Half-width (px) of the smallest interval centred on ``centre`` that holds ``mass`` of ``profile``
    (non-negative, one value per pixel)."""
    distance = np.abs(np.arange(len(profile)) + 0.5 - centre)
    order = np.argsort(distance, kind="stable")
    held = np.cumsum(profile[order])
    if held[-1] <= 0:
        return float("nan")
    return float(distance[order][min(int(np.searchsorted(held, mass * held[-1])), len(order) - 1)] + 0.5)


def _person_row(model: torch.nn.Module, image: torch.Tensor, box: torch.Tensor) -> tuple[float, ...]:
    """(vertical extent / half-height, horizontal extent / half-width, share of the gradient inside the box,
    vertical extent px, height px) of one person."""
    image = image[None].clone().requires_grad_(True)
    outputs = model(image, mode="scene")
    h, w = outputs["heatmap"].shape[-2:]
    cx = int(((box[0] + box[2]) / 2 / HEAD_STRIDE).clamp(0, w - 1))
    cy = int(((box[1] + box[3]) / 2 / HEAD_STRIDE).clamp(0, h - 1))
    box_outputs = sum(outputs[name][0, :, cy, cx].float().sum() for name in BOX_OUTPUTS if name in outputs)
    (grad,) = torch.autograd.grad(box_outputs, image)  # the input's gradient only (no parameter .grad left behind)
    grad = grad[0].abs().sum(0).numpy().astype(np.float64)
    x0, y0, x1, y1 = (float(v) for v in box)
    vertical = half_extent(grad.sum(1), (y0 + y1) / 2)
    horizontal = half_extent(grad.sum(0), (x0 + x1) / 2)
    inside = grad[max(int(y0), 0):int(np.ceil(y1)), max(int(x0), 0):int(np.ceil(x1))].sum() / max(grad.sum(), 1e-12)
    height, width = max(y1 - y0, 1.0), max(x1 - x0, 1.0)
    return vertical / (height / 2), horizontal / (width / 2), float(inside), vertical, height


def receptive_field_report(model: torch.nn.Module, samples: list[Sample], size: int, max_people: int = 150
                           ) -> dict[str, Any]:
    """Medians over the first ``max_people`` labelled people of ``samples``, overall and per person-height band
    (``_small`` ...): ``erf_vertical_ratio``, ``erf_horizontal_ratio``, ``erf_inside_box``, ``erf_vertical_px``."""
    rows: list[tuple[float, ...]] = []
    model.eval()
    for batch in DataLoader(SceneDataset(samples, size, augment=False), batch_size=1, shuffle=False,
                            collate_fn=collate_scene):
        for box in batch["boxes"][0][batch["box_mask"][0]]:
            if len(rows) < max_people:
                rows.append(_person_row(model, batch["images"][0], box))
        if len(rows) >= max_people:
            break
    table = np.array(rows, dtype=np.float64).reshape(-1, 5)
    report: dict[str, Any] = {"people": len(table), **_medians(table)}
    for band, inside in size_bands(table[:, 4]).items():
        report[f"people_{band}"] = int(inside.sum())
        report.update(_medians(table[inside], f"_{band}"))
    return report


def _medians(table: np.ndarray, suffix: str = "") -> dict[str, float]:
    names = ("vertical_ratio", "horizontal_ratio", "inside_box", "vertical_px")
    return {f"{name}{suffix}": float(np.nanmedian(table[:, col])) if len(table) else float("nan")
            for col, name in enumerate(names)}
