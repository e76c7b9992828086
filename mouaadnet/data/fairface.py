"""FairFace reader: face crops with gender and a binned age (a soft target over the bin's years)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .readers import Problem, ReadResult, crop_sample, read_labels_csv, row_image_and_gender
from .types import FAIRFACE_AGE_BINS, FAIRFACE_BIN_OFFSET, UNKNOWN, Sample

FAIRFACE_COLUMNS = ("file", "age", "gender")
# Excel turned two bins into dates in some copies of the source CSV ('3-9' -> '03-Sep', '10-19' -> 'Oct-19').
_EXCEL_DATES = {"03-Sep": "3-9", "Sep-03": "3-9", "Oct-19": "10-19", "19-Oct": "10-19"}


def is_fairface_csv(csv_path: Path) -> bool:
    """True when labels.csv has FairFace's columns (file, age, gender, race) rather than PETA's."""
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    return {"file", "age", "gender", "race"} <= {h.strip() for h in header}


def fairface_age_group(bin_name: str) -> int:
    """Index in model.config.AGE_RANGES of a FairFace age bin name; UNKNOWN for an unknown name."""
    name = _EXCEL_DATES.get(bin_name, bin_name)
    if name not in FAIRFACE_AGE_BINS:
        return UNKNOWN
    return FAIRFACE_BIN_OFFSET + FAIRFACE_AGE_BINS.index(name)


def read_fairface(root: str | os.PathLike, source: str | None = None) -> ReadResult:
    """Read root/labels.csv (file, age bin, gender Male/Female, race); no identities (FairFace has none)."""
    return read_labels_csv(root, "FairFace", FAIRFACE_COLUMNS, _fairface_row, source)


def _fairface_row(
    row: dict, csv_path: Path, line: int, root: Path, source: str, result: ReadResult
) -> Sample | None:
    """The crop sample of one labels.csv row, or None when unusable (recorded)."""
    found = row_image_and_gender(row, FAIRFACE_COLUMNS, csv_path, line, root, result)
    if found is None:
        return None
    path, gender = found
    bin_name = row["age"].strip()
    age_group = fairface_age_group(bin_name)
    if bin_name and age_group == UNKNOWN:
        result.problems.append(
            Problem(str(csv_path), line, "malformed_label", f"age bin {bin_name!r} not in {list(FAIRFACE_AGE_BINS)}")
        )
    return crop_sample(str(path), source, gender, float(UNKNOWN), age_group, None)
