"""Open a data source from a spec string, detecting its format from the path."""

from __future__ import annotations

import os
from pathlib import Path

from .crop_readers import read_peta, read_utkface
from .fairface import is_fairface_csv, read_fairface
from .readers import ReadResult
from .scene_readers import read_coco_json, read_yolo
from .synthetic import synthetic_crops, synthetic_scenes

FORMATS_HELP = (
    "a dir with images/ and labels/ (YOLO), a .json file (COCO), a dir of *.chip.jpg (UTKFace), "
    "a dir with labels.csv (PETA, or FairFace: file,age,gender,race), a dir of such YOLO dirs, or synthetic:N[:SEED] / synthetic-crops:N[:SEED]"
)


def _parse_synthetic(spec: str) -> tuple[int, int]:
    """(n, seed) of 'synthetic:N[:SEED]'."""
    parts = spec.split(":")
    try:
        n = int(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else 0
    except (IndexError, ValueError):
        raise ValueError(f"data source {spec!r}: expected synthetic:N[:SEED] with integers") from None
    if len(parts) > 3 or n < 1:
        raise ValueError(f"data source {spec!r}: expected synthetic:N[:SEED] with N >= 1 (N is the number of "
                         "samples)")
    return n, seed


def _is_yolo(path: Path) -> bool:
    return (path / "images").is_dir() and (path / "labels").is_dir()


def _has_utk_chips(path: Path) -> bool:
    """True when the dir holds *.chip.jpg files; stops at the first one (23k-file dirs)."""
    with os.scandir(path) as entries:
        return any(e.name.endswith(".chip.jpg") for e in entries)


def detect_format(path: Path) -> str:
    """'yolo', 'coco', 'utkface', 'peta', 'fairface' or 'yolo_tree' for a path; raises ValueError if none fits."""
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    if not path.is_dir():
        raise ValueError(f"data source {str(path)!r} does not exist or is not a directory/.json file")
    if _is_yolo(path):
        return "yolo"
    if (path / "labels.csv").is_file():
        return "fairface" if is_fairface_csv(path / "labels.csv") else "peta"
    if _has_utk_chips(path):
        return "utkface"
    if any(_is_yolo(p) for p in path.iterdir() if p.is_dir()):
        return "yolo_tree"
    raise ValueError(f"data source {str(path)!r}: unknown format; expected {FORMATS_HELP}")


def check_source_spec(spec: str) -> str:
    """'synthetic' / 'synthetic-crops' or the detected format of a path; ValueError naming the spec otherwise.
    Cheap (no file is read beyond a directory listing): for command-line checks before any work starts."""
    if spec.startswith(("synthetic:", "synthetic-crops:")):
        _parse_synthetic(spec)
        return spec.split(":")[0]
    return detect_format(Path(spec).expanduser())


def load_source(spec: str) -> ReadResult:
    """Read a source given as a path or 'synthetic:N[:SEED]' (in-memory scenes)."""
    if spec.startswith("synthetic:"):
        n, seed = _parse_synthetic(spec)
        return ReadResult(synthetic_scenes(n, seed), [])
    if spec.startswith("synthetic-crops:"):
        n, seed = _parse_synthetic(spec)
        return ReadResult(synthetic_crops(n, seed), [])
    path = Path(spec).expanduser()
    kind = detect_format(path)
    if kind == "coco":
        return read_coco_json(path)
    if kind == "yolo":
        return read_yolo(path)
    if kind == "peta":
        return read_peta(path)
    if kind == "fairface":
        return read_fairface(path)
    if kind == "utkface":
        return read_utkface(path)
    # A folder of YOLO folders (e.g. coco_person/{train,val}): read each, sources named by sub-folder.
    result = ReadResult()
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and _is_yolo(p)):
        result.extend(read_yolo(sub))
    return result
