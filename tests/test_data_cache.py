"""Decoded-image cache: same pixels as decoding, shrunk with its scale, new entry when the file changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mouaadnet.data.cache import ImageCache, decode_image


def _photo(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_small_image_is_cached_losslessly_and_read_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    _photo(path, (40, 30))
    cache = ImageCache(64, tmp_path / "cache")
    first, scale = cache.load(path)
    again, _ = cache.load(path)
    np.testing.assert_array_equal(first, decode_image(path))
    np.testing.assert_array_equal(again, first)
    assert scale == 1.0 and (cache.misses, cache.hits) == (1, 1)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_large_image_is_shrunk_with_its_scale(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    _photo(path, (400, 100))
    image, scale = ImageCache(100, tmp_path / "cache").load(path)
    assert image.shape == (25, 100, 3) and scale == 0.25


def test_changed_file_gets_a_new_entry_and_damaged_entry_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    _photo(path, (40, 30), seed=1)
    cache = ImageCache(64, tmp_path / "cache")
    cache.load(path)
    _photo(path, (40, 20), seed=2)  # another picture under the same name
    image, _ = cache.load(path)
    np.testing.assert_array_equal(image, decode_image(path))
    entry = cache.entry_path(path)
    entry.write_bytes(b"truncated")
    image, _ = cache.load(path)
    np.testing.assert_array_equal(image, decode_image(path))
    assert cache.misses == 3
