"""Where the export's real images come from (ONNX Runtime parity checks, the reparameterization check and INT8
calibration): image files, data-source specs, a dataset folder's validation images, a training config's training
split, or random inputs when none is given. Each source hands out float32 [N,3,S,S] letterboxed as for serving."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageSourceError(ValueError):
    """A source that has no usable images (of the mode asked for)."""


class ImageSource(Protocol):
    def take(self, mode: str, size: int, count: int) -> tuple[torch.Tensor, int]:
        """Up to ``count`` images of ``mode`` at ``size``, and how many of them are real images."""


def image_paths(source: Path) -> list[Path]:
    """The image files of a folder (recursive, sorted), the lines of a .txt list, or the one file given."""
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.suffix == ".txt":
        paths = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
    else:
        paths = [source]
    if not paths:
        raise ImageSourceError(f"no images found in {source}")
    return paths


@dataclass
class FileImages:
    """Image files (``image_paths``): the first ``count`` of them, listed when the source is made."""

    source: Path
    paths: list[Path] = field(init=False)

    def __post_init__(self) -> None:
        self.paths = image_paths(Path(self.source))

    def take(self, mode: str, size: int, count: int) -> tuple[torch.Tensor, int]:
        from mouaadnet.data.letterbox import load_images

        paths = self.paths[:count]
        return load_images(paths, size), len(paths)


class RandomImages:
    """Seeded random inputs (at most 4) where no real images were given: the checks still run, on noise."""

    def take(self, mode: str, size: int, count: int) -> tuple[torch.Tensor, int]:
        return torch.rand(min(count, 4), 3, size, size, generator=torch.Generator().manual_seed(0)), 0


@dataclass
class SpecImages:
    """Images of the mode asked for from data source specs (``synthetic:64:0``, a YOLO dir, ...), preprocessed as
    for evaluation, drawn evenly across the sources' samples with a fixed seed."""

    specs: list[str]
    seed: int = 0

    def take(self, mode: str, size: int, count: int) -> tuple[torch.Tensor, int]:
        try:
            images = dataset_images(self.specs, mode, size, count, self.seed)
        except ValueError as error:
            raise ImageSourceError(str(error)) from None
        return images, len(images)


@dataclass
class DatasetImages:
    """A dataset folder's validation images (``val/images/``; any image in it when there is none), sorted."""

    dataset_dir: Path

    def take(self, mode: str, size: int, count: int) -> tuple[torch.Tensor, int]:
        from mouaadnet.data.letterbox import load_images

        root = Path(self.dataset_dir)
        images = sorted(p for p in root.glob("val/images/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not images:
            images = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        return load_images(images[:count], size), len(images[:count])


@dataclass
class TrainingImages:
    """Images of the mode asked for from a training config's training split (never its validation split, which
    the gates then measure); the split is read once."""

    config: Path
    seed: int = 0
    _data: object = field(default=None, init=False, repr=False)

    def take(self, mode: str, size: int, count: int) -> tuple[torch.Tensor, int]:
        from mouaadnet.data.assembly import load_training_data
        from mouaadnet.training.config import TrainConfig

        if self._data is None:
            cfg = TrainConfig.from_yaml(self.config)
            self._data = load_training_data(cfg.data, cfg.seed)
        samples = getattr(self._data, mode).samples
        if not samples:
            raise ImageSourceError(f"{self.config} has no {mode}-mode training samples to calibrate INT8 with")
        return _draw(samples, mode, size, count, self.seed), min(count, len(samples))


def dataset_images(specs: list[str], mode: str, size: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` images of ``mode`` from data source specs, preprocessed exactly as for evaluation (letterbox,
    RGB/255, no augmentation): float32 [N,3,size,size]. Sources of the other mode are ignored; images are drawn
    evenly across the sources' samples with a fixed seed."""
    from mouaadnet.data.assembly import sources_by_mode
    from mouaadnet.data.sources import load_source

    scene, crop = sources_by_mode(list(specs))
    samples = [s for spec in (scene if mode == "scene" else crop) for s in load_source(spec).samples]
    if not samples:
        raise ValueError(f"no {mode}-mode samples in {specs}")
    return _draw(samples, mode, size, count, seed)


def _draw(samples: list, mode: str, size: int, count: int, seed: int) -> torch.Tensor:
    """``count`` samples picked with a fixed seed, letterboxed without augmentation (kept in dataset order)."""
    from mouaadnet.data.dataset import CropDataset, SceneDataset

    dataset = (SceneDataset if mode == "scene" else CropDataset)(samples, size, augment=False)
    order = np.random.default_rng(seed).permutation(len(samples))[:count]
    return torch.stack([dataset[int(i)][0] for i in sorted(order)])
