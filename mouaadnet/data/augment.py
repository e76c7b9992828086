"""Image + box augmentations in numpy/PIL. Images are HxWx3 uint8 RGB; boxes float32 [K,4] x1,y1,x2,y2 pixels."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .letterbox import PAD_VALUE, letterbox_image

MIN_BOX_PX = 2.0  # boxes thinner than this after a transform carry no signal and are dropped

# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane, saturation its scale.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ).astype(np.float32)


def _as_boxes(boxes: np.ndarray | None) -> np.ndarray:
    return np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _keep_visible(full: np.ndarray, clipped: np.ndarray, min_visible: float) -> np.ndarray:
    """Indices of boxes that keep at least min_visible of their area and MIN_BOX_PX of width and height."""
    area = (full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    ok = (w >= MIN_BOX_PX) & (h >= MIN_BOX_PX) & (w * h >= min_visible * np.maximum(area, 1e-6))
    return np.nonzero(ok)[0]


def letterbox(
    image: np.ndarray, boxes: np.ndarray | None, size: int, pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio and pad to size x size; returns (image, boxes, scale, (pad_x, pad_y))."""
    out, box = letterbox_image(image, size, pad_value=pad_value)
    mapped = _as_boxes(boxes) * np.float32(box.scale) + np.array([box.pad_x, box.pad_y] * 2, np.float32)
    return out, mapped.astype(np.float32), box.scale, (box.pad_x, box.pad_y)


def hflip(image: np.ndarray, boxes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right; box x1' = W - x2, x2' = W - x1."""
    w = image.shape[1]
    b = _as_boxes(boxes)
    flipped = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1).astype(np.float32)
    return np.ascontiguousarray(image[:, ::-1]), flipped


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.02,
) -> np.ndarray:
    """Random brightness/contrast/saturation (relative) and hue (fraction of a turn) changes."""
    img = image.astype(np.float32)
    img *= rng.uniform(1 - brightness, 1 + brightness)
    mean = img.mean()
    img = (img - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    angle = rng.uniform(-hue, hue) * 2 * math.pi
    sat = rng.uniform(1 - saturation, 1 + saturation)
    c, s = math.cos(angle) * sat, math.sin(angle) * sat
    chroma = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
    matrix = _YIQ2RGB @ chroma @ _RGB2YIQ
    img = img @ matrix.T
    return np.clip(img, 0, 255).astype(np.uint8)


def small_rotation(
    image: np.ndarray,
    boxes: np.ndarray | None,
    rng: np.random.Generator,
    max_deg: float = 5.0,
    pad_value: int = PAD_VALUE,
    min_visible: float = 0.4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate about the centre by up to max_deg; boxes become the clipped hull of their rotated corners.

    Returns (image, boxes, keep) where keep indexes the input rows still present.
    """
    angle = rng.uniform(-max_deg, max_deg)
    h, w = image.shape[:2]
    out = Image.fromarray(image).rotate(angle, resample=Image.BILINEAR, fillcolor=(pad_value,) * 3)
    b = _as_boxes(boxes)
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=1)  # [K,4,2]
    rad = math.radians(angle)
    cx, cy = w / 2, h / 2
    dx, dy = corners[..., 0] - cx, corners[..., 1] - cy
    # PIL turns counter-clockwise on screen; with y pointing down that is this matrix.
    x = cx + dx * math.cos(rad) + dy * math.sin(rad)
    y = cy - dx * math.sin(rad) + dy * math.cos(rad)
    full = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], axis=1).astype(np.float32)
    clipped = np.clip(full, 0, [w, h, w, h]).astype(np.float32)
    keep = _keep_visible(full, clipped, min_visible)
    return np.asarray(out), clipped[keep], keep


def random_scale_crop(
    image: np.ndarray,
    boxes: np.ndarray | None,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.6, 1.4),
    pad_value: int = PAD_VALUE,
    min_visible: float = 0.4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit the image into ``size`` (square, or (width, height)) times a random factor, then a random crop/pad to it.

    Boxes are clipped; those keeping less than min_visible of their area are dropped. Returns (image, boxes, keep).
    """
    width, height = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    scale = min(width / w, height / h) * rng.uniform(*scale_range)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = _resize(image, nw, nh)
    # Offset of the resized image in the output: negative = cropped, positive = padded.
    ox = int(rng.integers(min(0, width - nw), max(0, width - nw) + 1))
    oy = int(rng.integers(min(0, height - nh), max(0, height - nh) + 1))
    out = np.full((height, width, 3), pad_value, np.uint8)
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + nw, width), min(oy + nh, height)
    out[y0:y1, x0:x1] = resized[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    sx, sy = nw / w, nh / h
    full = _as_boxes(boxes) * np.array([sx, sy, sx, sy], np.float32) + np.array([ox, oy, ox, oy], np.float32)
    clipped = np.clip(full, 0, [width, height, width, height]).astype(np.float32)
    keep = _keep_visible(full, clipped, min_visible)
    return out, clipped[keep], keep


def mosaic(
    tiles: list[tuple[np.ndarray, np.ndarray]],
    size: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.6, 1.4),
    pad_value: int = PAD_VALUE,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Four (image, boxes) in a 2x2 grid split at a random centre (YOLOv4's mosaic): each is scale-cropped into its
    quadrant, so people come out at about half their usual size and in four contexts per training image.
    Returns (image, boxes of all four, per-tile keep indices: the attributes of tile i follow keeps[i])."""
    if len(tiles) != 4:
        raise ValueError(f"mosaic needs 4 images, got {len(tiles)}")
    cx, cy = (int(rng.uniform(0.3, 0.7) * size) for _ in range(2))
    out = np.full((size, size, 3), pad_value, np.uint8)
    boxes, keeps = [], []
    for (image, tile_boxes), (x0, y0, x1, y1) in zip(tiles, ((0, 0, cx, cy), (cx, 0, size, cy),
                                                             (0, cy, cx, size), (cx, cy, size, size)), strict=True):
        part, placed, keep = random_scale_crop(image, tile_boxes, (x1 - x0, y1 - y0), rng, scale_range, pad_value)
        out[y0:y1, x0:x1] = part
        boxes.append(placed + np.array([x0, y0, x0, y0], np.float32))
        keeps.append(keep)
    return out, np.concatenate(boxes).astype(np.float32), keeps


class SceneAugment:
    """Training augmentation for scenes (scale/crop, flip, small rotation, colour); letterbox only when disabled."""

    def __init__(
        self,
        size: int,
        seed: int = 0,
        enabled: bool = True,
        rotation_deg: float = 5.0,
        scale_range: tuple[float, float] = (0.6, 1.4),
    ) -> None:
        self.size = size
        self.enabled = enabled
        self.rotation_deg = rotation_deg
        self.scale_range = scale_range
        self.rng = np.random.default_rng(seed)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray | None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (image size x size, boxes, keep) where keep indexes the input rows (attributes follow it)."""
        boxes = _as_boxes(boxes)
        if not self.enabled:
            out, mapped, _, _ = letterbox(image, boxes, self.size)
            return out, mapped, np.arange(len(boxes))
        rng = self.rng if rng is None else rng
        out, boxes, keep = random_scale_crop(image, boxes, self.size, rng, self.scale_range)
        if rng.random() < 0.5:
            out, boxes = hflip(out, boxes)
        if self.rotation_deg > 0 and rng.random() < 0.5:
            out, boxes, kept = small_rotation(out, boxes, rng, self.rotation_deg)
            keep = keep[kept]
        return color_jitter(out, rng), boxes, keep

    def mosaic(self, tiles: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Four (image, boxes) as one 2x2 mosaic at this size and zoom, then flip and colour as for one scene."""
        out, boxes, keeps = mosaic(tiles, self.size, rng, self.scale_range)
        if rng.random() < 0.5:
            out, boxes = hflip(out, boxes)
        return color_jitter(out, rng), boxes, keeps


def reframe(
    image: np.ndarray,
    size: int,
    rng: np.random.Generator,
    zoom: tuple[float, float],
    aspect: tuple[float, float],
    shift: float,
    pad_value: int = PAD_VALUE,
) -> np.ndarray:
    """Re-frame a crop as another detector would: zoom in/out, stretch the aspect, shift the centre.

    The letterbox scale times ``zoom`` (<1 = looser margins, grey around; >1 = tighter, edges cut), the width
    over height stretched by ``aspect``, the centre moved by up to ``shift`` of the side. Returns size x size.
    """
    h, w = image.shape[:2]
    base = size / max(h, w) * rng.uniform(*zoom)
    stretch = math.sqrt(rng.uniform(*aspect))
    nw, nh = max(1, round(w * base * stretch)), max(1, round(h * base / stretch))
    resized = _resize(image, nw, nh)
    cx = size / 2 + rng.uniform(-shift, shift) * size
    cy = size / 2 + rng.uniform(-shift, shift) * size
    ox, oy = round(cx - nw / 2), round(cy - nh / 2)  # offset of the resized crop in the output
    out = np.full((size, size, 3), pad_value, np.uint8)
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + nw, size), min(oy + nh, size)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = resized[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return out


class CropAugment:
    """Training augmentation for face/body crops: re-framing (zoom, aspect, shift), flip, rotation, colour.

    Kiosk and camera users pass whatever their face or person detector gives, so the crop's framing is jittered
    widely; with the defaults of earlier versions (zoom 0.85-1.1, no aspect or shift) a model trained on tight,
    aligned faces fell to near chance on looser crops. Letterbox only when disabled.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        enabled: bool = True,
        zoom: tuple[float, float] = (0.85, 1.1),
        aspect: tuple[float, float] = (1.0, 1.0),
        shift: float = 0.0,
    ) -> None:
        self.size = size
        self.enabled = enabled
        self.zoom, self.aspect, self.shift = zoom, aspect, shift
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The augmented (or only letterboxed) size x size image."""
        if not self.enabled:
            return letterbox(image, None, self.size)[0]
        rng = self.rng if rng is None else rng
        out = reframe(image, self.size, rng, self.zoom, self.aspect, self.shift)
        if rng.random() < 0.5:
            out, _ = hflip(out, None)
        if rng.random() < 0.5:
            out, _, _ = small_rotation(out, None, rng, 5.0)
        return color_jitter(out, rng)
