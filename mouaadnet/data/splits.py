"""Deterministic, leak-free train/validation splits."""

from __future__ import annotations

import hashlib

from .types import Sample


def split_key(sample: Sample) -> str:
    """What decides the side: the identity when there is one (all its images together), else the image path."""
    return f"id:{sample.identity}" if sample.identity is not None else f"path:{sample.image_path}"


def _unit_hash(text: str) -> float:
    """A stable value in [0, 1) (Python's hash() is salted per process, so it is not used)."""
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val): each key goes to val when its seeded hash falls below val_fraction; order is kept."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split_samples: val_fraction must be in [0, 1), got {val_fraction}")
    train, val = [], []
    for sample in samples:
        side = val if _unit_hash(f"{seed}:{split_key(sample)}") < val_fraction else train
        side.append(sample)
    return train, val
