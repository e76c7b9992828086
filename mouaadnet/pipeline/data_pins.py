"""Pinned digests of the data folders a training config reads outside the DVC-tracked dataset (../shared/data).

The images stay where they are (their licences forbid copying them into the repository); what the repository
holds is DVC's md5 of each folder, in a small file next to the config (``configs/real.pins.yaml`` for
``configs/real.yaml``), written by ``mouaadnet data pin --config CONFIG``. The pipeline's train step re-hashes
every folder before it trains, refuses one whose digest moved (naming the source, the pinned and the found
digest) and records each digest as an MLflow dataset input of the train run.

The digest is the one ``dvc add FOLDER`` writes into FOLDER.dvc: the md5 of the JSON list of
``{"md5": <file md5>, "relpath": <posix path>}`` sorted by path (``json.dumps(..., sort_keys=True)``), plus
``.dir``. Sources under ``data/`` (data.dvc, verified by prepare_data) and generated ones (``synthetic:``) are
not pinned here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from mouaadnet.data.assembly import source_name
from mouaadnet.pipeline.dvc_data import md5_file
from mouaadnet.pipeline.params import DATA_PREFIX, PipelineStepError

PINS_SUFFIX = ".pins.yaml"


class DataPinError(PipelineStepError):
    """A source is not pinned, or its content no longer matches its pinned digest."""


@dataclass(frozen=True)
class Digest:
    md5: str  # "<hex>.dir", as in a .dvc file
    size: int
    nfiles: int


def folder_digest(folder: str | os.PathLike) -> Digest:
    """DVC's md5 of a folder (what `dvc add` pins), from the md5 of every file in it."""
    root = Path(folder)
    if not root.is_dir():
        raise DataPinError(f"data folder {root} does not exist")
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    entries = [{"md5": md5_file(path), "relpath": rel} for rel, path in files]
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    md5 = hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"
    return Digest(md5, sum(path.stat().st_size for _, path in files), len(files))


def pins_path(config: str | os.PathLike) -> Path:
    """configs/real.yaml -> configs/real.pins.yaml."""
    config = Path(config)
    return config.with_name(config.name.removesuffix(config.suffix) + PINS_SUFFIX)


def pinned_specs(cfg) -> list[str]:
    """Every source spec (training and separate validation) of a TrainConfig that needs a pin."""
    specs = [spec for s in [*cfg.data.scene, *cfg.data.crop] for spec in (s.path, s.val) if spec]
    return list(dict.fromkeys(s for s in specs if not s.startswith(DATA_PREFIX) and not s.startswith("synthetic")))


def _folder(spec: str) -> Path:
    """The folder a source spec reads: the spec itself, or the folder of a file spec (COCO annotations.json)."""
    path = Path(spec)
    return path.parent if path.is_file() else path


def write_pins(config: str | os.PathLike, echo=print) -> Path:
    """Hash every folder the config reads outside data/ and write the pins file next to it."""
    from mouaadnet.pipeline.params import train_config

    config = Path(config)
    cfg = train_config(config.read_text(encoding="utf-8"))
    sources: dict[str, Any] = {}
    for spec in pinned_specs(cfg):
        digest = folder_digest(_folder(spec))
        echo(f"{spec}: {digest.md5} ({digest.nfiles} files, {digest.size / 1e6:.1f} MB)")
        sources[spec] = asdict(digest)
    out = pins_path(config)
    header = (f"# DVC md5 of every folder {config.name} reads outside data/ (`dvc add` would pin the same).\n"
              f"# Written by `mouaadnet data pin --config {config}`; a pipeline run refuses a folder whose digest "
              "moved.\n")
    out.write_text(header + yaml.safe_dump({"config": config.name, "sources": sources}, sort_keys=False))
    return out


def read_pins(text: str) -> dict[str, Digest]:
    """spec -> pinned Digest, from a pins file's text ("" = nothing pinned)."""
    if not text.strip():
        return {}
    try:
        sources = (yaml.safe_load(text) or {}).get("sources") or {}
        return {spec: Digest(str(d["md5"]), int(d["size"]), int(d["nfiles"])) for spec, d in sources.items()}
    except (yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError) as error:
        raise DataPinError(f"the data pins are not a valid pins file: {error!r}") from None


def verify_sources(cfg, pins_text: str) -> list[tuple[str, str, str]]:
    """Re-hash every pinned source of ``cfg``; raise DataPinError on an unpinned or changed one. Returns the
    MLflow dataset inputs (name, md5, folder) of the sources, in config order."""
    pins = read_pins(pins_text)
    inputs = []
    for spec in pinned_specs(cfg):
        if spec not in pins:
            raise DataPinError(f"data source {spec} is not pinned: run `mouaadnet data pin --config CONFIG` and "
                               "commit the pins file next to the config")
        found, pinned = folder_digest(_folder(spec)), pins[spec]
        if found.md5 != pinned.md5:
            raise DataPinError(
                f"data source {spec} changed since it was pinned: pinned {pinned.md5} ({pinned.nfiles} files, "
                f"{pinned.size} bytes), found {found.md5} ({found.nfiles} files, {found.size} bytes). If the change "
                "is deliberate, re-pin it (`mouaadnet data pin --config CONFIG`) and commit the pins file")
        is_val = any(s.val == spec and s.path != spec for s in [*cfg.data.scene, *cfg.data.crop])
        inputs.append((source_name(spec) + ("/val" if is_val else ""), found.md5, str(_folder(spec).resolve())))
    return inputs
