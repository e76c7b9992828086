"""Torch datasets over Samples and their collate functions; unreadable images are skipped and counted."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import CropAugment, SceneAugment
from .cache import ImageCache, decode_image
from .config import CropFramingConfig, PasteConfig
from .paste import paste_bodies
from .types import UNKNOWN, Sample


def load_image(sample: Sample) -> np.ndarray:
    """The sample's image as HxWx3 uint8 RGB (EXIF orientation applied); raises on unreadable files."""
    if sample.image is not None:
        return sample.image
    return decode_image(sample.image_path)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> float32 [3,H,W] in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class _SampleDataset(Dataset):
    """Shared loading with skip-on-error: a bad image is counted and the next index is served instead."""

    mode = "scene"

    def __init__(self, samples: list[Sample], seed: int, cache: ImageCache | None = None) -> None:
        wrong = [s.image_path for s in samples if s.mode != self.mode]
        if wrong:
            raise ValueError(
                f"{type(self).__name__} needs {self.mode} samples; got other modes, e.g. {wrong[0]}"
            )
        self.samples = list(samples)
        self.seed = seed
        self.cache = cache
        self.epoch = 0
        # path -> error text. With DataLoader workers each worker keeps its own copy (read it with num_workers=0).
        self.bad_samples: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (it is a function of seed, epoch and index, not of worker order)."""
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _load_one(self, sample: Sample) -> tuple[np.ndarray, float]:
        """(image, scale of the image against the sample's pixel coordinates)."""
        if self.cache is None or sample.image is not None:
            return load_image(sample), 1.0
        return self.cache.load(sample.image_path)

    def _load(self, index: int) -> tuple[int, np.ndarray, float]:
        """(index actually served, image, scale): tries index, index+1, ... until an image decodes."""
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            sample = self.samples[i]
            try:
                return i, *self._load_one(sample)
            except (
                Exception
            ) as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for bad files
                self.bad_samples[sample.image_path] = f"{type(err).__name__}: {err}"
        raise RuntimeError(f"{type(self).__name__}: none of the {len(self.samples)} images could be read")


class CropPool:
    """Random labelled crops for pasting (training scenes and the pasted validation set); unreadable ones are skipped."""

    def __init__(self, samples: list[Sample], cache: ImageCache | None) -> None:
        self.samples, self.cache = samples, cache

    def draw(self, count: int, rng: np.random.Generator) -> list[tuple[np.ndarray, float, float, int]]:
        bodies = []
        for index in rng.integers(0, len(self.samples), size=count):
            sample = self.samples[int(index)]
            try:
                image = self.cache.load(sample.image_path)[0] if self.cache else load_image(sample)
            except Exception:  # noqa: BLE001  a broken crop only means one pasted person fewer
                continue
            bodies.append((image, float(sample.gender[0]), float(sample.age[0]), int(sample.age_group[0])))
        return bodies


class SceneDataset(_SampleDataset):
    """Scene samples -> (image float32 [3,S,S], target dict with boxes [K,4] and per-row attributes)."""

    mode = "scene"

    def __init__(
        self,
        samples: list[Sample],
        size: int = 320,
        augment: bool = True,
        seed: int = 0,
        cache: ImageCache | None = None,
        paste: PasteConfig | None = None,
        bodies: Sequence[Sample] = (),
        zoom: tuple[float, float] = (0.6, 1.4),
        mosaic: float = 0.0,
    ) -> None:
        """``bodies``: labelled crops (the training split only) pasted into augmented scenes as ``paste`` says;
        ``zoom``: the scale range of the random crop; ``mosaic``: share of labelled scenes served as a mosaic."""
        super().__init__(samples, seed, cache)
        self.size = size
        self.transform = SceneAugment(size, seed=seed, enabled=augment, scale_range=tuple(zoom))
        self.paste = paste if augment and paste is not None and bodies else None
        self.paste_pool = CropPool(list(bodies), cache) if self.paste else None
        self.mosaic = mosaic if augment else 0.0
        self.labelled = np.flatnonzero([s.has_boxes for s in samples]) if self.mosaic else np.empty(0, np.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        i, image, scale = self._load(index)
        sample = self.samples[i]
        rng = self._rng(i)
        if self.mosaic and sample.has_boxes and rng.random() < self.mosaic:
            out, boxes, gender, age, group = self._mosaic(i, image, scale, rng)
        else:
            out, boxes, keep = self.transform(image, sample.boxes * np.float32(scale), rng=rng)
            gender, age, group = sample.gender[keep], sample.age[keep], sample.age_group[keep]
        if self.paste is not None and sample.has_boxes and rng.random() < self.paste.probability:
            bodies = self.paste_pool.draw(int(rng.integers(1, self.paste.max_per_image + 1)), rng)
            people = paste_bodies(out, boxes, bodies, rng, tuple(self.paste.height))
            out, boxes = people.image, people.boxes
            gender = np.concatenate([gender[people.keep], people.gender])
            age = np.concatenate([age[people.keep], people.age])
            group = np.concatenate([group[people.keep], people.age_group])
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, np.float32)),
            "gender": torch.from_numpy(gender.astype(np.float32)),
            "age": torch.from_numpy(age.astype(np.float32)),
            "age_group": torch.from_numpy(group.astype(np.int64)),
            "has_boxes": bool(sample.has_boxes),
            "index": i,
            "path": sample.image_path,
        }
        return _to_tensor(out), target


    def _mosaic(self, i: int, image: np.ndarray, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Scene ``i`` and three other labelled scenes as one mosaic: (image, boxes, gender, age, age group)."""
        picks = [(i, image, scale)] + [self._load(int(j)) for j in rng.choice(self.labelled, 3)]
        tiles = [(img, self.samples[k].boxes * np.float32(sc)) for k, img, sc in picks]
        out, boxes, keeps = self.transform.mosaic(tiles, rng)
        rows = [(self.samples[k], keep) for (k, _, _), keep in zip(picks, keeps, strict=True)]
        gender, age, group = (np.concatenate([getattr(s, name)[keep] for s, keep in rows])
                              for name in ("gender", "age", "age_group"))
        return out, boxes, gender, age, group


class CropDataset(_SampleDataset):
    """Crop samples -> (image float32 [3,S,S], target dict with scalar gender, age, age_group)."""

    mode = "crop"

    def __init__(
        self,
        samples: list[Sample],
        size: int = 112,
        augment: bool = True,
        seed: int = 0,
        cache: ImageCache | None = None,
        framing: CropFramingConfig | None = None,
    ) -> None:
        super().__init__(samples, seed, cache)
        self.size = size
        framing = framing or CropFramingConfig()
        self.transform = CropAugment(size, seed=seed, enabled=augment, zoom=tuple(framing.zoom),
                                     aspect=tuple(framing.aspect), shift=framing.shift)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        i, image, _ = self._load(index)
        sample = self.samples[i]
        out = self.transform(image, rng=self._rng(i))
        target = {
            "gender": float(sample.gender[0]) if sample.num_rows else float(UNKNOWN),
            "age": float(sample.age[0]) if sample.num_rows else float(UNKNOWN),
            "age_group": int(sample.age_group[0]) if sample.num_rows else UNKNOWN,
            "teacher_gender": sample.teacher_p_female,  # UNKNOWN unless the source distils (mouaadnet.data.teacher)
            "teacher_age": sample.teacher_age,
            "index": i,
            "path": sample.image_path,
        }
        return _to_tensor(out), target


def collate_scene(items: list[tuple[torch.Tensor, dict]]) -> dict:
    """Stack scene items; per-person rows are zero/UNKNOWN-padded to M = max rows (>= 1) with a box_mask."""
    n = len(items)
    m = max(1, max(len(t["boxes"]) for _, t in items))
    boxes = torch.zeros((n, m, 4), dtype=torch.float32)
    mask = torch.zeros((n, m), dtype=torch.bool)
    gender = torch.full((n, m), float(UNKNOWN), dtype=torch.float32)
    age = torch.full((n, m), float(UNKNOWN), dtype=torch.float32)
    age_group = torch.full((n, m), UNKNOWN, dtype=torch.int64)
    for row, (_, t) in enumerate(items):
        k = len(t["boxes"])
        boxes[row, :k] = t["boxes"]
        mask[row, :k] = True
        gender[row, :k] = t["gender"]
        age[row, :k] = t["age"]
        age_group[row, :k] = t["age_group"]
    return {
        "images": torch.stack([img for img, _ in items]),
        "boxes": boxes,
        "box_mask": mask,
        "gender": gender,
        "age": age,
        "age_group": age_group,
        "has_boxes": torch.tensor([bool(t["has_boxes"]) for _, t in items], dtype=torch.bool),
        "paths": [t["path"] for _, t in items],
    }


def collate_crop(items: list[tuple[torch.Tensor, dict]]) -> dict:
    """Stack crop items: images [N,3,S,S], gender/age float32 [N], age_group int64 [N] (-1 = unknown), the
    teacher's P(female) and age float32 [N] (-1 = none)."""
    return {
        "images": torch.stack([img for img, _ in items]),
        "gender": torch.tensor([t["gender"] for _, t in items], dtype=torch.float32),
        "age": torch.tensor([t["age"] for _, t in items], dtype=torch.float32),
        "age_group": torch.tensor([t["age_group"] for _, t in items], dtype=torch.int64),
        "teacher_gender": torch.tensor([t.get("teacher_gender", UNKNOWN) for _, t in items], dtype=torch.float32),
        "teacher_age": torch.tensor([t.get("teacher_age", UNKNOWN) for _, t in items], dtype=torch.float32),
        "paths": [t["path"] for _, t in items],
    }
