"""Typed training configuration (one YAML file per run), logged to MLflow flattened."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from model.config import ConfigError, ModelConfig, StrictConfig, load_config, parse_config
from model.losses import LossConfig


class SourceConfig(StrictConfig):
    """One dataset: a source spec for ``mouaadnet.data.load_source`` and how to sample/validate it."""

    path: str  # e.g. ../shared/data/utkface, data/train/annotations.json, synthetic:2000:0
    weight: float = 1.0  # relative sampling weight among the sources of the same mode
    val: str | None = None  # separate validation source; None = split `path` by identity
    val_fraction: float = 0.1
    max_samples: int | None = None  # cap (deterministic) on training samples read from this source
    max_val: int | None = 200  # cap on validation samples, to keep per-epoch validation short
    paste_into_scenes: bool = False  # crop source only: its training crops are pasted into scenes (data.paste)

    _weight = field_validator("weight")(classmethod(lambda cls, v: _positive(v)))

    @field_validator("val_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"must be in [0, 1), got {value}")
        return value


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def _range(value: list[float]) -> list[float]:
    if len(value) != 2 or not 0 < value[0] <= value[1]:
        raise ValueError(f"must be a range [low, high] with 0 < low <= high, got {list(value)}")
    return value


class PasteConfig(StrictConfig):
    """Labelled body crops pasted into training scenes (sources with paste_into_scenes: true)."""

    probability: float = 0.5  # share of labelled training scenes that get pasted people
    max_per_image: int = 3
    height: list[float] = [0.25, 0.8]  # pasted height, fraction of the scene side

    @field_validator("probability")
    @classmethod
    def _probability(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"must be in [0, 1], got {value}")
        return value

    _count = field_validator("max_per_image")(classmethod(lambda cls, v: _at_least_one(v)))

    _height = field_validator("height")(classmethod(lambda cls, v: _range(v)))


class CropFramingConfig(StrictConfig):
    """How widely training crops are re-framed (zoom <1 = looser margins; aspect = width stretch; shift = side
    fraction). Kiosk users pass whatever their face or person detector gives."""

    zoom: list[float] = [0.85, 1.1]
    aspect: list[float] = [1.0, 1.0]
    shift: float = 0.0

    _ranges = field_validator("zoom", "aspect")(classmethod(lambda cls, v: _range(v)))

    @field_validator("shift")
    @classmethod
    def _shift(cls, value: float) -> float:
        if not 0.0 <= value <= 0.5:
            raise ValueError(f"must be in [0, 0.5], got {value}")
        return value


class DataConfig(StrictConfig):
    scene: list[SourceConfig] = []
    crop: list[SourceConfig] = []
    crop_fraction: float = 0.5  # share of steps that are crop batches when both modes have sources
    # Global batch sizes: one optimisation step sees this many images in all, whatever the number of processes
    # (torchrun splits each batch evenly over them, so it must divide by the world size). The same config trains
    # the same recipe on 1 CPU, 8 GPUs or N nodes; grow these (and see optim.lr_scaling) to use more hardware.
    scene_batch_size: int = 16
    crop_batch_size: int = 32
    augment: bool = True
    num_workers: int = 0  # data-loading processes per training process
    cache: bool = False  # decode + shrink each image once into a disk cache ($MOUAADNET_CACHE, ~/.cache/mouaadnet)
    paste: PasteConfig = Field(default_factory=PasteConfig)
    crop_framing: CropFramingConfig = Field(default_factory=CropFramingConfig)

    @field_validator("crop_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"must be in [0, 1], got {value}")
        return value

    _batch = field_validator("scene_batch_size", "crop_batch_size")(classmethod(lambda cls, v: _at_least_one(v)))


class OptimConfig(StrictConfig):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3  # peak learning rate (at lr_base_batch when lr_scaling is linear)
    # none: `lr` as written. linear: lr * global batch / lr_base_batch (Goyal et al. 2017), for configs that grow
    # the global batch with the hardware; the batch is data.scene_batch_size (crop_batch_size for crop-only runs).
    # The number of processes alone never changes the LR: batch sizes are global.
    lr_scaling: Literal["none", "linear"] = "none"
    lr_base_batch: int = 16
    weight_decay: float = 0.05
    momentum: float = 0.9  # SGD only
    scheduler: Literal["onecycle", "cosine"] = "onecycle"
    warmup_fraction: float = 0.1  # of all steps (One-Cycle pct_start, or linear warm-up before cosine)
    epochs: int = 10
    steps_per_epoch: int = 100
    grad_clip: float = 10.0  # max global grad norm; 0 disables
    ema: bool = True
    ema_decay: float = 0.999
    ema_ramp_steps: float = 500.0  # decay ramps in over about this many updates

    _counts = field_validator("epochs", "steps_per_epoch", "lr_base_batch")(
        classmethod(lambda cls, v: _at_least_one(v)))
    _lr = field_validator("lr")(classmethod(lambda cls, v: _positive(v)))

    @field_validator("weight_decay", "grad_clip", "ema_ramp_steps")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("momentum", "warmup_fraction", "ema_decay")
    @classmethod
    def _unit(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"must be in [0, 1), got {value}")
        return value


class DistributedConfig(StrictConfig):
    """Data-parallel training under torchrun (DistributedDataParallel); a single process ignores it."""

    # GPU (nccl): BatchNorm statistics over the global batch (SyncBatchNorm). CPU (gloo): PyTorch has no CPU
    # SyncBatchNorm, each process normalises its own share (see docs/DISTRIBUTED.md).
    sync_batchnorm: bool = True
    timeout_min: float = 30.0  # a collective that waits longer (a hung or lost process) ends the job

    _timeout = field_validator("timeout_min")(classmethod(lambda cls, v: _positive(v)))


class TrainConfig(StrictConfig):
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and on tensor cores
    # CPU intra-op threads: an int, or "auto" = all cores when the machine is otherwise idle, fewer while other
    # work shares it (mouaadnet/training/threads.py; a 2-thread run collapses 5x beside other work).
    threads: int | Literal["auto"] = "auto"

    @field_validator("threads")
    @classmethod
    def _threads(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError(f"must be 'auto' or >= 1, got {value}")
        return value
    experiment: str = "mouaadnet"
    best_metric: str = "val/score"  # the checkpoint-selection metric (higher is better)
    pretrained: str | None = None  # checkpoint to start from (weights only)
    score_threshold: float = 0.3  # detection threshold for attribute metrics on scenes

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return load_config(cls, path)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}; lists of dicts get their index in the key."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{name}.{i}."))
        else:
            flat[name] = value
    return flat


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """A copy of ``cfg`` with ``KEY=VALUE`` overrides (dotted keys, list items by index, YAML values), validated
    like the file itself: an unknown key or a wrong type names the override."""
    data = cfg.model_dump()
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. data.paste.probability=0")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {override!r}: the value is not valid YAML: {error}") from None
        _assign(data, key.strip().split("."), value, override)
    return parse_config(TrainConfig, data, "--set " + " ".join(overrides))


def _assign(data: Any, path: list[str], value: Any, override: str) -> None:
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(data, list):
            if not part.isdigit() or int(part) >= len(data):
                raise ConfigError(f"--set {override!r}: {'.'.join(path[:depth + 1])} is not an index of a list "
                                  f"of {len(data)}")
            index: int | str = int(part)
        elif isinstance(data, dict):
            if part not in data:
                raise ConfigError(f"--set {override!r}: unknown key {'.'.join(path[:depth + 1])}")
            index = part
        else:
            raise ConfigError(f"--set {override!r}: {'.'.join(path[:depth])} holds a value, not keys")
        if last:
            data[index] = value
        else:
            data = data[index]
