"""Synthetic scene generator: determinism, box validity, byte-identical dataset files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from mouaadnet.data.scene_readers import read_coco_json
from mouaadnet.data.synthetic import (
    generate_scene,
    synthetic_crops,
    synthetic_scenes,
    write_synthetic_dataset,
)


def test_generate_scene_is_deterministic_per_seed() -> None:
    a = generate_scene(np.random.default_rng(5), size=160)
    b = generate_scene(np.random.default_rng(5), size=160)
    c = generate_scene(np.random.default_rng(6), size=160)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (160, 160, 3) and a[0].dtype == np.uint8


def test_scene_boxes_valid_and_labels_in_range() -> None:
    samples = synthetic_scenes(60, seed=1, size=128)
    rows = sum(s.num_rows for s in samples)
    assert rows > 60  # 0-5 persons per image, 2.5 on average
    assert any(s.num_rows == 0 for s in samples)  # scenes without people exist too
    for s in samples:
        b = s.boxes
        assert (
            b.shape == (s.num_rows, 4)
            and s.has_boxes
            and s.mode == "scene"
            and s.image.shape == (128, 128, 3)
        )
        assert (b >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 128).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert set(np.unique(s.gender)) <= {0.0, 1.0} and ((s.age >= 0) & (s.age <= 100)).all()
        assert (s.age_group >= 0).all()
    heights = np.concatenate([s.boxes[:, 3] - s.boxes[:, 1] for s in samples])
    assert heights.min() < 50 and heights.max() > 90  # small and large people


def test_gender_colour_cue_separates_crops() -> None:
    # The torso sits in the centre of a crop: women wear warm (red > blue), men cool (blue > red) colours.
    crops = synthetic_crops(40, seed=9, size=96)
    warmth = {0.0: [], 1.0: []}
    for s in crops:
        torso = s.image[40:50, 44:52].astype(float)
        warmth[float(s.gender[0])].append((torso[..., 0] - torso[..., 2]).mean())
    assert min(warmth[1.0]) > max(warmth[0.0])


def test_crops_encode_labels_and_are_deterministic() -> None:
    a, b = synthetic_crops(8, seed=3, size=64), synthetic_crops(8, seed=3, size=64)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert all(s.mode == "crop" and s.num_rows == 1 and s.image.shape == (64, 64, 3) for s in a)
    assert {float(s.gender[0]) for s in synthetic_crops(30, seed=4, size=64)} == {0.0, 1.0}


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_write_synthetic_dataset_byte_identical_and_readable(tmp_path: Path) -> None:
    info = write_synthetic_dataset(tmp_path / "a", n_train=6, n_val=3, seed=11, size=96)
    write_synthetic_dataset(tmp_path / "b", n_train=6, n_val=3, seed=11, size=96)
    write_synthetic_dataset(tmp_path / "c", n_train=6, n_val=3, seed=12, size=96)
    digests = _digests(tmp_path / "a")
    assert len(digests) == 6 + 3 + 2
    assert digests == _digests(tmp_path / "b")
    assert digests != _digests(tmp_path / "c")
    read = read_coco_json(tmp_path / "a" / "train" / "annotations.json")
    assert len(read.samples) == 6 and not read.problems
    assert sum(s.num_rows for s in read.samples) == info["train"]["persons"]
    assert all((s.gender >= 0).all() and (s.age >= 0).all() for s in read.samples)


def test_rewrite_with_fewer_images_removes_stale_files(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, n_train=5, n_val=1, seed=0, size=64)
    write_synthetic_dataset(tmp_path, n_train=2, n_val=1, seed=0, size=64)
    assert len(list((tmp_path / "train" / "images").iterdir())) == 2
