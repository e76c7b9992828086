"""Serving pre- and post-processing as plain functions (numpy + Pillow only: no torch, no Triton).

The Triton Python models (`triton_repo/preprocess`, `triton_repo/postprocess`), the gRPC client's in-process
ONNX Runtime path and the tests all call these, so the server and the in-process path cannot drift apart.

Preprocess: encoded bytes -> decode (bounded size, EXIF orientation) -> letterbox to SIZE x SIZE with grey 114
(centered, the training convention of `mouaadnet.data.augment.letterbox`) -> float32 [3,S,S] RGB / 255, plus one
`meta` row per image = (scale, pad_x, pad_y, orig_w, orig_h) so boxes can be mapped back.
Postprocess: model outputs in input pixels -> keep score >= threshold -> boxes in ORIGINAL image pixels.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

PAD_VALUE = 114  # == model.preprocess.PAD_VALUE (checked by a test; importing `model` would pull torch)
DEFAULT_SIZE = 320
DEFAULT_THRESHOLD = 0.3
# Decompression-bomb bounds, checked on the header BEFORE any pixel is decoded.
MAX_PIXELS = 50_000_000  # 50 MP (a 48 MP phone photo fits)
MAX_SIDE = 16_384
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF", "MPO"})
META_COLUMNS = ("scale", "pad_x", "pad_y", "orig_w", "orig_h")
OUTPUT_NAMES = ("boxes", "scores", "gender", "age")


class ImageError(ValueError):
    """The bytes are not a usable image (empty, not an image, truncated, too large). The message says which."""


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


# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose does).
_ORIENT = {2: (Image.Transpose.FLIP_LEFT_RIGHT,), 3: (Image.Transpose.ROTATE_180,),
           4: (Image.Transpose.FLIP_TOP_BOTTOM,), 5: (Image.Transpose.TRANSPOSE,),
           6: (Image.Transpose.ROTATE_270,), 7: (Image.Transpose.TRANSVERSE,), 8: (Image.Transpose.ROTATE_90,)}


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not make an otherwise fine image fail
        return 1
    return value if value in _ORIENT else 1


def _oriented_size(image: Image.Image, orientation: int) -> tuple[int, int]:
    """Size after EXIF orientation (orientations 5..8 swap width and height)."""
    w, h = image.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def open_image(
    data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE
) -> Image.Image:
    """Open encoded bytes lazily (header only) and check format and dimensions; raises ImageError."""
    if data is None or len(data) == 0:
        raise ImageError("empty input: got 0 bytes, expected an encoded JPEG/PNG image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(bytes(data)))
    except Image.DecompressionBombError as error:
        raise ImageError(f"image too large: {error}") from None
    except Exception as error:
        head = bytes(data[:8])
        raise ImageError(f"not an image ({len(data)} bytes starting {head!r}): {error}") from None
    if image.format not in ALLOWED_FORMATS:
        raise ImageError(f"unsupported image format {image.format}; send JPEG or PNG")
    w, h = image.size
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if w > max_side or h > max_side or w * h > max_pixels:
        raise ImageError(
            f"image too large: {w}x{h} ({w * h / 1e6:.1f} MP); limits are {max_side} px per side and "
            f"{max_pixels / 1e6:.0f} MP (refused before decoding, against decompression bombs)"
        )
    return image


def decode_image(
    data: bytes, size: int | None = None, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE
) -> tuple[np.ndarray, tuple[int, int]]:
    """Bytes -> (HxWx3 uint8 RGB, EXIF-oriented full size (w, h)).

    With ``size``, JPEGs are decoded at a reduced DCT scale that still has at least the letterboxed resolution
    (libjpeg's draft mode: faster, and a huge JPEG never materialises at full size); the returned array may
    then be smaller than the full size, which is returned separately for mapping boxes back.
    """
    image = open_image(data, max_pixels=max_pixels, max_side=max_side)
    orientation = _orientation(image)
    full_w, full_h = _oriented_size(image, orientation)
    try:
        if size is not None and image.format in ("JPEG", "MPO"):
            scale = size / max(image.size)
            if scale < 1:
                image.draft("RGB", (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale)))
        image.load()
        for method in _ORIENT.get(orientation, ()):
            image = image.transpose(method)
        if image.mode != "RGB":
            image = _to_rgb(image)
        array = np.asarray(image, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as error:
        raise ImageError(f"truncated or corrupt {image.format} image ({len(data)} bytes): {error}") from None
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"decoded to an unexpected shape {array.shape}")
    return array, (full_w, full_h)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode -> RGB; transparency is composited over the letterbox grey."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (PAD_VALUE, PAD_VALUE, PAD_VALUE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size else 1.0
        return Image.fromarray((array / max(top, 1.0) * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def letterbox_image(image: np.ndarray, size: int, full_size: tuple[int, int] | None = None) -> tuple[np.ndarray, Letterbox]:
    """HxWx3 uint8 -> size x size x 3 uint8 letterboxed with grey 114, and its geometry.

    ``full_size`` is the (w, h) the geometry refers to when ``image`` was decoded at a reduced scale.
    """
    h, w = image.shape[:2]
    full_w, full_h = full_size or (w, h)
    box, new_w, new_h = letterbox_geometry(full_w, full_h, size)
    out = np.full((size, size, 3), PAD_VALUE, np.uint8)
    if (w, h) != (new_w, new_h):
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    else:
        resized = image
    out[box.pad_y : box.pad_y + new_h, box.pad_x : box.pad_x + new_w] = resized
    return out, box


def normalize(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB -> float32 [3,H,W] in [0, 1] (RGB / 255, no mean/std: the model's input)."""
    if out is None:
        out = np.empty((3, *image.shape[:2]), np.float32)
    np.multiply(image.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out, dtype=np.float32)
    return out


def preprocess_one(
    data: bytes, size: int = DEFAULT_SIZE, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded bytes -> (float32 [3,size,size], meta float32 [5]); raises ImageError."""
    array, full = decode_image(data, size, max_pixels=max_pixels, max_side=max_side)
    boxed, box = letterbox_image(array, size, full)
    return normalize(boxed, out), box.as_row()


def preprocess_batch(
    blobs: list[bytes], size: int = DEFAULT_SIZE, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE
) -> tuple[np.ndarray, np.ndarray]:
    """A list of encoded images -> (float32 [N,3,S,S], meta float32 [N,5]).

    Raises ImageError naming the index of the first bad image.
    """
    if len(blobs) == 0:
        raise ImageError("no images in the request")
    images = np.empty((len(blobs), 3, size, size), np.float32)
    meta = np.empty((len(blobs), len(META_COLUMNS)), np.float32)
    for i, blob in enumerate(blobs):
        try:
            _, meta[i] = preprocess_one(blob, size, max_pixels=max_pixels, max_side=max_side, out=images[i])
        except ImageError as error:
            raise ImageError(f"image {i}: {error}") from None
    return images, meta


def check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {threshold}")
    return value


def postprocess(
    boxes: np.ndarray,
    scores: np.ndarray,
    gender: np.ndarray,
    age: np.ndarray,
    meta: np.ndarray,
    threshold: float | np.ndarray = DEFAULT_THRESHOLD,
) -> dict[str, np.ndarray]:
    """Model outputs (boxes in model-input pixels) -> people per image in ORIGINAL image pixels.

    boxes [N,K,4], scores/gender/age [N,K], meta [N,5]; threshold a scalar or one per image.
    Returns padded arrays: boxes [N,M,4], scores/gender/age [N,M] (M = the largest kept count, rows past an
    image's count are zero) and count int32 [N,1]. Rows keep the model's order (score descending).
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    n = scores.shape[0]
    if boxes.shape[:2] != scores.shape or boxes.shape[-1] != 4:
        raise ValueError(f"boxes {boxes.shape} and scores {scores.shape} do not match ([N,K,4] and [N,K])")
    if np.shape(gender) != scores.shape or np.shape(age) != scores.shape:
        raise ValueError(f"gender {np.shape(gender)} / age {np.shape(age)} must match scores {scores.shape}")
    meta = np.asarray(meta, np.float32).reshape(n, len(META_COLUMNS))
    thresholds = np.broadcast_to(np.asarray(threshold, np.float32).reshape(-1), (n,))
    for t in np.unique(thresholds):
        check_threshold(t)
    keep = scores >= thresholds[:, None]
    counts = keep.sum(axis=1).astype(np.int32)
    m = int(counts.max()) if n else 0
    out = {
        "boxes": np.zeros((n, m, 4), np.float32),
        "scores": np.zeros((n, m), np.float32),
        "gender": np.zeros((n, m), np.float32),
        "age": np.zeros((n, m), np.float32),
        "count": counts.reshape(n, 1),
    }
    for i in range(n):
        idx = np.nonzero(keep[i])[0]
        c = len(idx)
        if c == 0:
            continue
        scale, pad_x, pad_y, orig_w, orig_h = (float(v) for v in meta[i])
        b = (boxes[i, idx] - np.array([pad_x, pad_y, pad_x, pad_y], np.float32)) / np.float32(scale)
        b[:, 0::2] = b[:, 0::2].clip(0, orig_w)
        b[:, 1::2] = b[:, 1::2].clip(0, orig_h)
        out["boxes"][i, :c] = b
        out["scores"][i, :c] = scores[i, idx]
        out["gender"][i, :c] = np.asarray(gender, np.float32)[i, idx]
        out["age"][i, :c] = np.asarray(age, np.float32)[i, idx]
    return out


def to_people(result: dict[str, np.ndarray]) -> list[list[dict]]:
    """Padded postprocess arrays -> per image, a list of people dicts (box, score, gender, p_female, age)."""
    people = []
    for i, count in enumerate(np.asarray(result["count"]).reshape(-1)):
        rows = []
        for j in range(int(count)):
            p_female = float(result["gender"][i, j])
            rows.append({
                "box": [round(float(v), 1) for v in result["boxes"][i, j]],
                "score": round(float(result["scores"][i, j]), 4),
                "gender": "female" if p_female >= 0.5 else "male",
                "p_female": round(p_female, 4),
                "age": round(float(result["age"][i, j]), 1),
            })
        people.append(rows)
    return people
