"""The pasted validation set: deterministic, N scenes, pasted people labelled, the scene's own people unknown."""

from __future__ import annotations

import json

import numpy as np
import torch
import yaml
from typer.testing import CliRunner

from model import build_model
from model.config import ModelConfig
from mouaadnet.cli.main import app
from mouaadnet.data.augment import letterbox
from mouaadnet.data.synthetic import synthetic_crops, synthetic_scenes
from mouaadnet.data.types import UNKNOWN, Sample
from mouaadnet.evaluation.gates import load_eval_sets
from mouaadnet.evaluation.pasted import pasted_scenes

runner = CliRunner()
SIZE = 64


def _config(tmp_path, paste_source: bool = True) -> str:
    cfg = {
        "model": {"scene_size": SIZE, "crop_size": 32},
        "data": {"scene": [{"path": "synthetic:4:0", "val": "synthetic:3:9"}],
                 "crop": [{"path": "synthetic-crops:4:1", "val": "synthetic-crops:6:8",
                           "paste_into_scenes": paste_source}],
                 "paste": {"max_per_image": 3, "height": [0.3, 0.6]}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _rows(sample: Sample, backgrounds: dict[str, Sample]) -> tuple[np.ndarray, np.ndarray]:
    """(original, pasted) row masks: an original row's box is one of its background's letterboxed boxes."""
    background = backgrounds[sample.image_path.removeprefix("pasted:")]
    _, boxes, _, _ = letterbox(background.image, background.boxes, SIZE)
    original = np.array([np.isclose(boxes, row, atol=1e-3).all(1).any() for row in sample.boxes], bool)
    return original, ~original


def test_pasted_set_from_a_config_is_deterministic_and_labels_only_the_pasted_people(tmp_path) -> None:
    config = _config(tmp_path)
    first = load_eval_sets([], config=config, pasted=5)
    second = load_eval_sets([], config=config, pasted=5)
    assert [s.name for s in first] == ["synthetic", "synthetic-crops", "pasted-synthetic-crops"]
    pasted = first[-1]
    assert pasted.mode == "scene" and len(pasted.samples) == 5
    for a, b in zip(pasted.samples, second[-1].samples):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.image, b.image)
    backgrounds = {s.image_path: s for s in synthetic_scenes(3, 9)}  # the config's scene validation split
    assert all(s.gender_mask.any() for s in backgrounds.values())  # they come with labels the set must hide
    for sample in pasted.samples:
        original, added = _rows(sample, backgrounds)
        assert 1 <= added.sum() <= 3 and sample.has_boxes and sample.image.shape == (SIZE, SIZE, 3)
        assert (sample.gender[original] == UNKNOWN).all() and (sample.age[original] == UNKNOWN).all()
        assert (sample.age_group[original] == UNKNOWN).all()
        assert np.isin(sample.gender[added], [0.0, 1.0]).all() and (sample.age[added] >= 0).all()
        assert (sample.age_group[added] >= 0).all()
    assert any(_rows(s, backgrounds)[0].any() for s in pasted.samples)  # some scene people are kept


def test_pasted_scenes_seed_count_prefix_and_unreadable_backgrounds() -> None:
    backgrounds = synthetic_scenes(3, 2, size=96)
    bodies = synthetic_crops(4, 3, size=40)
    broken = Sample("/nonexistent/scene.jpg", "scene", "x", boxes=np.array([[1, 1, 9, 9]], np.float32),
                    gender=np.array([UNKNOWN], np.float32), age=np.array([UNKNOWN], np.float32),
                    age_group=np.array([UNKNOWN], np.int64), has_boxes=True)
    scenes = pasted_scenes([broken, *backgrounds], bodies, 7, seed=1, size=SIZE)
    assert len(scenes) == 7 and all("nonexistent" not in s.image_path for s in scenes)
    shorter = pasted_scenes([broken, *backgrounds], bodies, 4, seed=1, size=SIZE)
    assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(scenes, shorter))  # N only says how many
    other = pasted_scenes([broken, *backgrounds], bodies, 7, seed=2, size=SIZE)
    assert not all(a.boxes.shape == b.boxes.shape and np.allclose(a.boxes, b.boxes) for a, b in zip(scenes, other))


def test_evaluate_cli_pasted_needs_config_and_a_paste_source(tmp_path) -> None:
    result = runner.invoke(app, ["evaluate", str(tmp_path / "best.pt"), "--data", "synthetic:2:0", "--pasted", "3"])
    assert result.exit_code == 2 and "--pasted" in result.output and "--config" in result.output
    checkpoint = tmp_path / "best.pt"
    cfg = ModelConfig(scene_size=SIZE, crop_size=32)
    torch.save({"model": build_model(cfg).state_dict(), "model_config": cfg.model_dump()}, checkpoint)
    result = runner.invoke(app, ["evaluate", str(checkpoint), "--config", _config(tmp_path, False), "--pasted", "2"])
    assert result.exit_code == 2 and "paste_into_scenes" in result.output
    result = runner.invoke(app, ["evaluate", str(checkpoint), "--config", _config(tmp_path), "--pasted", "2",
                                 "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["pasted-synthetic-crops"]
    assert metrics["count_images"] == 2 and "AP50" in metrics and "attr_matched_fraction" in metrics
