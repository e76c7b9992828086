"""Lenient readers for the supported label formats: each returns samples plus a list of problems found."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .types import AGE_GROUP_RANGES, AGE_GROUPS, MAX_AGE, UNKNOWN, Sample

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PERSON_CLASS = 0
# A box may stick out of the image by rounding noise (normalised labels with 6 decimals) without being reported.
CLIP_TOLERANCE_PX = 1.0
MIN_BOX_PX = 1.0  # narrower boxes are annotation slips (a click, not a drag)
# Problem kinds that only inform (the sample is still usable exactly as the data set intends).
INFO_KINDS = frozenset({"age_out_of_range", "nonstandard_name"})

_UTK_STRICT = re.compile(r"^(\d+)_([01])_(\d)_(\d+)\.jpg\.chip\.jpg$")
_UTK_LENIENT = re.compile(r"^(\d+)_(\d+)_")
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


def _require_dir(root: str | os.PathLike, what: str) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"{what}: directory {path} does not exist")
    return path.resolve()


def _checked_box(
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


def _scene_sample(
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


# ----------------------------------------------------------------------------------------------------- YOLO


def _parse_yolo_line(text: str) -> tuple[int, float, float, float, float]:
    """Parse 'cls cx cy w h'; raises ValueError with the reason."""
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(f"expected 5 fields 'cls cx cy w h', got {len(parts)}")
    try:
        values = [float(p) for p in parts]
    except ValueError as err:
        raise ValueError(f"non-numeric field: {err}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError("non-finite value")
    cls, cx, cy, w, h = values
    if cls != int(cls) or cls < 0:
        raise ValueError(f"class {parts[0]!r} is not a non-negative integer")
    if w <= 0 or h <= 0:
        raise ValueError(f"non-positive box size w={w} h={h}")
    return int(cls), cx, cy, w, h


def _read_yolo_labels(label_path: Path, width: int, height: int, result: ReadResult) -> list[np.ndarray]:
    """Person boxes (pixels, clipped) of one YOLO label file; problems go to result."""
    boxes = []
    text = label_path.read_text(encoding="utf-8", errors="replace")
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            cls, cx, cy, w, h = _parse_yolo_line(line)
        except ValueError as err:
            result.problems.append(
                Problem(str(label_path), line_no, "malformed_label", f"{err}: {line.strip()!r}")
            )
            continue
        if cls != PERSON_CLASS:
            continue
        raw = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        box = _checked_box(raw, width, height, str(label_path), line_no, result)
        if box is not None:
            boxes.append(box)
    return boxes


def read_yolo(root: str | os.PathLike, source: str | None = None) -> ReadResult:
    """Read root/images/* with root/labels/<stem>.txt (YOLO 'cls cx cy w h', normalised); keeps class 0 (person)."""
    root = _require_dir(root, "YOLO source")
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise ValueError(f"YOLO source {root}: needs both images/ and labels/ subdirectories")
    source = source or source_name(root, "yolo")
    result = ReadResult()
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    for image_path in images:
        label_path = labels_dir / f"{image_path.stem}.txt"
        if not label_path.is_file():
            result.problems.append(
                Problem(str(image_path), None, "missing_label_file", f"no label file {label_path.name}")
            )
            continue
        try:
            width, height = image_size(image_path)
        except Exception as err:  # PIL raises several types for broken files
            result.problems.append(
                Problem(str(image_path), None, "unreadable_image", f"cannot read image header: {err}")
            )
            continue
        boxes = _read_yolo_labels(label_path, width, height, result)
        attrs = [(float(UNKNOWN), float(UNKNOWN))] * len(boxes)
        result.samples.append(_scene_sample(image_path, source, boxes, attrs))
    if (root / "frames.csv").is_file():
        _set_frame_block_identities(result.samples, root / "frames.csv")
    stems = {p.stem for p in images}
    for label_path in sorted(labels_dir.glob("*.txt")):
        if label_path.stem not in stems:
            result.problems.append(
                Problem(str(label_path), None, "missing_image", "label file has no matching image")
            )
    return result


FRAME_BLOCK = 10  # consecutive frames of one camera and day that share a split side


def _set_frame_block_identities(samples: list[Sample], frames_csv: Path) -> None:
    """Video frames (frames.csv: file, camera, date) get identity camera_date_block.

    Neighbouring frames show the same people, so a split by image would leak; blocks of FRAME_BLOCK frames in
    name order go to one side together.
    """
    with open(frames_csv, newline="", encoding="utf-8", errors="replace") as handle:
        rows = {Path(r.get("file") or "").name: r for r in csv.DictReader(handle)}
    streams: dict[str, list[Sample]] = {}
    for sample in samples:
        row = rows.get(Path(sample.image_path).name)
        if row and row.get("camera") and row.get("date"):
            streams.setdefault(f"{row['camera']}_{row['date']}", []).append(sample)
    for stream, members in streams.items():
        for index, sample in enumerate(sorted(members, key=lambda s: s.image_path)):
            sample.identity = f"{stream}_{index // FRAME_BLOCK}"


# ----------------------------------------------------------------------------------------------------- COCO


def _parse_gender(value: object) -> float:
    """'male' -> 0, 'female' -> 1, missing -> UNKNOWN; raises ValueError otherwise."""
    if value is None or value == "":
        return float(UNKNOWN)
    if isinstance(value, str) and value.lower() in ("male", "female"):
        return 1.0 if value.lower() == "female" else 0.0
    raise ValueError(f"gender {value!r} is not 'male' or 'female'")


def _parse_coco_age(value: object, where: str, result: ReadResult) -> float:
    """Age in years clipped to MAX_AGE, UNKNOWN when missing or invalid (recorded)."""
    if value is None:
        return float(UNKNOWN)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        result.problems.append(
            Problem(where, None, "malformed_label", f"age {value!r} is not a non-negative number")
        )
        return float(UNKNOWN)
    if value > MAX_AGE:
        result.problems.append(Problem(where, None, "age_out_of_range", f"age {value} clipped to {MAX_AGE}"))
        return float(MAX_AGE)
    return float(value)


def _load_coco(json_path: Path) -> dict:
    if not json_path.is_file():
        raise ValueError(f"COCO source: file {json_path} does not exist")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"COCO source {json_path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"COCO source {json_path}: needs an 'images' list")
    if not isinstance(data.get("annotations", []), list) or not isinstance(data.get("categories", []), list):
        raise ValueError(f"COCO source {json_path}: 'annotations' and 'categories' must be lists")
    return data


def _coco_annotation(ann: object, where: str, result: ReadResult) -> tuple[int, tuple, float, float] | None:
    """(image_id, xyxy box, gender, age) of one person annotation, or None when unusable (recorded)."""
    try:
        image_id = ann["image_id"]
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError) as err:
        result.problems.append(Problem(where, None, "malformed_label", f"bad annotation ({err!r})"))
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        result.problems.append(Problem(where, None, "malformed_label", f"bad bbox {ann['bbox']}"))
        return None
    try:
        gender = _parse_gender(ann.get("gender"))
    except ValueError as err:
        result.problems.append(Problem(where, None, "malformed_label", str(err)))
        gender = float(UNKNOWN)
    age = _parse_coco_age(ann.get("age"), where, result)
    return image_id, (x, y, x + w, y + h), gender, age


def read_coco_json(
    json_path: str | os.PathLike, images_dir: str | os.PathLike | None = None, source: str | None = None
) -> ReadResult:
    """Read a COCO detection JSON (category 'person'; optional per-annotation 'gender' and 'age'); skips iscrowd."""
    json_path = Path(json_path).resolve()
    data = _load_coco(json_path)
    person_ids = {
        c.get("id") for c in data.get("categories", []) if isinstance(c, dict) and c.get("name") == "person"
    }
    if not person_ids:
        raise ValueError(f"COCO source {json_path}: no category named 'person'")
    if images_dir is None:
        images_dir = (
            json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent
        )
    images_dir = Path(images_dir).resolve()
    source = source or source_name(json_path.parent if json_path.stem == "annotations" else json_path, "coco")
    result = ReadResult()
    rows: dict[object, list] = {}
    for index, ann in enumerate(data.get("annotations", [])):
        where = f"{json_path}#annotations[{index}]"
        if not isinstance(ann, dict) or ann.get("iscrowd", 0) or ann.get("category_id") not in person_ids:
            continue
        parsed = _coco_annotation(ann, where, result)
        if parsed is not None:
            rows.setdefault(parsed[0], []).append((where, *parsed[1:]))
    for index, info in enumerate(data["images"]):
        sample = _coco_image(info, f"{json_path}#images[{index}]", images_dir, source, rows, result)
        if sample is not None:
            result.samples.append(sample)
    return result


def _coco_image(
    info: object, where: str, images_dir: Path, source: str, rows: dict, result: ReadResult
) -> Sample | None:
    """The scene sample of one COCO image entry, or None when unusable (recorded)."""
    if not isinstance(info, dict) or "file_name" not in info or "id" not in info:
        result.problems.append(
            Problem(where, None, "malformed_label", "image entry needs 'id' and 'file_name'")
        )
        return None
    path = images_dir / str(info["file_name"])
    if not path.is_file():
        result.problems.append(
            Problem(str(path), None, "missing_image", f"image listed in {where} does not exist")
        )
        return None
    width, height = info.get("width"), info.get("height")
    if not isinstance(width, int) or not isinstance(height, int):
        try:
            width, height = image_size(path)
        except Exception as err:  # PIL raises several types for broken files
            result.problems.append(
                Problem(str(path), None, "unreadable_image", f"cannot read image header: {err}")
            )
            return None
    boxes, attrs = [], []
    for ann_where, xyxy, gender, age in rows.get(info["id"], []):
        box = _checked_box(xyxy, width, height, ann_where, None, result)
        if box is not None:
            boxes.append(box)
            attrs.append((gender, age))
    return _scene_sample(path, source, boxes, attrs)


# -------------------------------------------------------------------------------------------------- UTKFace


def _crop_sample(
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


def read_utkface(root: str | os.PathLike, source: str | None = None) -> ReadResult:
    """Read UTKFace crops, labels from names 'AGE_GENDER_RACE_DATETIME.jpg.chip.jpg' (gender 0 male, 1 female)."""
    root = _require_dir(root, "UTKFace source")
    source = source or source_name(root, "utkface")
    result = ReadResult()
    # scandir + name parsing only: 23k files, no image is opened here.
    names = sorted(e.name for e in os.scandir(root) if e.is_file() and e.name.lower().endswith(IMAGE_EXTS))
    for name in names:
        path = str(root / name)
        match = _UTK_LENIENT.match(name)
        if match is None or match.group(2) not in ("0", "1"):
            result.problems.append(
                Problem(path, None, "bad_name", "name does not start with AGE_GENDER_ (gender 0/1)")
            )
            continue
        if _UTK_STRICT.match(name) is None:
            result.problems.append(
                Problem(path, None, "nonstandard_name", "name breaks the pattern; read AGE_GENDER")
            )
        age = float(match.group(1))
        if age > MAX_AGE:
            result.problems.append(
                Problem(path, None, "age_out_of_range", f"age {age:g} clipped to {MAX_AGE}")
            )
            age = float(MAX_AGE)
        gender = 1.0 if match.group(2) == "1" else 0.0
        result.samples.append(_crop_sample(path, source, gender, age, age_to_group(age), None))
    return result


# ----------------------------------------------------------------------------------------------------- PETA

PETA_COLUMNS = ("file", "subset", "person_id", "gender", "age_group")


def read_labels_csv(root: str | os.PathLike, kind: str, columns: tuple[str, ...], read_row,
                    source: str | None = None) -> ReadResult:
    """Read root/labels.csv, one sample per row through ``read_row(row, csv_path, line, root, source, result)``
    (None for an unusable row, recorded there); a missing file or column is an error naming it."""
    root = _require_dir(root, f"{kind} source")
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


def read_peta(root: str | os.PathLike, source: str | None = None) -> ReadResult:
    """Read PETA crops from root/labels.csv (file, subset, person_id, gender, age_group, ...); identity subset/person_id."""
    return read_labels_csv(root, "PETA", PETA_COLUMNS, _peta_row, source)


def _peta_row(
    row: dict, csv_path: Path, line: int, root: Path, source: str, result: ReadResult
) -> Sample | None:
    """The crop sample of one labels.csv row, or None when unusable (recorded)."""
    if None in row or any(row[c] is None for c in PETA_COLUMNS):
        result.problems.append(Problem(str(csv_path), line, "malformed_label", "wrong number of fields"))
        return None
    file_name = row["file"].strip()
    if not file_name:
        result.problems.append(Problem(str(csv_path), line, "malformed_label", "empty 'file' field"))
        return None
    path = root / file_name
    if not path.is_file():
        result.problems.append(
            Problem(str(csv_path), line, "missing_image", f"image {file_name} does not exist")
        )
        return None
    try:
        gender = _parse_gender(row["gender"].strip())
    except ValueError as err:
        result.problems.append(Problem(str(csv_path), line, "malformed_label", str(err)))
        gender = float(UNKNOWN)
    group_name = row["age_group"].strip()
    age_group = AGE_GROUPS.index(group_name) if group_name in AGE_GROUPS else UNKNOWN
    if group_name and age_group == UNKNOWN:
        result.problems.append(
            Problem(
                str(csv_path), line, "malformed_label", f"age_group {group_name!r} not in {list(AGE_GROUPS)}"
            )
        )
    subset, person_id = row["subset"].strip(), row["person_id"].strip()
    identity = f"{subset}/{person_id}" if subset or person_id else None
    return _crop_sample(str(path), source, gender, float(UNKNOWN), age_group, identity)
