"""A captioned contact sheet of detections (`mouaadnet detect --sheet`): how the model card's failure pictures
are drawn. Where a YOLO label file sits beside an image (``--labels``), the labelled people are drawn in yellow
and the caption counts how many were found at IoU 0.5."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mouaadnet.data.scene_readers import yolo_person_boxes
from mouaadnet.evaluation.metrics import box_iou

from .client import annotate

MATCH_IOU = 0.5


def count_matches(people: list[dict], labelled: np.ndarray, iou: float = MATCH_IOU) -> int:
    """Labelled people matched one to one by a found box at IoU >= ``iou``, greedily in score order (as COCO)."""
    if not people or not len(labelled):
        return 0
    ranked = sorted(people, key=lambda p: -p["score"])
    overlaps = box_iou(np.asarray([p["box"] for p in ranked], dtype=np.float64), labelled.astype(np.float64))
    taken = np.zeros(len(labelled), dtype=bool)
    for row in overlaps:
        row = np.where(taken, -1.0, row)
        best = int(row.argmax())
        if row[best] >= iou:
            taken[best] = True
    return int(taken.sum())


def caption(index: int, name: str, people: list[dict], labelled: np.ndarray | None) -> str:
    """'3 street.jpg: 2/11 labelled found at IoU 0.5, 1 extra' or, unlabelled, how many were found."""
    if labelled is None:
        top = f", top score {max(p['score'] for p in people):.2f}" if people else ""
        return f"{index} {name}: {len(people)} found{top}"
    matched = count_matches(people, labelled)
    extra = len(people) - matched
    return f"{index} {name}: {matched}/{len(labelled)} labelled found at IoU {MATCH_IOU}, {extra} extra"


def labelled_boxes(image_path: Path, image_bytes: bytes, labels: Path | None) -> np.ndarray | None:
    """The labelled people of ``labels/<stem>.txt`` in pixels of the EXIF-oriented image; None without a file."""
    from PIL import Image, ImageOps

    label_path = None if labels is None else labels / f"{image_path.stem}.txt"
    if label_path is None or not label_path.is_file():
        return None
    width, height = ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes))).size
    return yolo_person_boxes(label_path, width, height)


def contact_sheet(paths: list[Path], blobs: list[bytes], people: list[list[dict]], out: str | Path,
                  labels: Path | None = None, columns: int = 3, tile: int = 420) -> Path:
    """Write one JPEG/PNG with every image annotated, fitted into ``tile`` x ``tile`` cells, captioned below."""
    from PIL import Image, ImageDraw

    caption_height = 22
    rows = (len(paths) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption_height)), "white")
    pen = ImageDraw.Draw(sheet)
    for i, (path, blob, found) in enumerate(zip(paths, blobs, people)):
        labelled = labelled_boxes(path, blob, labels)
        image = annotate(blob, found, labelled)
        image.thumbnail((tile, tile))
        x, y = (i % columns) * tile, (i // columns) * (tile + caption_height)
        sheet.paste(image, (x + (tile - image.width) // 2, y))
        pen.text((x + 4, y + tile + 4), caption(i + 1, path.name, found, labelled), fill=(0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".jpg", ".jpeg"):
        sheet.save(out, quality=90)
    else:
        sheet.save(out)
    return out
