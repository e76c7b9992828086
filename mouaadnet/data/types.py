"""The one sample format every reader yields, with explicit label masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from model.config import (  # noqa: F401  (re-exported for the readers)
    AGE_GROUP_RANGES,
    AGE_GROUPS,
    FAIRFACE_AGE_BINS,
    FAIRFACE_AGE_RANGES,
    FAIRFACE_BIN_OFFSET,
    MAX_AGE,
)

UNKNOWN = -1  # value of a missing gender / age / age-group label

Mode = Literal["scene", "crop"]


@dataclass
class Sample:
    """One labelled image.

    Scene samples hold one row per person in ``boxes`` (x1, y1, x2, y2 in image pixels). Crop samples hold no
    boxes and exactly one row of attributes describing the whole image.
    Attribute arrays use ``UNKNOWN`` (-1) where a label is missing; the ``*_mask`` properties say which are real.
    """

    image_path: str
    mode: Mode
    source: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    gender: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))  # 1 female, 0 male
    age: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))  # years, 0..100
    age_group: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # index in model.config.AGE_RANGES
    has_boxes: bool = False  # the image's person boxes are labelled (an empty list then means "no person")
    identity: str | None = None  # person / camera id used for leak-free splits
    image: np.ndarray | None = None  # decoded HxWx3 uint8 RGB, only for in-memory (synthetic) samples
    # crops of a source with `distill: true`: the teacher's P(female) and age in years (mouaadnet.data.teacher);
    # UNKNOWN where there is none (no distillation, or the teacher failed on this face)
    teacher_p_female: float = float(UNKNOWN)
    teacher_age: float = float(UNKNOWN)

    @property
    def num_rows(self) -> int:
        return int(self.gender.shape[0])

    @property
    def gender_mask(self) -> np.ndarray:
        return self.gender >= 0

    @property
    def age_mask(self) -> np.ndarray:
        return self.age >= 0

    @property
    def age_group_mask(self) -> np.ndarray:
        return self.age_group >= 0


@dataclass
class EvalSet:
    """A named validation set of one mode (what evaluation measures a model on)."""

    name: str
    mode: Mode
    samples: list[Sample]
