"""Training throughput benchmark: images/s of full optimisation steps in scene and crop mode."""

from __future__ import annotations

import time

import torch

from mouaadnet.data.assembly import load_training_data
from mouaadnet.data.config import SourceConfig
from mouaadnet.training.config import TrainConfig
from mouaadnet.training.trainer import Trainer

VARIANTS = (("fp32", "off", False), ("fp32 channels_last", "off", True), ("bf16 autocast", "bf16", False),
            ("bf16 channels_last", "bf16", True))


def _config(amp: str, channels_last: bool, scene_size: int, crop_size: int, batch: int, crop_batch: int) -> TrainConfig:
    cfg = TrainConfig(amp=amp, channels_last=channels_last)
    cfg.model.scene_size, cfg.model.crop_size = scene_size, crop_size
    cfg.data.scene = [SourceConfig(path="synthetic:64:0", val_fraction=0.0)]
    cfg.data.crop = [SourceConfig(path="synthetic-crops:128:1", val_fraction=0.0)]
    cfg.data.scene_batch_size, cfg.data.crop_batch_size = batch, crop_batch
    return cfg


def measure(trainer: Trainer, mode: str, steps: int, warmup: int = 2) -> float:
    """Images/s of ``steps`` optimisation steps (data loading included) after ``warmup`` steps."""
    stream = trainer.streams[mode]
    batches = stream.epoch(0, steps + warmup)
    trainer.model.train()
    for _ in range(warmup):
        trainer.optimizer_step(next(batches), mode)
    images, start = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        trainer.optimizer_step(batch, mode)
        images += len(batch["images"])
    return images / (time.perf_counter() - start)


def run_train_bench(steps: int = 10, scene_size: int = 320, crop_size: int = 112, batch: int = 16,
                    crop_batch: int = 64, variants=VARIANTS) -> list[dict]:
    """One row per (variant, mode) with images/s."""
    rows = []
    for name, amp, channels_last in variants:
        cfg = _config(amp, channels_last, scene_size, crop_size, batch, crop_batch)
        trainer = Trainer(cfg, "/tmp/unused", data=load_training_data(cfg.data, cfg.seed), progress=False)
        for mode, size, n in (("scene", scene_size, batch), ("crop", crop_size, crop_batch)):
            rows.append({"variant": name, "mode": mode, "size": size, "batch": n,
                         "images_per_second": measure(trainer, mode, steps)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [f"threads: {torch.get_num_threads()}", "", "| variant | mode | input | batch | images/s |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['mode']} | {r['size']} | {r['batch']} | {r['images_per_second']:.1f} |" for r in rows]
    return "\n".join(lines)
