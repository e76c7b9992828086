"""Typed, file-backed configuration of the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

MAX_AGE = 100  # age logits cover 0..MAX_AGE years inclusive
NUM_AGE_BINS = MAX_AGE + 1
# PETA-style age groups and the inclusive year range each covers (soft age targets, age-group accuracy).
AGE_GROUPS: tuple[str, ...] = ("Less15", "Less30", "Less45", "Less60", "Larger60")
AGE_GROUP_RANGES: tuple[tuple[int, int], ...] = ((0, 15), (16, 30), (31, 45), (46, 60), (61, MAX_AGE))
# FairFace's age bins (labels.csv spelling) and their inclusive year ranges; the top bin is open-ended.
FAIRFACE_AGE_BINS: tuple[str, ...] = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69",
                                      "more than 70")
FAIRFACE_AGE_RANGES: tuple[tuple[int, int], ...] = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49),
                                                    (50, 59), (60, 69), (70, MAX_AGE))
# Every labelled age range a sample's ``age_group`` can point at: PETA groups first (indices 0-4, so PETA
# labels keep their meaning), then FairFace bins (index FAIRFACE_BIN_OFFSET + bin).
AGE_RANGES: tuple[tuple[int, int], ...] = AGE_GROUP_RANGES + FAIRFACE_AGE_RANGES
FAIRFACE_BIN_OFFSET = len(AGE_GROUP_RANGES)
HEAD_STRIDE = 8  # output stride of the fused map the heads read (see model.heads for the reason)
NETWORK_STRIDE = 32  # deepest backbone stride: scene inputs must be a multiple of it
V2_NMS_IOU = 0.6  # default NMS IoU of arch v2 (YOLO-family detectors use 0.45-0.7 for one class)

Cfg = TypeVar("Cfg", bound=BaseModel)


class StrictConfig(BaseModel):
    """Base for every config: unknown keys, wrong types and non-finite numbers (`.inf`, `.nan`) are errors, not
    silent defaults or a run that fails later without naming the key."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)


class ModelConfig(StrictConfig):
    """Widths, depths, input sizes and head options of MouaadNet-Ultra."""

    # v1: centre heatmap + log-size + sub-cell offset, box trained at each person's centre cell only (CenterNet).
    # v2: centre heatmap + distances to the four box sides at every cell, trained over each person's Gaussian
    # core (TTFNet); the box is read at the peak cell itself (issue 21). v1 checkpoints keep loading as v1.
    arch: Literal["v1", "v2"] = "v1"
    # Backbone layout. v1: a 3x3 stride-2 stem, stage 2 opens with an inverted residual expanded x3 at 160x160.
    # fast (docs/PERFORMANCE.md B4 + B1): a space-to-depth stem, stage 2 opens with a dense 3x3 stride-2 conv and
    # its expansion runs at 80x80: fewer, denser layers where the map is largest.
    backbone: Literal["v1", "fast"] = "v1"
    widths: list[int] = [16, 24, 48, 96, 128]  # output channels of backbone stages 1..5 (strides 2..32)
    depths: list[int] = [1, 2, 2, 2, 3]  # blocks per stage (the first block of stages 2..5 downsamples)
    neck_width: int = 64
    neck_depth: int = 1  # inner blocks per CSP block
    head_width: int = 64
    head_convs: int = 2  # depthwise-separable convs in each head tower
    attr_dropout: float = 0.1
    attr_window: int = 3  # scene-mode attention-pooling window (cells of the stride-8 map)
    heatmap_prior: float = 0.1  # initial sigmoid output of the center heatmap (focal-loss prior)
    scene_size: int = 320
    crop_size: int = 112
    top_k: int = 100
    # Class-agnostic IoU threshold of the Fast NMS after top-K (in the exported graph); 0 = off. None = the arch's
    # default: off for v1 (its shipped outputs stay as they are), V2_NMS_IOU for v2.
    nms_iou: float | None = None
    # Arch v2, IoU-aware score (PP-YOLO's IoU branch, VarifocalNet's IoU-aware score): a 1-channel branch learns
    # the IoU of each core cell's own box with its person, and decode ranks cells by heatmap^(1-a) * IoU^a, so
    # the peak read is the cell whose box is good, not the Gaussian's (docs/BENCHMARKS.md, "Where the box is
    # lost"). a = this value; 0 = no branch (the graph and outputs of every earlier v2 model).
    iou_score: float = 0.0

    def nms_threshold(self) -> float:
        """The NMS IoU threshold decode uses (0 = no NMS)."""
        if self.nms_iou is not None:
            return self.nms_iou
        return V2_NMS_IOU if self.arch == "v2" else 0.0

    @field_validator("widths")
    @classmethod
    def _five_growing_widths(cls, widths: list[int]) -> list[int]:
        if len(widths) != 5 or any(w <= 0 for w in widths):
            raise ValueError(f"widths needs 5 positive channel counts (one per stage), got {widths}")
        if any(b < a for a, b in zip(widths, widths[1:])):
            raise ValueError(f"widths must not shrink from stage to stage, got {widths}")
        return widths

    @field_validator("depths")
    @classmethod
    def _five_depths(cls, depths: list[int]) -> list[int]:
        if len(depths) != 5 or any(d < 1 for d in depths):
            raise ValueError(f"depths needs 5 counts >= 1 (one per stage), got {depths}")
        return depths

    @field_validator("scene_size")
    @classmethod
    def _multiple_of_stride(cls, size: int) -> int:
        if size <= 0 or size % NETWORK_STRIDE:
            raise ValueError(f"scene_size must be a positive multiple of {NETWORK_STRIDE}, got {size}")
        return size

    @field_validator("neck_width", "head_width")
    @classmethod
    def _even_width(cls, width: int) -> int:
        if width <= 0 or width % 2:
            raise ValueError(f"must be a positive even channel count (CSP splits it in halves), got {width}")
        return width

    @field_validator("attr_window")
    @classmethod
    def _odd_window(cls, window: int) -> int:
        if window < 1 or window % 2 == 0:
            raise ValueError(f"must be a positive odd number of cells, got {window}")
        return window

    @field_validator("attr_dropout")
    @classmethod
    def _probability(cls, p: float) -> float:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"must be in [0, 1), got {p}")
        return p

    @field_validator("heatmap_prior")
    @classmethod
    def _open_probability(cls, p: float) -> float:
        if not 0.0 < p < 1.0:
            raise ValueError(f"must be in (0, 1), got {p}")
        return p

    @field_validator("iou_score")
    @classmethod
    def _iou_power(cls, power: float) -> float:
        if not 0.0 <= power <= 1.0:
            raise ValueError(f"must be in [0, 1] (0 = no IoU branch), got {power}")
        return power

    @field_validator("nms_iou")
    @classmethod
    def _iou(cls, iou: float | None) -> float | None:
        if iou is not None and not 0.0 <= iou <= 1.0:
            raise ValueError(f"must be in [0, 1] (0 = no NMS), got {iou}")
        return iou

    @model_validator(mode="after")
    def _iou_score_needs_v2(self) -> ModelConfig:
        if self.iou_score > 0 and self.arch != "v2":
            raise ValueError(f"iou_score {self.iou_score} needs arch v2 (a box at every cell to score), got "
                             f"arch {self.arch}")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        return load_config(cls, path)


def format_validation_error(error: ValidationError, where: str) -> str:
    """One line per problem: the dotted key, what is wrong, and the file it came from."""
    lines = [f"invalid configuration in {where}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{key}' (not a field of this config; check the spelling)")
        else:
            lines.append(f"  key '{key}': {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


def parse_config(cls: type[Cfg], data: Any, where: str) -> Cfg:
    """Validate a mapping into ``cls``, turning pydantic's error into a ConfigError naming ``where``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {where}: expected a mapping, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, where)) from None


def load_config(cls: type[Cfg], path: str | Path) -> Cfg:
    """Read a YAML file into a typed config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"configuration file {path} is not valid YAML: {error}") from None
    return parse_config(cls, data, str(path))
