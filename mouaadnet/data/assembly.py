"""Data assembly: a DataConfig's sources read into training samples (with sampling weights) and named validation
sets; reading one source is ``mouaadnet.data.sources``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DataConfig, SourceConfig
from .fingerprint import data_fingerprint, source_fingerprint
from .readers import ReadResult
from .sources import detect_format, load_source
from .splits import split_samples
from .types import EvalSet, Sample

SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


@dataclass
class ModeData:
    samples: list[Sample] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # per-sample sampling probability (sums to 1)


@dataclass
class TrainingData:
    scene: ModeData
    crop: ModeData
    eval_sets: list[EvalSet]
    problem_counts: dict[str, int]  # source -> labels/images the readers skipped or fixed
    fingerprint: str
    paste_bodies: list[Sample] = field(default_factory=list)  # training crops of paste_into_scenes sources


def source_name(spec: str) -> str:
    """Short readable name of a source spec (used in metric names)."""
    if ":" in spec and not Path(spec).exists():
        return spec.split(":")[0]
    path = Path(spec)
    if path.suffix == ".json":
        path = path.parent
    # coco_person/train -> coco_person: a split folder's name says nothing about the dataset
    return path.parent.name if path.name in SPLIT_NAMES and path.parent.name else path.name


def sources_by_mode(specs: list[str]) -> tuple[list[str], list[str]]:
    """Split source specs (`--data`) into scene and crop sources by the format the reader detects."""
    scene, crop = [], []
    for spec in specs:
        if spec.startswith("synthetic-crops:"):
            crop.append(spec)
        elif spec.startswith("synthetic:"):
            scene.append(spec)
        else:
            (crop if detect_format(Path(spec)) in ("utkface", "peta", "fairface") else scene).append(spec)
    return scene, crop


def dataset_inputs(cfg: DataConfig) -> list[tuple[str, str, str]]:
    """(name, digest, source) of each training source, for MLflow dataset inputs: the digest is the DVC md5 when
    the source is DVC-tracked, else a hash of its files' names and sizes (or of the spec, for generated data)."""
    inputs = []
    for source in [*cfg.scene, *cfg.crop]:
        fingerprint = source_fingerprint(source.path)
        if fingerprint.startswith("spec:"):  # generated: the spec is the data
            digest, where = hashlib.sha256(source.path.encode()).hexdigest()[:16], source.path
        else:
            digest, where = fingerprint.removeprefix("dvc:")[:36], str(Path(source.path).resolve())
        inputs.append((source_name(source.path), digest, where))
    return inputs


def _subsample(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    if limit is None or len(samples) <= limit:
        return samples
    order = np.random.default_rng(seed).permutation(len(samples))[:limit]
    return [samples[i] for i in sorted(order)]


def _read(spec: str) -> ReadResult:
    result = load_source(spec)
    if not result.samples:
        raise ValueError(f"data source {spec} has no usable samples ({len(result.problems)} problems)")
    return result


def _split_source(source: SourceConfig, seed: int, cap_val: bool = True) -> tuple[list[Sample], list[Sample], int]:
    result = _read(source.path)
    problems = sum(not p.is_info for p in result.problems)
    if source.val:
        val_result = _read(source.val)
        train, val = result.samples, val_result.samples
        problems += sum(not p.is_info for p in val_result.problems)
    else:
        train, val = split_samples(result.samples, source.val_fraction, seed)
    val = _subsample(val, source.max_val, seed) if cap_val else val
    return _subsample(train, source.max_samples, seed), val, problems


def training_split(source: SourceConfig, seed: int) -> list[Sample]:
    """The training samples of one source, as training reads them (the same identity split and cap)."""
    return _split_source(source, seed)[0]


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name}{i}", i + 1
    taken.add(candidate)
    return candidate


def load_training_data(cfg: DataConfig, seed: int) -> TrainingData:
    """Read every source once; split train/val by identity; weight sources by their configured ratio."""
    modes = {"scene": ModeData(), "crop": ModeData()}
    eval_sets: list[EvalSet] = []
    problem_counts: dict[str, int] = {}
    names: set[str] = set()
    paste_bodies: list[Sample] = []
    for mode, sources in (("scene", cfg.scene), ("crop", cfg.crop)):
        total_weight = sum(s.weight for s in sources)
        for source in sources:
            train, val, problems = _split_source(source, seed)
            problem_counts[source.path] = problems
            if source.distill:
                if mode != "crop":
                    raise ValueError(f"distill: {source.path} is a scene source; only face crop sources distil")
                from .teacher import attach_teacher

                attach_teacher(train, source.path)
            share = source.weight / total_weight
            modes[mode].samples += train
            if source.paste_into_scenes and mode == "crop":
                paste_bodies += train  # the training split only: validation crops never enter a scene
            modes[mode].weights += [share / len(train)] * len(train) if train else []
            if val:
                eval_sets.append(EvalSet(_unique(source_name(source.path), names), mode, val))
    specs = [s.path for s in cfg.scene + cfg.crop] + [s.val for s in cfg.scene + cfg.crop if s.val]
    return TrainingData(modes["scene"], modes["crop"], eval_sets, problem_counts, data_fingerprint(specs),
                        paste_bodies)


def validation_splits(cfg: DataConfig, seed: int, whole: bool = True) -> list[tuple[SourceConfig, EvalSet]]:
    """Each source with a validation split and its named set (what ``load_validation_sets`` returns)."""
    splits: list[tuple[SourceConfig, EvalSet]] = []
    names: set[str] = set()
    for mode, sources in (("scene", cfg.scene), ("crop", cfg.crop)):
        for source in sources:
            _, val, _ = _split_source(source, seed, cap_val=not whole)
            if val:
                splits.append((source, EvalSet(_unique(source_name(source.path), names), mode, val)))
    return splits


def load_validation_sets(cfg: DataConfig, seed: int, whole: bool = True) -> list[EvalSet]:
    """The validation sets of a training config: the same identity split as training, every sample of it when
    ``whole`` (per-epoch validation reads at most ``max_val`` of each)."""
    return [eval_set for _, eval_set in validation_splits(cfg, seed, whole)]
