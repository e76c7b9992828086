"""The pieces of the training recipe the trainer (and QAT) assemble: device and AMP, seeding, the mixed
scene/crop step schedule and its batch streams, the optimizer, the LR schedule and the ramped EMA."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mouaadnet.data.assembly import ModeData, TrainingData
from mouaadnet.data.cache import ImageCache
from mouaadnet.data.dataset import CropDataset, SceneDataset, collate_crop, collate_scene
from mouaadnet.training.config import TrainConfig
from mouaadnet.training.distributed import SINGLE, DistContext, local_batch, rank_slice


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is available (use device: auto or cpu)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: fp16 (+GradScaler) on CUDA by default; on CPU fp32 unless bf16 is asked for."""
    if amp == "off" or (amp == "auto" and device.type == "cpu"):
        return None
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("amp: fp16 autocast is CUDA-only; use bf16 or off on CPU")
    if amp == "bf16":
        return torch.bfloat16
    return torch.float16


def ramped_ema(decay: float, ramp_steps: float):
    """EMA update whose decay ramps up as decay * (1 - exp(-updates / ramp_steps)) (YOLOv5-style).

    A fixed 0.998 would keep ~50 % of the random initial weights after 360 steps; the ramp makes the
    average follow the model early and smooth it late, so short runs validate meaningful weights.
    """

    def update(ema_params, params, num_averaged):
        if not ema_params[0].is_floating_point():  # integer buffers (BatchNorm's num_batches_tracked)
            torch._foreach_copy_(ema_params, params)
            return
        d = decay * (1 - math.exp(-float(num_averaged) / ramp_steps))
        torch._foreach_lerp_(ema_params, params, 1 - d)

    return update


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_modes(steps: int, crop_fraction: float, has_scene: bool, has_crop: bool) -> list[str]:
    """Which mode each step of an epoch trains: crop steps spread evenly at the configured fraction."""
    if not has_crop:
        return ["scene"] * steps
    if not has_scene:
        return ["crop"] * steps
    return ["crop" if math.floor((i + 1) * crop_fraction) > math.floor(i * crop_fraction) else "scene"
            for i in range(steps)]


class BatchStream:
    """Batches of one mode, drawn with the sources' sampling weights; the draw depends only on (seed, epoch).

    ``batch_size`` is the global batch. Under data parallelism (``dist``) every process makes the same draw and
    loads only its slice of each global batch, so the processes' batches together are the one-process batches.
    """

    def __init__(self, dataset, data: ModeData, batch_size: int, collate, num_workers: int, seed: int, tag: int,
                 dist: DistContext = SINGLE):
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.num_workers, self.seed, self.tag, self.dist = num_workers, seed, tag, dist
        self.local_batch_size = local_batch(batch_size, dist, f"data.{('scene', 'crop')[tag]}_batch_size")
        self.probabilities = np.asarray(data.weights, dtype=np.float64)
        self.probabilities /= self.probabilities.sum()

    def indices(self, epoch: int, n_batches: int) -> np.ndarray:
        """This process's sample indices for one epoch (all of them for one process)."""
        rng = np.random.default_rng([self.seed, epoch, self.tag])
        draw = rng.choice(len(self.dataset), size=n_batches * self.batch_size, p=self.probabilities)
        return rank_slice(draw, self.batch_size, self.dist)

    def epoch(self, epoch: int, n_batches: int):
        indices = self.indices(epoch, n_batches)
        self.dataset.set_epoch(epoch)
        loader = DataLoader(self.dataset, batch_size=self.local_batch_size, sampler=indices.tolist(),
                            collate_fn=self.collate, num_workers=self.num_workers, drop_last=True)
        return iter(loader)


def build_streams(cfg: TrainConfig, data: TrainingData, dist: DistContext = SINGLE) -> dict[str, BatchStream]:
    """The batch streams of the modes that have samples, as the config's data section says (augmentation,
    pasting, crop framing, image cache, batch sizes, workers): what the trainer and QAT draw their batches from."""
    settings, size, streams = cfg.data, cfg.model, {}
    if data.scene.samples:
        # Cached images keep enough pixels for the largest zoom the augmentation asks for.
        cache = ImageCache(round(size.scene_size * max(1.4, settings.scene_zoom[1]))) if settings.cache else None
        dataset = SceneDataset(data.scene.samples, size.scene_size, settings.augment, cfg.seed, cache=cache,
                               paste=settings.paste, bodies=data.paste_bodies, zoom=settings.scene_zoom,
                               mosaic=settings.mosaic)
        streams["scene"] = BatchStream(dataset, data.scene, settings.scene_batch_size, collate_scene,
                                       settings.num_workers, cfg.seed, 0, dist)
    if data.crop.samples:
        cache = ImageCache(size.crop_size * 2) if settings.cache else None
        dataset = CropDataset(data.crop.samples, size.crop_size, settings.augment, cfg.seed, cache=cache,
                              framing=settings.crop_framing)
        streams["crop"] = BatchStream(dataset, data.crop, settings.crop_batch_size, collate_crop,
                                      settings.num_workers, cfg.seed, 1, dist)
    return streams


def mixed_batches(streams: dict[str, BatchStream], steps: int, crop_fraction: float,
                  epoch: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(mode, batch) for ``steps`` steps of ``epoch``: the streams' batches in the step schedule (``step_modes``)."""
    modes = step_modes(steps, crop_fraction, "scene" in streams, "crop" in streams)
    iterators = {m: s.epoch(epoch, modes.count(m)) for m, s in streams.items() if m in modes}
    for mode in modes:
        yield mode, next(iterators[mode])


def peak_lr(cfg: TrainConfig) -> float:
    """``optim.lr``, or under ``lr_scaling: linear`` lr * global batch / lr_base_batch (the batch: the scene
    batch size, the crop one for crop-only runs). The number of processes never enters: batches are global."""
    if cfg.optim.lr_scaling == "none":
        return cfg.optim.lr
    batch = cfg.data.crop_batch_size if cfg.data.crop and not cfg.data.scene else cfg.data.scene_batch_size
    return cfg.optim.lr * batch / cfg.optim.lr_base_batch


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on biases and normalisation weights (standard practice for small CNNs)."""
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=peak_lr(cfg), momentum=cfg.optim.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=peak_lr(cfg))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    total = cfg.optim.epochs * cfg.optim.steps_per_epoch
    if cfg.optim.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr(cfg), total_steps=total,
                                                   pct_start=max(cfg.optim.warmup_fraction, 1e-3))
    warmup = max(1, int(total * cfg.optim.warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
