"""Readers of face and body crop datasets with gender and age: UTKFace (labels in the file names) and PETA
(labels.csv); FairFace is in ``fairface``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .readers import (
    IMAGE_EXTS,
    Problem,
    ReadResult,
    age_to_group,
    crop_sample,
    read_labels_csv,
    require_dir,
    row_image_and_gender,
    source_name,
)
from .types import AGE_GROUPS, MAX_AGE, UNKNOWN, Sample

_UTK_STRICT = re.compile(r"^(\d+)_([01])_(\d)_(\d+)\.jpg\.chip\.jpg$")
_UTK_LENIENT = re.compile(r"^(\d+)_(\d+)_")


def read_utkface(root: str | os.PathLike, source: str | None = None) -> ReadResult:
    """Read UTKFace crops, labels from names 'AGE_GENDER_RACE_DATETIME.jpg.chip.jpg' (gender 0 male, 1 female)."""
    root = require_dir(root, "UTKFace source")
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
        result.samples.append(crop_sample(path, source, gender, age, age_to_group(age), None))
    return result


PETA_COLUMNS = ("file", "subset", "person_id", "gender", "age_group")


def read_peta(root: str | os.PathLike, source: str | None = None) -> ReadResult:
    """Read PETA crops from root/labels.csv (file, subset, person_id, gender, age_group, ...); identity subset/person_id."""
    return read_labels_csv(root, "PETA", PETA_COLUMNS, _peta_row, source)


def _peta_row(
    row: dict, csv_path: Path, line: int, root: Path, source: str, result: ReadResult
) -> Sample | None:
    """The crop sample of one labels.csv row, or None when unusable (recorded)."""
    found = row_image_and_gender(row, PETA_COLUMNS, csv_path, line, root, result)
    if found is None:
        return None
    path, gender = found
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
    return crop_sample(str(path), source, gender, float(UNKNOWN), age_group, identity)
