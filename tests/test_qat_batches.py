"""QAT fine-tunes on the batches training draws: the config's pasting and crop framing reach its data streams."""

from __future__ import annotations

import torch

from mouaadnet.data.assembly import load_training_data
from mouaadnet.data.config import SourceConfig
from mouaadnet.training.config import TrainConfig
from mouaadnet.training.qat import qat_batches


def _config() -> TrainConfig:
    cfg = TrainConfig(seed=0)
    cfg.model.scene_size, cfg.model.crop_size = 64, 32
    cfg.data.scene = [SourceConfig(path="synthetic:8:0", val_fraction=0.0)]
    cfg.data.crop = [SourceConfig(path="synthetic-crops:16:1", val_fraction=0.0, paste_into_scenes=True)]
    cfg.data.scene_batch_size = cfg.data.crop_batch_size = 4
    return cfg


def _batches(cfg: TrainConfig, mode: str) -> list[dict]:
    data = load_training_data(cfg.data, cfg.seed)
    return [b for b in qat_batches(cfg, data, 6) if b["mode"] == mode]


def test_qat_scene_batches_get_the_pasted_bodies():
    cfg = _config()
    cfg.data.paste.probability = 0.0
    plain = _batches(cfg, "scene")
    cfg.data.paste.probability, cfg.data.paste.max_per_image = 1.0, 3
    pasted = _batches(cfg, "scene")
    assert len(plain) == len(pasted) == 3
    people = [sum(int(b["box_mask"].sum()) for b in batches) for batches in (plain, pasted)]
    assert people[1] > people[0], people  # every labelled scene got 1..3 bodies (a few may hide others)
    assert not all(torch.equal(a["images"], b["images"]) for a, b in zip(plain, pasted))


def test_qat_crop_batches_follow_the_crop_framing():
    cfg = _config()
    default = _batches(cfg, "crop")
    cfg.data.crop_framing.zoom = [0.5, 0.5]
    cfg.data.crop_framing.shift = 0.3
    reframed = _batches(cfg, "crop")
    assert len(default) == len(reframed) == 3
    assert not any(torch.equal(a["images"], b["images"]) for a, b in zip(default, reframed))
