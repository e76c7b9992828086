"""Torch datasets: corrupt images are skipped and counted; collate shapes, dtypes and padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mouaadnet.data.dataset import CropDataset, SceneDataset, collate_crop, collate_scene
from mouaadnet.data.synthetic import synthetic_crops, synthetic_scenes
from mouaadnet.data.types import UNKNOWN, Sample


def _scene(path: Path, rows: int, corrupt: bool = False) -> Sample:
    if corrupt:
        path.write_bytes(b"\xff\xd8\xff garbage")
    else:
        Image.new("RGB", (80, 40), (10, 200, 30)).save(path)
    boxes = np.array([[5 + 10 * i, 5, 15 + 10 * i, 35] for i in range(rows)], np.float32).reshape(-1, 4)
    return Sample(
        image_path=str(path),
        mode="scene",
        source="test",
        boxes=boxes,
        gender=np.array([1, 0, -1][:rows], np.float32),
        age=np.array([30, -1, 70][:rows], np.float32),
        age_group=np.array([1, -1, 4][:rows], np.int64),
        has_boxes=True,
    )


def test_scene_dataset_skips_and_counts_corrupt_image(tmp_path: Path) -> None:
    samples = [
        _scene(tmp_path / "ok0.jpg", 2),
        _scene(tmp_path / "bad.jpg", 1, corrupt=True),
        _scene(tmp_path / "ok2.png", 3),
    ]
    ds = SceneDataset(samples, size=64, augment=False)
    image, target = ds[1]  # the corrupt one: served by the next index instead
    assert target["index"] == 2 and target["path"].endswith("ok2.png")
    assert list(ds.bad_samples) == [str(tmp_path / "bad.jpg")]
    assert (
        image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    )
    # Letterbox only: 80x40 -> scale 0.8, pad_y 16.
    np.testing.assert_allclose(target["boxes"][0].numpy(), [4, 20, 12, 44])
    assert target["gender"].tolist() == [1.0, 0.0, -1.0] and target["age_group"].dtype == torch.int64


def test_all_corrupt_raises_clear_error(tmp_path: Path) -> None:
    ds = SceneDataset([_scene(tmp_path / "bad.jpg", 1, corrupt=True)], size=32)
    with pytest.raises(RuntimeError, match="none of the 1 images"):
        ds[0]


def test_dataset_rejects_wrong_mode() -> None:
    with pytest.raises(ValueError, match="SceneDataset needs scene samples"):
        SceneDataset(synthetic_crops(1, seed=0, size=32))


def test_collate_scene_shapes_dtypes_and_padding(tmp_path: Path) -> None:
    samples = [_scene(tmp_path / "a.png", 0), _scene(tmp_path / "b.png", 3)]
    samples[0].has_boxes = False
    ds = SceneDataset(samples, size=48, augment=False)
    batch = collate_scene([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 48, 48) and batch["images"].dtype == torch.float32
    assert batch["boxes"].shape == (2, 3, 4) and batch["boxes"].dtype == torch.float32
    assert batch["box_mask"].tolist() == [[False] * 3, [True] * 3]
    assert batch["gender"].tolist() == [[UNKNOWN] * 3, [1.0, 0.0, -1.0]]
    assert batch["age"].tolist() == [[UNKNOWN] * 3, [30.0, -1.0, 70.0]]
    assert batch["age_group"].dtype == torch.int64 and batch["age_group"].tolist() == [[-1] * 3, [1, -1, 4]]
    assert batch["has_boxes"].tolist() == [False, True] and (batch["boxes"][0] == 0).all()
    empty = collate_scene([ds[0]])
    assert empty["boxes"].shape == (1, 1, 4) and not empty["box_mask"].any()


def test_augmented_scene_items_keep_rows_aligned_and_are_seeded() -> None:
    ds = SceneDataset(synthetic_scenes(12, seed=0, size=96), size=64, augment=True, seed=5)
    for i in range(len(ds)):
        image, target = ds[i]
        k = len(target["boxes"])
        assert image.shape == (3, 64, 64) and target["gender"].shape == (k,) and target["age"].shape == (k,)
        assert (target["boxes"] >= 0).all() and (target["boxes"] <= 64).all()
    assert torch.equal(ds[3][0], ds[3][0])
    ds.set_epoch(1)
    first = ds[3][0]
    ds.set_epoch(2)
    assert not torch.equal(first, ds[3][0])
    batch = collate_scene([ds[i] for i in range(4)])
    assert batch["box_mask"].sum() == sum(len(ds[i][1]["boxes"]) for i in range(4))


def test_crop_dataset_and_collate(tmp_path: Path) -> None:
    crops = synthetic_crops(3, seed=1, size=40)
    crops.append(
        Sample(
            image_path=str(tmp_path / "gone.jpg"),
            mode="crop",
            source="test",
            gender=np.array([1.0], np.float32),
            age=np.array([-1.0], np.float32),
            age_group=np.array([2], np.int64),
        )
    )
    ds = CropDataset(crops, size=32, augment=True)
    batch = collate_crop([ds[i] for i in range(4)])
    assert batch["images"].shape == (4, 3, 32, 32) and batch["images"].dtype == torch.float32
    assert batch["gender"].shape == (4,) and batch["gender"].dtype == torch.float32
    assert batch["age_group"].dtype == torch.int64
    # The missing file (index 3) was replaced by index 0 and recorded.
    assert batch["gender"][3] == crops[0].gender[0] and str(tmp_path / "gone.jpg") in ds.bad_samples


def test_mosaic_scenes_carry_the_people_and_attributes_of_their_four_tiles():
    samples = synthetic_scenes(8, seed=3, size=96)
    plain = SceneDataset(samples, 64, augment=True, seed=0)
    tiled = SceneDataset(samples, 64, augment=True, seed=0, mosaic=1.0, zoom=(0.8, 1.2))
    people = [len(s.boxes) for s in samples]
    for index in range(len(samples)):
        image, target = tiled[index]
        assert image.shape == (3, 64, 64)
        rows = len(target["boxes"])
        assert rows == len(target["gender"]) == len(target["age"]) == len(target["age_group"])
        assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all() and (target["boxes"] >= 0).all()
        assert (target["boxes"] <= 64).all()
    # four scenes' people in one image: more people per image than the plain stream on average
    assert np.mean([len(tiled[i][1]["boxes"]) for i in range(8)]) > np.mean([len(plain[i][1]["boxes"]) for i in range(8)])
    assert max(people) > 0
    # mosaic 0 is the shipped recipe, draw for draw
    again = SceneDataset(samples, 64, augment=True, seed=0, mosaic=0.0)
    for index in range(3):
        assert torch.equal(plain[index][0], again[index][0])


def test_scene_zoom_and_mosaic_settings_are_checked():
    from pydantic import ValidationError

    from mouaadnet.data.config import DataConfig

    assert DataConfig(scene_zoom=[0.3, 2.0], mosaic=0.5).scene_zoom == [0.3, 2.0]
    for wrong in ([1.5, 1.0], [0.5], [0.0, 1.0]):
        with pytest.raises(ValidationError, match="scene_zoom"):
            DataConfig(scene_zoom=wrong)
    with pytest.raises(ValidationError, match="mosaic"):
        DataConfig(mosaic=1.5)
