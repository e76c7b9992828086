"""The documented input normalisation, shared by training, export checks and serving."""

from __future__ import annotations

import numpy as np
import torch

PAD_VALUE = 114  # letterbox grey, the YOLO convention


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> float32 [3,H,W] in [0, 1] (the model's input: RGB, value / 255, no mean/std)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
