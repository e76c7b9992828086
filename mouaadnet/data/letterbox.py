"""The letterbox, written once: resize keeping the aspect ratio (Pillow bilinear), centre on a size x size grey
(114) square. Training (``augment.letterbox``), export checks and calibration (``load_images``), serving
(``mouaadnet.serving.prepost``) and, ported to JavaScript, the browser page all place images this way.

numpy + Pillow only (torch is imported by ``load_images`` alone): the serving venv imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PAD_VALUE = 114  # == model.preprocess.PAD_VALUE (checked by a test; importing `model` would pull torch)


@dataclass(frozen=True)
class Letterbox:
    """How an original image was placed into the square model input."""

    scale: float
    pad_x: int
    pad_y: int
    orig_w: int
    orig_h: int

    def as_row(self) -> np.ndarray:
        return np.array([self.scale, self.pad_x, self.pad_y, self.orig_w, self.orig_h], np.float32)


def letterbox_geometry(width: int, height: int, size: int) -> tuple[Letterbox, int, int]:
    """Scale and padding placing a width x height image centered in size x size; returns (box, new_w, new_h)."""
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    return Letterbox(scale, pad_x, pad_y, width, height), new_w, new_h


def letterbox_image(image: np.ndarray, size: int, full_size: tuple[int, int] | None = None,
                    pad_value: int = PAD_VALUE) -> tuple[np.ndarray, Letterbox]:
    """HxWx3 uint8 -> size x size x 3 uint8 letterboxed with grey ``pad_value``, and its geometry.

    ``full_size`` is the (w, h) the geometry refers to when ``image`` was decoded at a reduced scale.
    """
    h, w = image.shape[:2]
    full_w, full_h = full_size or (w, h)
    box, new_w, new_h = letterbox_geometry(full_w, full_h, size)
    out = np.full((size, size, 3), pad_value, np.uint8)
    if (w, h) != (new_w, new_h):
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    else:
        resized = image
    out[box.pad_y : box.pad_y + new_h, box.pad_x : box.pad_x + new_w] = resized
    return out, box


def load_images(paths: Iterable[str | Path], size: int):
    """Image files -> letterboxed, normalised float32 torch tensor [N,3,size,size] (the documented model input):
    the real images of export parity checks and INT8 calibration."""
    from model.preprocess import image_to_tensor

    tensors = []
    for path in paths:
        with Image.open(path) as image:
            tensors.append(image_to_tensor(letterbox_image(np.asarray(image.convert("RGB")), size)[0]))
    if not tensors:
        raise ValueError("no images given")
    import torch

    return torch.stack(tensors)
