"""Augmentations keep boxes exact, inside the image and aligned with their attribute rows."""

from __future__ import annotations

import numpy as np
import pytest

from mouaadnet.data.augment import (
    CropAugment,
    SceneAugment,
    color_jitter,
    hflip,
    letterbox,
    random_scale_crop,
    small_rotation,
)


def _marked(h: int = 60, w: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with two solid-colour rectangles and their exact boxes."""
    image = np.full((h, w, 3), 50, np.uint8)
    image[10:30, 20:40] = (255, 0, 0)
    image[35:55, 70:90] = (0, 255, 0)
    return image, np.array([[20, 10, 40, 30], [70, 35, 90, 55]], np.float32)


def test_letterbox_maps_boxes_and_pads() -> None:
    image, boxes = _marked()
    out, mapped, scale, (pad_x, pad_y) = letterbox(image, boxes, 200)
    assert out.shape == (200, 200, 3) and scale == 2.0 and (pad_x, pad_y) == (0, 40)
    np.testing.assert_allclose(mapped, [[40, 60, 80, 100], [140, 110, 180, 150]])
    assert (out[:40] == 114).all() and (out[160:] == 114).all()
    x1, y1, x2, y2 = mapped[0].astype(int)
    assert (out[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2] == (255, 0, 0)).all()


def test_hflip_maps_boxes_exactly() -> None:
    image, boxes = _marked()
    out, flipped = hflip(image, boxes)
    np.testing.assert_array_equal(flipped, [[60, 10, 80, 30], [10, 35, 30, 55]])
    assert (out[10:30, 60:80] == (255, 0, 0)).all() and (out[35:55, 10:30] == (0, 255, 0)).all()
    np.testing.assert_array_equal(hflip(out, flipped)[1], boxes)


def test_color_jitter_changes_colours_but_not_shape() -> None:
    image, _ = _marked()
    out = color_jitter(image, np.random.default_rng(0), 0.3, 0.3, 0.3, 0.05)
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
    assert (color_jitter(image, np.random.default_rng(0), 0, 0, 0, 0).astype(int) - image).max() <= 1


def test_small_rotation_boxes_cover_rotated_content() -> None:
    image, boxes = _marked(100, 100)
    for seed in range(5):
        out, rotated, keep = small_rotation(image, boxes, np.random.default_rng(seed), max_deg=10)
        assert list(keep) == [0, 1]
        red = np.argwhere((out[..., 0] > 200) & (out[..., 1] < 50))
        x1, y1, x2, y2 = rotated[0]
        # Every red pixel lies in the rotated box (1 px for resampling), and the box is no wider than needed.
        assert (
            red[:, 1].min() >= x1 - 1
            and red[:, 1].max() <= x2
            and red[:, 0].min() >= y1 - 1
            and red[:, 0].max() <= y2
        )
        assert x2 - x1 <= 20 * (np.cos(np.radians(10)) + np.sin(np.radians(10))) + 1


@pytest.mark.parametrize("seed", range(20))
def test_random_scale_crop_keeps_boxes_inside_and_aligned(seed: int) -> None:
    image, boxes = _marked()
    out, kept_boxes, keep = random_scale_crop(image, boxes, 64, np.random.default_rng(seed))
    assert out.shape == (64, 64, 3) and kept_boxes.shape == (len(keep), 4)
    assert (kept_boxes >= 0).all() and (kept_boxes <= 64).all()
    colours = {0: (255, 0, 0), 1: (0, 255, 0)}
    for row, original in zip(kept_boxes, keep, strict=True):
        cx, cy = int((row[0] + row[2]) / 2), int((row[1] + row[3]) / 2)
        # The kept row's box still shows its own rectangle's colour: rows and attributes stay aligned.
        assert tuple(out[cy, cx]) == colours[int(original)]


def test_random_scale_crop_drops_boxes_that_leave() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[0, 0, 10, 10], [45, 45, 55, 55]], np.float32)
    dropped = 0
    for seed in range(30):
        _, kept_boxes, keep = random_scale_crop(image, boxes, 100, np.random.default_rng(seed), (1.4, 1.4))
        assert 1 in keep  # the centre box always survives a 1.4x zoom
        dropped += 0 not in keep
    assert dropped > 0


def test_scene_augment_disabled_is_letterbox_and_enabled_is_seeded() -> None:
    image, boxes = _marked()
    val = SceneAugment(100, enabled=False)
    out, mapped, keep = val(image, boxes)
    expected = letterbox(image, boxes, 100)
    np.testing.assert_array_equal(out, expected[0])
    np.testing.assert_array_equal(mapped, expected[1])
    assert list(keep) == [0, 1]
    train = SceneAugment(100, seed=1)
    a = train(image, boxes, rng=np.random.default_rng(4))
    b = train(image, boxes, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for seed in range(20):
        out, kept_boxes, keep = train(image, boxes, rng=np.random.default_rng(seed))
        assert out.shape == (100, 100, 3) and len(kept_boxes) == len(keep)
        assert (kept_boxes >= 0).all() and (kept_boxes <= 100).all()


def test_crop_augment_output_size() -> None:
    image, _ = _marked()
    assert CropAugment(48)(image).shape == (48, 48, 3)
    np.testing.assert_array_equal(CropAugment(48, enabled=False)(image), letterbox(image, None, 48)[0])


def test_reframe_zooms_shifts_and_stretches_the_crop() -> None:
    from mouaadnet.data.augment import reframe

    face = np.full((100, 100, 3), 250, np.uint8)
    rng = np.random.default_rng(0)
    loose = reframe(face, 112, rng, zoom=(0.5, 0.5), aspect=(1.0, 1.0), shift=0.0)
    bright = np.argwhere(loose[..., 0] == 250)
    assert loose.shape == (112, 112, 3) and len(bright) == 56 * 56  # half the side, grey around it
    assert bright.min(0).tolist() == [28, 28]
    wide = reframe(face, 112, rng, zoom=(0.5, 0.5), aspect=(4.0, 4.0), shift=0.0)
    cols = np.argwhere(wide[..., 0] == 250)
    assert np.ptp(cols[:, 1]) + 1 == 112 and np.ptp(cols[:, 0]) + 1 == 28  # 2x wider, 2x shorter
    shifted = reframe(face, 112, np.random.default_rng(1), zoom=(0.5, 0.5), aspect=(1.0, 1.0), shift=0.2)
    assert np.argwhere(shifted[..., 0] == 250).min(0).tolist() != [28, 28]


def test_mosaic_places_each_image_in_its_quadrant_with_its_people():
    from mouaadnet.data.augment import mosaic

    rng = np.random.default_rng(0)
    tiles = []
    for value in (40, 90, 140, 190):  # four flat images, one person each, told apart by their grey level
        image = np.full((200, 100, 3), value, np.uint8)
        tiles.append((image, np.array([[20, 40, 80, 180]], np.float32)))
    out, boxes, keeps = mosaic(tiles, 128, rng, scale_range=(1.0, 1.0))
    assert out.shape == (128, 128, 3) and [len(k) for k in keeps] == [1, 1, 1, 1]
    assert len(boxes) == 4
    for (x1, y1, x2, y2), value in zip(boxes, (40, 90, 140, 190), strict=True):
        inside = out[int(y1) + 1:int(y2) - 1, int(x1) + 1:int(x2) - 1]
        assert inside.size and np.all(inside == value)  # each box covers pixels of its own tile only
    with pytest.raises(ValueError, match="4 images"):
        mosaic(tiles[:3], 128, rng)
