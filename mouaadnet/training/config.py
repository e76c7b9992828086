"""Typed training configuration (one YAML file per run), logged to MLflow flattened; its data section is
``mouaadnet.data.config.DataConfig``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from model.config import ConfigError, ModelConfig, StrictConfig, load_config, parse_config
from model.losses import LossConfig
from mouaadnet.data.config import DataConfig


class OptimConfig(StrictConfig):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0)  # peak learning rate (at lr_base_batch when lr_scaling is linear)
    # none: `lr` as written. linear: lr * global batch / lr_base_batch (Goyal et al. 2017), for configs that grow
    # the global batch with the hardware; the batch is data.scene_batch_size (crop_batch_size for crop-only runs).
    # The number of processes alone never changes the LR: batch sizes are global.
    lr_scaling: Literal["none", "linear"] = "none"
    lr_base_batch: int = Field(16, ge=1)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    scheduler: Literal["onecycle", "cosine"] = "onecycle"
    warmup_fraction: float = Field(0.1, ge=0, lt=1)  # of all steps (One-Cycle pct_start, or linear warm-up before cosine)
    epochs: int = Field(10, ge=1)
    steps_per_epoch: int = Field(100, ge=1)
    grad_clip: float = Field(10.0, ge=0)  # max global grad norm; 0 disables
    ema: bool = True
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_ramp_steps: float = Field(500.0, ge=0)  # decay ramps in over about this many updates


class DistributedConfig(StrictConfig):
    """Data-parallel training under torchrun (DistributedDataParallel); a single process ignores it."""

    # GPU (nccl): BatchNorm statistics over the global batch (SyncBatchNorm). CPU (gloo): PyTorch has no CPU
    # SyncBatchNorm, each process normalises its own share (see docs/DISTRIBUTED.md).
    sync_batchnorm: bool = True
    timeout_min: float = Field(30.0, gt=0)  # a collective that waits longer (a hung or lost process) ends the job


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
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    experiment: str = "mouaadnet"
    best_metric: str = "val/score"  # the checkpoint-selection metric (higher is better)
    pretrained: str | None = None  # checkpoint to start from (weights only)
    # A converged arch-v2 checkpoint whose scene outputs are soft targets (loss.teacher_heatmap / teacher_box)
    detector_teacher: str | None = None
    score_threshold: float = 0.3  # detection threshold for attribute metrics on scenes

    @model_validator(mode="after")
    def _distill_both_sides(self) -> TrainConfig:
        """Distillation needs a teacher (a crop source with distill: true) and a weight (loss.*_distill > 0)."""
        distils = [s.path for s in self.data.crop + self.data.scene if s.distill]
        weighted = self.loss.gender_distill > 0 or self.loss.age_distill > 0
        if distils and not weighted:
            raise ValueError(f"data: {distils[0]} has distill: true but loss.gender_distill and loss.age_distill "
                             "are 0: set one > 0, or drop distill")
        if weighted and not distils:
            raise ValueError("loss.gender_distill / loss.age_distill > 0 but no crop source has distill: true "
                             "(the teacher's labels come from those sources)")
        return self

    @model_validator(mode="after")
    def _teacher_both_sides(self) -> TrainConfig:
        """A detector teacher needs a weight, and a weight needs a teacher."""
        weighted = self.loss.teacher_heatmap > 0 or self.loss.teacher_box > 0
        if self.detector_teacher and not weighted:
            raise ValueError("detector_teacher is set but loss.teacher_heatmap and loss.teacher_box are 0")
        if weighted and not self.detector_teacher:
            raise ValueError("loss.teacher_heatmap / loss.teacher_box > 0 need detector_teacher (a v2 checkpoint)")
        return self

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
