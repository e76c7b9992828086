"""Readers of scene label formats with person boxes: YOLO txt folders and COCO json (lenient: samples plus the
problems found, as every reader in ``readers``)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from .readers import (
    IMAGE_EXTS,
    PERSON_CLASS,
    Problem,
    ReadResult,
    checked_box,
    image_size,
    parse_gender,
    require_dir,
    scene_sample,
    source_name,
)
from .types import MAX_AGE, UNKNOWN, Sample


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
        box = checked_box(raw, width, height, str(label_path), line_no, result)
        if box is not None:
            boxes.append(box)
    return boxes


def yolo_person_boxes(label_path: str | os.PathLike, width: int, height: int) -> np.ndarray:
    """Person boxes [K, 4] (pixels, clipped) of one YOLO label file; ValueError naming the file and line of the
    first problem (a malformed line, a box outside the image)."""
    result = ReadResult()
    boxes = _read_yolo_labels(Path(label_path), width, height, result)
    if result.problems:
        raise ValueError(str(result.problems[0]))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def read_yolo(root: str | os.PathLike, source: str | None = None) -> ReadResult:
    """Read root/images/* with root/labels/<stem>.txt (YOLO 'cls cx cy w h', normalised); keeps class 0 (person)."""
    root = require_dir(root, "YOLO source")
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
        result.samples.append(scene_sample(image_path, source, boxes, attrs))
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
        gender = parse_gender(ann.get("gender"))
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
        box = checked_box(xyxy, width, height, ann_where, None, result)
        if box is not None:
            boxes.append(box)
            attrs.append((gender, age))
    return scene_sample(path, source, boxes, attrs)
