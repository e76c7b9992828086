"""Serving pre- and post-processing as plain functions (numpy + Pillow only: no torch, no Triton).

The Triton Python models (`triton_repo/preprocess`, `triton_repo/postprocess`), the gRPC client's in-process
ONNX Runtime path and the tests all call these, so the server and the in-process path cannot drift apart.

Preprocess: encoded bytes -> integrity checks (PNG chunk CRCs; JPEG decoded in strict mode, so libjpeg's
"corrupt data" warnings are errors) -> decode (bounded size and a per-request pixel/byte budget, EXIF
orientation) -> letterbox to SIZE x SIZE with grey 114
(centered, `mouaadnet.data.letterbox`, as in training) -> float32 [3,S,S] RGB / 255, plus one
`meta` row per image = (scale, pad_x, pad_y, orig_w, orig_h) so boxes can be mapped back.
Postprocess: model outputs in input pixels -> keep score >= threshold -> boxes in ORIGINAL image pixels.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageFile

from mouaadnet.data.letterbox import (  # noqa: F401  (re-exported: the Triton models and clients import them here)
    PAD_VALUE,
    Letterbox,
    letterbox_geometry,
    letterbox_image,
)

from .integrity import (  # noqa: F401  (ImageError and check_png_chunks re-exported: callers import them here)
    ImageError,
    check_png_chunks,
    check_png_pixels,
    check_tiff_deflate,
    check_webp_zeroed,
    webp_structure_problem,
)

try:  # libjpeg-turbo with its warnings surfaced: corrupt entropy-coded data is an error, not garbled pixels
    import simplejpeg
except ImportError:  # pragma: no cover - a dependency; without it JPEG corruption is caught only when fatal
    simplejpeg = None

DEFAULT_SIZE = 320
DEFAULT_THRESHOLD = 0.3
# Decompression-bomb bounds, checked on the header BEFORE any pixel is decoded.
MAX_PIXELS = 50_000_000  # 50 MP (a 48 MP phone photo fits)
MAX_SIDE = 16_384
# Per-request budget (sum over the request's images), so one request cannot hold a preprocess instance for long:
# pixels actually decoded (JPEGs count at the reduced DCT scale they are decoded at) and encoded bytes.
# ~1 s of one core on this project's 2-core reference machine under load (about 0.5 s when it is quiet).
MAX_REQUEST_PIXELS = 64_000_000
MAX_REQUEST_BYTES = 64 * 1024 * 1024
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF", "MPO"})
META_COLUMNS = ("scale", "pad_x", "pad_y", "orig_w", "orig_h")
OUTPUT_NAMES = ("boxes", "scores", "gender", "age")


class BudgetError(ImageError):
    """The request as a whole asks for more decoding than one request may (MAX_REQUEST_PIXELS / _BYTES)."""


# Never decode a truncated file into partly grey pixels, whatever another module set this global to.
ImageFile.LOAD_TRUNCATED_IMAGES = False


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
        if head[:4] == b"RIFF" and bytes(data[8:12]) == b"WEBP":  # Pillow: "could not create decoder object"
            raise ImageError(webp_structure_problem(data) or f"corrupt WebP ({len(data)} bytes): the WebP decoder "
                             f"cannot parse its bitstream ({error})") from None
        why = "no known image format" if "cannot identify image file" in str(error) else str(error)
        raise ImageError(f"not an image ({len(data)} bytes starting {head!r}): {why}") from None
    if image.format not in ALLOWED_FORMATS:
        raise ImageError(f"unsupported image format {image.format}; send JPEG or PNG")
    if image.format == "PNG":
        check_png_chunks(data)
    elif image.format == "WEBP" and webp_structure_problem(data):
        raise ImageError(webp_structure_problem(data))
    w, h = image.size
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if w > max_side or h > max_side or w * h > max_pixels:
        raise ImageError(
            f"image too large: {w}x{h} ({w * h / 1e6:.1f} MP); limits are {max_side} px per side and "
            f"{max_pixels / 1e6:.0f} MP (refused before decoding, against decompression bombs)"
        )
    if image.format == "WEBP":
        check_webp_zeroed(data, w, h)
    return image


def _jpeg_target(image: Image.Image, size: int | None) -> tuple[int, int]:
    """Smallest decoded (w, h) that still covers the letterboxed ``size`` (0, 0 = full size)."""
    if size is None:
        return 0, 0
    scale = size / max(image.size)
    if scale >= 1:
        return 0, 0
    return math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale)


def decode_cost(image: Image.Image, size: int | None) -> int:
    """Pixels the decoder will materialise: JPEGs at the DCT scale (1, 1/2, 1/4 or 1/8) that covers ``size``."""
    w, h = image.size
    if image.format in ("JPEG", "MPO"):
        tw, th = _jpeg_target(image, size)
        if tw:
            factor = max(f for f in (1, 2, 4, 8) if math.ceil(w / f) >= tw and math.ceil(h / f) >= th)
            return math.ceil(w / factor) * math.ceil(h / factor)
    return w * h


def _check_jpeg_strict(data: bytes, image: Image.Image) -> None:
    """Check the JPEG with libjpeg-turbo in strict mode (simplejpeg): "Corrupt JPEG data" warnings raise instead
    of filling in. The pixels are still decoded by Pillow, as training decodes them (simplejpeg's
    upsampling differs by a few grey levels: serving would no longer see what the model was trained on, and the
    browser page, which reproduces Pillow's decode, would no longer match). The check decodes at 1/8 scale: every
    entropy-coded block is still read, so corruption anywhere is found, at a fraction of a full decode."""
    if simplejpeg is None:
        return
    try:
        simplejpeg.decode_jpeg(bytes(data), colorspace="CMYK" if image.mode == "CMYK" else "RGB",
                               min_factor=8, strict=True)
    except ValueError as error:
        raise ImageError(f"truncated or corrupt JPEG image ({len(data)} bytes): {error}") from None


def decode_image(
    data: bytes, size: int | None = None, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE
) -> tuple[np.ndarray, tuple[int, int]]:
    """Bytes -> (HxWx3 uint8 RGB, EXIF-oriented full size (w, h)).

    With ``size``, JPEGs are decoded at a reduced DCT scale that still has at least the letterboxed resolution
    (libjpeg's draft mode: faster, and a huge JPEG never materialises at full size); the returned array may
    then be smaller than the full size, which is returned separately for mapping boxes back.
    """
    image = open_image(data, max_pixels=max_pixels, max_side=max_side)
    return _decode_opened(data, image, size)


def _decode_opened(data: bytes, image: Image.Image, size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    orientation = _orientation(image)
    full_w, full_h = _oriented_size(image, orientation)
    try:
        if image.format == "PNG":  # the pixel stream vs the header, before Pillow fills missing rows black
            check_png_pixels(data)
        elif image.format == "TIFF":
            check_tiff_deflate(data, image)
        if image.format in ("JPEG", "MPO"):
            _check_jpeg_strict(data, image)
            if size is not None:
                tw, th = _jpeg_target(image, size)
                if tw:
                    image.draft("RGB", (tw, th))
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
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit samples (Pillow opens 16-bit PNGs as I;16 / I): full scale is 65535, as 255 is for 8 bits, so
        # the same picture enters the model equally bright at either depth (not stretched by its own maximum).
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.rint(np.clip(array / 65535.0, 0.0, 1.0) * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def normalize(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB -> float32 [3,H,W] in [0, 1] (RGB / 255, no mean/std: the model's input)."""
    if out is None:
        out = np.empty((3, *image.shape[:2]), np.float32)
    np.multiply(image.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out, dtype=np.float32)
    return out


def preprocess_one(
    data: bytes, size: int = DEFAULT_SIZE, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
    out: np.ndarray | None = None, image: Image.Image | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Encoded bytes -> (float32 [3,size,size], meta float32 [5]); raises ImageError.

    ``image``: the already opened (and checked) header of ``data``, to avoid parsing it twice."""
    if image is None:
        image = open_image(data, max_pixels=max_pixels, max_side=max_side)
    array, full = _decode_opened(data, image, size)
    boxed, box = letterbox_image(array, size, full)
    return normalize(boxed, out), box.as_row()


def header_cost(blob: bytes | memoryview, size: int = DEFAULT_SIZE) -> int:
    """Pixels decoding ``blob`` would materialise (``decode_cost``), from its header only; 0 when the header
    cannot be read (preprocess then refuses the image with the reason). The request guard's cost classes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return decode_cost(Image.open(io.BytesIO(blob)), size)
    except Exception:  # noqa: BLE001 - any unreadable header: preprocess names the problem
        return 0


def preprocess_batch(
    blobs: list[bytes], size: int = DEFAULT_SIZE, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
    max_request_pixels: int = MAX_REQUEST_PIXELS, max_request_bytes: int = MAX_REQUEST_BYTES, admit=None,
) -> tuple[np.ndarray, np.ndarray]:
    """A list of encoded images (one request) -> (float32 [N,3,S,S], meta float32 [N,5]).

    Every header is checked and the request's decoding budget added up *before* any pixel is decoded; then
    ``admit(pixels)`` (the server-wide budget, ``admission.DecodeBudget.admit``) may refuse it as busy.
    Raises ImageError naming the index of the first bad image, or BudgetError for the request as a whole.
    """
    if len(blobs) == 0:
        raise ImageError("no images in the request")
    total_bytes = sum(len(blob) for blob in blobs)  # before any copy or parse of a blob
    if total_bytes > max_request_bytes:
        raise BudgetError(f"request too large: its {len(blobs)} image(s) hold {total_bytes / 2**20:.1f} MiB; one "
                          f"request may carry at most {max_request_bytes / 2**20:.0f} MiB of encoded images")
    opened, pixels = [], 0
    for i, blob in enumerate(blobs):
        try:
            image = open_image(blob, max_pixels=max_pixels, max_side=max_side)
        except ImageError as error:
            raise ImageError(f"image {i}: {error}") from None
        opened.append(image)
        pixels += decode_cost(image, size)
    if pixels > max_request_pixels:
        raise BudgetError(
            f"request too expensive: its {len(blobs)} image(s) decode to {pixels / 1e6:.1f} MP from "
            f"{total_bytes / 2**20:.1f} MiB; one request may decode at most {max_request_pixels / 1e6:.0f} MP "
            f"from {max_request_bytes / 2**20:.0f} MiB (JPEGs count at the reduced scale they are decoded at): "
            "send fewer or smaller images per request")
    if admit is not None:
        admit(pixels)
    images = np.empty((len(blobs), 3, size, size), np.float32)
    meta = np.empty((len(blobs), len(META_COLUMNS)), np.float32)
    for i, (blob, image) in enumerate(zip(blobs, opened)):
        try:
            _, meta[i] = preprocess_one(blob, size, out=images[i], image=image)
        except ImageError as error:
            raise ImageError(f"image {i}: {error}") from None
    return images, meta


def _describe_range(name: str, array: np.ndarray, low: float, high: float) -> str | None:
    """None when every value of ``array`` is finite and in [low, high]; else what is wrong (one reduction each
    for min and max: NaN propagates through both, so NaN, +-Inf and out-of-range all show up)."""
    if array.size == 0:
        return None
    lo, hi = float(np.min(array)), float(np.max(array))
    if low <= lo and hi <= high:
        return None
    if math.isnan(lo) or math.isnan(hi):
        return f"{name} contains NaN"
    if math.isinf(lo) or math.isinf(hi):
        return f"{name} contains {'-' if lo == -math.inf else '+'}Inf"
    return f"{name} must lie in [{low:g}, {high:g}], got values from {lo:g} to {hi:g}"


def check_model_input(images: np.ndarray) -> None:
    """The detector's input contract: float32 RGB / 255, so every value finite and in [0, 1]; ValueError else."""
    problem = _describe_range("images", np.asarray(images), 0.0, 1.0)
    if problem:
        raise ValueError(f"{problem} (the input is RGB / 255: finite values in [0, 1])")


def check_meta(meta: np.ndarray, max_side: int = MAX_SIDE) -> None:
    """Letterbox rows (scale, pad_x, pad_y, orig_w, orig_h) as preprocess writes them; ValueError naming the
    first bad column otherwise."""
    meta = np.asarray(meta, np.float64).reshape(-1, len(META_COLUMNS))
    bounds = {"scale": (1e-6, 1e6), "pad_x": (0.0, 1e5), "pad_y": (0.0, 1e5),
              "orig_w": (1.0, float(max_side)), "orig_h": (1.0, float(max_side))}
    for j, name in enumerate(META_COLUMNS):
        problem = _describe_range(f"meta column {name}", meta[:, j], *bounds[name])
        if problem:
            raise ValueError(f"{problem} (meta rows are scale, pad_x, pad_y, orig_w, orig_h from preprocess)")


def check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {value:g}")
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
    check_meta(meta)
    for name, values, low, high in (("boxes", boxes, -1e6, 1e6), ("scores", scores, -1e-3, 1.001),
                                    ("gender", gender, -1e-3, 1.001), ("age", age, -1.0, 101.0)):
        problem = _describe_range(name, np.asarray(values, np.float32), low, high)
        if problem:
            raise ValueError(f"{problem} (detector outputs must be finite)")
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
