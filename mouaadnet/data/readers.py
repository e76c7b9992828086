"""What every lenient reader shares: each returns samples plus a list of problems found (``ReadResult``); the
formats are read in ``scene_readers`` (YOLO, COCO), ``crop_readers`` (UTKFace, PETA) and ``fairface``."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .types import AGE_GROUP_RANGES, AGE_GROUPS, UNKNOWN, Sample

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PERSON_CLASS = 0
# A box may stick out of the image by rounding noise (normalised labels with 6 decimals) without being reported.
CLIP_TOLERANCE_PX = 1.0
MIN_BOX_PX = 1.0  # narrower boxes are annotation slips (a click, not a drag)
# Problem kinds that only inform (the sample is still usable exactly as the data set intends).
INFO_KINDS = frozenset({"age_out_of_range", "nonstandard_name"})

_EXIF_ORIENTATION = 0x0112


@dataclass
class Problem:
    """One issue found while reading a source, located by file and (1-based) line when it has one."""

    path: str
    line: int | None
    kind: str
    message: str

    @property
    def is_info(self) -> bool:
        return self.kind in INFO_KINDS

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


@dataclass
class ReadResult:
    """Samples read from a source and the problems met on the way."""

    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def extend(self, other: ReadResult) -> None:
        """Append another result's samples and problems."""
        self.samples.extend(other.samples)
        self.problems.extend(other.problems)


def age_to_group(age: float) -> int:
    """Index in AGE_GROUPS of an age in years, or UNKNOWN for a negative age."""
    if age < 0:
        return UNKNOWN
    for index, (_, high) in enumerate(AGE_GROUP_RANGES):
        if age <= high:
            return index
    return len(AGE_GROUPS) - 1


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as displayed: parses the header only and honours EXIF rotation like the loader does."""
    with Image.open(path) as img:
        width, height = img.size
        # Orientations 5-8 rotate by 90 degrees; the training loader applies exif_transpose, so labels refer to that.
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation in (5, 6, 7, 8):
        return height, width
    return width, height


def source_name(root: str | os.PathLike, kind: str) -> str:
    """Short source name like 'yolo:street_person' or 'yolo:coco_person/train'."""
    path = Path(root).resolve()
    name = path.stem if path.is_file() else path.name
    if name in ("train", "val", "valid", "test", "images", "annotations") and path.parent.name:
        name = f"{path.parent.name}/{name}"
    return f"{kind}:{name}"


def require_dir(root: str | os.PathLike, what: str) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"{what}: directory {path} does not exist")
    return path.resolve()


def checked_box(
    raw: tuple[float, float, float, float],
    width: int,
    height: int,
    where: str,
    line: int | None,
    result: ReadResult,
) -> np.ndarray | None:
    """The x1,y1,x2,y2 box clipped to the image, or None when it is degenerate or fully outside (recorded)."""
    x1, y1, x2, y2 = raw
    if x2 - x1 < MIN_BOX_PX or y2 - y1 < MIN_BOX_PX:
        result.problems.append(
            Problem(
                where,
                line,
                "degenerate_box",
                f"box {x2 - x1:.2f}x{y2 - y1:.2f} px is under {MIN_BOX_PX} px, dropped",
            )
        )
        return None
    box = np.clip(np.array(raw, np.float32), 0, [width, height, width, height]).astype(np.float32)
    if box[2] - box[0] < MIN_BOX_PX or box[3] - box[1] < MIN_BOX_PX:
        result.problems.append(
            Problem(where, line, "box_outside_image", f"box outside the {width}x{height} image, dropped")
        )
        return None
    tol = CLIP_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        result.problems.append(
            Problem(
                where, line, "box_outside_image", f"box partly outside the {width}x{height} image, clipped"
            )
        )
    return box


def scene_sample(
    path: Path, source: str, boxes: list[np.ndarray], attrs: list[tuple[float, float]]
) -> Sample:
    """A scene sample with one row per box; attrs holds (gender, age) per row."""
    n = len(boxes)
    ages = np.array([a for _, a in attrs], np.float32) if n else np.zeros((0,), np.float32)
    return Sample(
        image_path=str(path),
        mode="scene",
        source=source,
        boxes=np.stack(boxes).astype(np.float32) if n else np.zeros((0, 4), np.float32),
        gender=np.array([g for g, _ in attrs], np.float32) if n else np.zeros((0,), np.float32),
        age=ages,
        age_group=np.array([age_to_group(a) for a in ages], np.int64),
        has_boxes=True,
    )


def parse_gender(value: object) -> float:
    """'male' -> 0, 'female' -> 1, missing -> UNKNOWN; raises ValueError otherwise."""
    if value is None or value == "":
        return float(UNKNOWN)
    if isinstance(value, str) and value.lower() in ("male", "female"):
        return 1.0 if value.lower() == "female" else 0.0
    raise ValueError(f"gender {value!r} is not 'male' or 'female'")


def crop_sample(
    path: str, source: str, gender: float, age: float, age_group: int, identity: str | None
) -> Sample:
    return Sample(
        image_path=path,
        mode="crop",
        source=source,
        gender=np.array([gender], np.float32),
        age=np.array([age], np.float32),
        age_group=np.array([age_group], np.int64),
        identity=identity,
    )


def read_labels_csv(root: str | os.PathLike, kind: str, columns: tuple[str, ...], read_row,
                    source: str | None = None) -> ReadResult:
    """Read root/labels.csv, one sample per row through ``read_row(row, csv_path, line, root, source, result)``
    (None for an unusable row, recorded there); a missing file or column is an error naming it."""
    root = require_dir(root, f"{kind} source")
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise ValueError(f"{kind} source {root}: labels.csv not found")
    source = source or source_name(root, kind.lower())
    result = ReadResult()
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{kind} source {csv_path}: missing required columns {missing}")
        for row in reader:
            sample = read_row(row, csv_path, reader.line_num, root, source, result)
            if sample is not None:
                result.samples.append(sample)
    return result


def row_image_and_gender(row: dict, columns: tuple[str, ...], csv_path: Path, line: int, root: Path,
                         result: ReadResult) -> tuple[Path, float] | None:
    """The image path and gender of one labels.csv row (UNKNOWN gender when unreadable, recorded), or None when the
    row is malformed or its image is missing (recorded): what the crop datasets' rows share."""
    if None in row or any(row[c] is None for c in columns):
        result.problems.append(Problem(str(csv_path), line, "malformed_label", "wrong number of fields"))
        return None
    file_name = row["file"].strip()
    if not file_name:
        result.problems.append(Problem(str(csv_path), line, "malformed_label", "empty 'file' field"))
        return None
    path = root / file_name
    if not path.is_file():
        result.problems.append(Problem(str(csv_path), line, "missing_image", f"image {file_name!r} does not exist"))
        return None
    try:
        return path, parse_gender(row["gender"].strip())
    except ValueError as err:
        result.problems.append(Problem(str(csv_path), line, "malformed_label", str(err)))
        return path, float(UNKNOWN)
