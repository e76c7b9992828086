"""Attribute levers at inference time (issue 22, item 5), measured by `mouaadnet evaluate --flip --second-pass`.

* **Test-time flip**: gender and age of a crop averaged over the crop and its mirror image (people are left-right
  symmetric; the model's errors are not).
* **Second pass**: every person the scene pass found is cut out of the scene, letterboxed to the crop size and
  classified again in crop mode by the same weights; its crop-mode gender and age replace the scene head's. The
  crop head is trained on faces and bodies at 112 px, where the scene head reads one stride-8 cell.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from model.preprocess import PAD_VALUE
from mouaadnet.evaluation.predict import predict

MIN_CROP_PX = 2  # a box thinner than this after clamping to the image has nothing to classify


def classify_crops(model: Any, crops: torch.Tensor, flip: bool = False) -> dict[str, torch.Tensor]:
    """Crop-mode P(female) [N] and age [N]; with ``flip``, the mean over each crop and its mirror image."""
    if not flip:
        return {k: v.float() for k, v in predict(model, crops, "crop").items()}
    both = predict(model, torch.cat([crops, crops.flip(-1)]), "crop")
    n = len(crops)
    return {k: (v[:n].float() + v[n:].float()) / 2 for k, v in both.items()}


def person_crop(image: torch.Tensor, box: torch.Tensor, size: int) -> torch.Tensor:
    """The box's pixels of ``image`` [3,H,W] (0..1) letterboxed to [3,size,size] as crop mode's input is."""
    _, h, w = image.shape
    x0, y0 = int(box[0].clamp(0, w - 1)), int(box[1].clamp(0, h - 1))
    x1, y1 = (
        int(torch.ceil(box[2]).clamp(x0 + MIN_CROP_PX, w)),
        int(torch.ceil(box[3]).clamp(y0 + MIN_CROP_PX, h)),
    )
    region = image[:, y0:y1, x0:x1]
    rh, rw = region.shape[1:]
    scale = size / max(rh, rw)
    nh, nw = max(1, round(rh * scale)), max(1, round(rw * scale))
    resized = F.interpolate(
        region[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
    )[0]
    out = torch.full((3, size, size), PAD_VALUE / 255.0, dtype=image.dtype)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[:, top : top + nh, left : left + nw] = resized
    return out


def second_pass(
    model: Any,
    images: torch.Tensor,
    decoded: dict[str, torch.Tensor],
    crop_size: int,
    threshold: float,
    flip: bool = False,
) -> tuple[dict[str, torch.Tensor], int]:
    """``decoded`` (a scene batch's decode) with gender/age of every detection scoring >= ``threshold``
    replaced by crop mode on its crop; returns it and the number of people classified."""
    rows = [
        (i, j)
        for i in range(len(images))
        for j in torch.nonzero(decoded["scores"][i] >= threshold).flatten().tolist()
    ]
    if not rows:
        return decoded, 0
    crops = torch.stack(
        [person_crop(images[i].float(), decoded["boxes"][i, j].float(), crop_size) for i, j in rows]
    )
    found = classify_crops(model, crops, flip)
    out = {k: v.clone() for k, v in decoded.items()}
    for row, (i, j) in enumerate(rows):
        out["gender"][i, j] = found["gender"][row].to(out["gender"].dtype)
        out["age"][i, j] = found["age"][row].to(out["age"].dtype)
    return out, len(rows)
