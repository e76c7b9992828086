"""A deterministic validation set of labelled bodies pasted into real scenes (scene-mode gender/age).

No real scene set labels each person's gender and age, so training pastes labelled body crops into its scenes
(mouaadnet.data.paste). This set does the same with a training config's validation splits: its scene splits are
the backgrounds (their own people kept, attributes unknown) and its paste_into_scenes crop splits the bodies, so
runs trained with and without pasting can be compared on the same scenes (`mouaadnet evaluate --pasted N`).
"""

from __future__ import annotations

import numpy as np

from mouaadnet.data.augment import letterbox
from mouaadnet.data.config import PasteConfig, SourceConfig
from mouaadnet.data.dataset import CropPool, load_image
from mouaadnet.data.paste import paste_bodies
from mouaadnet.data.types import UNKNOWN, EvalSet, Sample


def pasted_scene(background: Sample, pool: CropPool, rng: np.random.Generator, size: int, max_per_image: int,
                 height: tuple[float, float]) -> Sample:
    """The background letterboxed to size x size with 1..max_per_image pool bodies pasted in (as in training)."""
    image, boxes, _, _ = letterbox(load_image(background), background.boxes, size)
    people = paste_bodies(image, boxes, pool.draw(int(rng.integers(1, max_per_image + 1)), rng), rng, height)
    unknown = np.full(len(people.keep), UNKNOWN)  # the scene's own people: no per-person labels to measure
    return Sample(
        image_path=f"pasted:{background.image_path}",
        mode="scene",
        source="pasted",
        boxes=people.boxes,
        gender=np.concatenate([unknown, people.gender]).astype(np.float32),
        age=np.concatenate([unknown, people.age]).astype(np.float32),
        age_group=np.concatenate([unknown, people.age_group]).astype(np.int64),
        has_boxes=True,
        image=people.image,
    )


def pasted_scenes(backgrounds: list[Sample], bodies: list[Sample], count: int, seed: int, size: int,
                  max_per_image: int = 3, height: tuple[float, float] = (0.25, 0.8)) -> list[Sample]:
    """``count`` pasted scenes over the box-labelled backgrounds in a seeded order (cycled); unreadable ones skipped."""
    backgrounds = [s for s in backgrounds if s.has_boxes]
    if not backgrounds or not bodies:
        raise ValueError(f"pasted validation set: needs box-labelled scenes and body crops, got {len(backgrounds)} "
                         f"and {len(bodies)}")
    order = np.random.default_rng(seed).permutation(len(backgrounds))
    pool = CropPool(bodies, None)
    scenes: list[Sample] = []
    unreadable: set[int] = set()
    step = 0
    while len(scenes) < count:
        index = int(order[step % len(order)])
        rng = np.random.default_rng([seed, step])  # a function of the step alone: the set does not depend on N
        step += 1
        if index in unreadable:
            continue
        try:
            scenes.append(pasted_scene(backgrounds[index], pool, rng, size, max_per_image, height))
        except Exception:  # noqa: BLE001  PIL raises many types for bad files; SceneDataset skips them too
            unreadable.add(index)
            if len(unreadable) == len(backgrounds):
                raise ValueError("pasted validation set: no background image could be read") from None
    return scenes


def pasted_eval_set(splits: list[tuple[SourceConfig, EvalSet]], paste: PasteConfig, count: int, seed: int,
                    size: int) -> EvalSet:
    """``pasted-<crop sets>``: scene validation splits as backgrounds, paste_into_scenes crop splits as bodies."""
    body_sets = [s for source, s in splits if s.mode == "crop" and source.paste_into_scenes]
    if not body_sets:
        raise ValueError("pasted validation set: the config has no crop source with paste_into_scenes: true "
                         "and a validation split")
    backgrounds = [sample for _, s in splits if s.mode == "scene" for sample in s.samples]
    bodies = [sample for s in body_sets for sample in s.samples]
    scenes = pasted_scenes(backgrounds, bodies, count, seed, size, paste.max_per_image, tuple(paste.height))
    return EvalSet("pasted-" + "-".join(s.name for s in body_sets), "scene", scenes)
