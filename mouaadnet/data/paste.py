"""Paste labelled body crops into scene images: scene mode gets per-person gender/age supervision.

No real scene set labels each person's gender and age; PETA's body crops have both. Pasting them into real scene
backgrounds (after the scene's own augmentation) adds people whose box is the pasted rectangle and whose
attributes are the crop's labels. Real people mostly hidden under a pasted body lose their box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .augment import color_jitter


@dataclass
class PastedPeople:
    image: np.ndarray  # SxSx3 uint8
    boxes: np.ndarray  # [K,4] float32: the kept original boxes, then the pasted ones
    keep: np.ndarray  # indices of the original rows that are still visible
    gender: np.ndarray  # [P] attributes of the pasted rows
    age: np.ndarray
    age_group: np.ndarray


def _covered_fraction(boxes: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """Fraction of each box's area inside the patch rectangle."""
    ix = np.clip(np.minimum(boxes[:, 2], patch[2]) - np.maximum(boxes[:, 0], patch[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], patch[3]) - np.maximum(boxes[:, 1], patch[1]), 0, None)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    return ix * iy / area


def paste_bodies(
    image: np.ndarray,
    boxes: np.ndarray,
    bodies: list[tuple[np.ndarray, float, float, int]],
    rng: np.random.Generator,
    height_range: tuple[float, float] = (0.25, 0.8),
    max_covered: float = 0.6,
) -> PastedPeople:
    """Paste each (crop, gender, age, age_group) at a random place and height (fraction of the image side)."""
    out = image.copy()
    size_h, size_w = out.shape[:2]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    keep = np.arange(len(boxes))
    pasted, attrs = [], []
    for crop, gender, age, age_group in bodies:
        h = int(rng.uniform(*height_range) * size_h)
        w = int(h * crop.shape[1] / max(crop.shape[0], 1))
        if h < 8 or w < 4 or w > size_w:
            continue
        x0 = int(rng.integers(0, size_w - w + 1))
        y0 = int(rng.integers(0, size_h - h + 1))
        patch = np.array([x0, y0, x0 + w, y0 + h], np.float32)
        body = color_jitter(np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR)), rng)
        out[y0 : y0 + h, x0 : x0 + w] = body
        # Earlier people (real or pasted) now mostly hidden carry no visible signal: drop them.
        keep = keep[_covered_fraction(boxes[keep], patch) <= max_covered] if len(keep) else keep
        if pasted:
            visible = _covered_fraction(np.stack(pasted), patch) <= max_covered
            pasted = [p for p, v in zip(pasted, visible) if v]
            attrs = [a for a, v in zip(attrs, visible) if v]
        pasted.append(patch)
        attrs.append((gender, age, age_group))
    all_boxes = np.concatenate([boxes[keep], np.asarray(pasted, np.float32).reshape(-1, 4)])
    gender, age, group = (np.asarray([a[i] for a in attrs]) for i in range(3))
    return PastedPeople(out, all_boxes.astype(np.float32), keep, gender.astype(np.float32),
                        age.astype(np.float32), group.astype(np.int64))
