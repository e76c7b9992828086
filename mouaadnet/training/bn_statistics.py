"""Each mode's BatchNorm statistics measured afresh on training images, the weights untouched.

Checkpoints trained before ``model.blocks.ModeBatchNorm2d`` kept scene and crop statistics apart hold one running
average over both, which normalises every mode by statistics of neither (docs/BENCHMARKS.md, "One set of
BatchNorm statistics per mode"). ``recalibrate`` replaces each mode's statistics by the plain average over
un-augmented training images of that mode, as the exported graphs then fold them. `mouaadnet recalibrate` wires it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from model.blocks import ModeBatchNorm2d

MODES = ("scene", "crop")


def _reset(norm: ModeBatchNorm2d, mode: str) -> None:
    prefix = "crop_" if mode == "crop" else ""
    getattr(norm, prefix + "running_mean").zero_()
    getattr(norm, prefix + "running_var").fill_(1.0)
    getattr(norm, prefix + "num_batches_tracked").zero_()


@torch.no_grad()
def recalibrate(model: torch.nn.Module, batches_by_mode: dict[str, Iterable[torch.Tensor]]) -> torch.nn.Module:
    """An eval-mode copy of ``model`` whose running statistics of each given mode are the average over that mode's
    image batches (``momentum=None``: a cumulative average, every batch counts alike)."""
    fresh = copy.deepcopy(model).eval()
    norms = [m for m in fresh.modules() if isinstance(m, ModeBatchNorm2d)]
    if not norms:
        raise ValueError("the model has no per-mode BatchNorm to recalibrate (a re-parameterized deploy form?)")
    momenta = [m.momentum for m in norms]
    for mode, batches in batches_by_mode.items():
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for norm in norms:
            _reset(norm, mode)
            norm.momentum = None
            norm.train()
        seen = 0
        for images in batches:
            fresh(images, mode=mode)
            seen += len(images)
        if not seen:
            raise ValueError(f"no {mode} images to measure its statistics on")
        for norm in norms:
            norm.eval()
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return fresh


def training_batches(config: str | Path, per_source: int, scene_size: int, crop_size: int,
                     batch_size: int = 32) -> dict[str, Iterable[torch.Tensor]]:
    """Un-augmented (letterboxed) image batches of the config's training splits per mode, ``per_source`` drawn
    evenly from each source; read lazily, once."""
    from mouaadnet.data.dataset import CropDataset, SceneDataset, collate_crop, collate_scene
    from mouaadnet.evaluation.gates import load_eval_sets

    sets = load_eval_sets([], per_source, config, None, "train")
    out: dict[str, Iterable[torch.Tensor]] = {}
    for mode in MODES:
        samples = [s for e in sets if e.mode == mode for s in e.samples]
        if not samples:
            continue
        dataset = (SceneDataset(samples, scene_size, augment=False) if mode == "scene"
                   else CropDataset(samples, crop_size, augment=False))
        collate = collate_scene if mode == "scene" else collate_crop
        out[mode] = (b["images"] for b in DataLoader(dataset, batch_size=batch_size, collate_fn=collate))
    return out


def recalibrate_checkpoint(checkpoint: str | Path, config: str | Path, out: str | Path, per_source: int = 200) -> Path:
    """Write ``out``: ``checkpoint`` with each mode's BatchNorm statistics re-measured on ``per_source`` training
    images per source of ``config`` (in its EMA weights when it has them, else its weights); the rest unchanged.
    The file records what was done under ``bn_statistics``."""
    from mouaadnet.training.checkpoint import atomic_save, load_checkpoint, model_from_checkpoint

    if per_source < 1:
        raise ValueError(f"per_source must be >= 1, got {per_source}")
    model, data = model_from_checkpoint(checkpoint)
    batches = training_batches(config, per_source, model.cfg.scene_size, model.cfg.crop_size)
    fresh = recalibrate(model, batches)
    data = dict(load_checkpoint(checkpoint))
    data["ema" if data.get("ema") else "model"] = fresh.state_dict()
    data["bn_statistics"] = {"per_source": per_source, "config": str(config), "modes": sorted(batches)}
    return atomic_save(data, out)
