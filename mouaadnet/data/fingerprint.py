"""Data fingerprints: which exact data a run saw (DVC md5 when tracked, else a hash of names and sizes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml


def _dvc_md5(path: Path) -> str | None:
    """The md5 that a `<path>.dvc` file (or the root data.dvc of a parent folder) pins, if any."""
    for candidate in [path.with_name(path.name + ".dvc"), *[p.with_name(p.name + ".dvc") for p in path.parents if p.name]]:
        if candidate.is_file():
            try:
                outs = yaml.safe_load(candidate.read_text()).get("outs", [])
                return f"dvc:{outs[0]['md5']}" if outs else None
            except (yaml.YAMLError, AttributeError, KeyError, IndexError, TypeError):
                return None
    return None


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(f"{file.relative_to(path.parent)}\0{file.stat().st_size}\n".encode())
    return digest.hexdigest()


def source_fingerprint(spec: str) -> str:
    """Fingerprint of one source spec; generated sources are identified by their spec (deterministic)."""
    path = Path(spec)
    if not path.exists():
        return f"spec:{spec}"
    return _dvc_md5(path.resolve()) or _tree_digest(path.resolve())


def data_fingerprint(specs: list[str]) -> str:
    """One short hash over every source a run reads."""
    digest = hashlib.sha256()
    for spec in sorted(specs):
        digest.update(f"{spec}={source_fingerprint(spec)}\n".encode())
    return digest.hexdigest()[:16]
