"""Decoded-image cache: JPEG decoding starves training on a 2-core CPU, so each image is decoded and resized once.

An entry is one uncompressed ``.npy`` (HxWx3 uint8, the longer side at most ``max_side``) named by a hash of the
file's path, size, mtime and ``max_side``: a changed file or another size gets a new entry, never a stale one.
Entries are written atomically (temp file + rename), so concurrent DataLoader workers and a killed run never
leave a half-written entry behind. Boxes in the source's pixels scale by ``cached width / original width``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DEFAULT_CACHE_DIR = Path(os.environ.get("MOUAADNET_CACHE", Path.home() / ".cache" / "mouaadnet" / "images"))


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """HxWx3 uint8 RGB with EXIF orientation applied; raises on unreadable files."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        return np.asarray(img.convert("RGB"))


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


class ImageCache:
    """``load(path) -> (image, scale)``: decoded, shrunk to max_side, from disk after the first call."""

    def __init__(self, max_side: int, cache_dir: str | os.PathLike | None = None) -> None:
        if max_side < 32:
            raise ValueError(f"ImageCache: max_side must be >= 32, got {max_side}")
        self.max_side = max_side
        self.dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        self.hits = 0
        self.misses = 0

    def entry_path(self, path: str | os.PathLike) -> Path:
        stat = os.stat(path)
        key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{self.max_side}"
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()
        return self.dir / digest[:2] / f"{digest}.npy"

    def load(self, path: str | os.PathLike) -> tuple[np.ndarray, float]:
        """(HxWx3 uint8 image, scale = its width / the original width)."""
        entry = self.entry_path(path)
        with Image.open(path) as img:  # header only: the original width (after EXIF rotation) for the scale
            width = img.size[1] if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else img.size[0]
        try:
            image = np.load(entry)
            self.hits += 1
        except (OSError, ValueError):  # missing or damaged entry: decode again and replace it
            image = _shrink(decode_image(path), self.max_side)
            self._write(entry, image)
            self.misses += 1
        return image, image.shape[1] / width

    def _write(self, entry: Path, image: np.ndarray) -> None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=entry.parent, suffix=".tmp", delete=False) as handle:
                np.save(handle, image)
            os.replace(handle.name, entry)
        except OSError:  # a full or read-only cache disk slows training down; it must not stop it
            pass
