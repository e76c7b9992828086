"""FairFace reader: binned ages become soft targets over the bin's years; format detection beside PETA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import AGE_RANGES, FAIRFACE_AGE_BINS, FAIRFACE_BIN_OFFSET
from model.losses import age_target_distribution
from mouaadnet.data.fairface import fairface_age_group, read_fairface
from mouaadnet.data.sources import detect_format, load_source
from mouaadnet.data.types import UNKNOWN
from mouaadnet.evaluation.metrics import age_bin_metrics, age_group_metrics


def _fairface_root(tmp_path: Path) -> Path:
    root = tmp_path / "fairface"
    (root / "images").mkdir(parents=True)
    for name in ("ff1.jpg", "ff2.jpg", "ff3.jpg", "ff4.jpg", "ff5.jpg"):
        Image.new("RGB", (32, 32), (90, 60, 30)).save(root / "images" / name)
    (root / "labels.csv").write_text(
        "file,age,gender,race\n"
        "images/ff1.jpg,20-29,Female,White\n"
        "images/ff2.jpg,more than 70,Male,Black\n"
        "images/ff3.jpg,03-Sep,Male,Indian\n"  # Excel's date for the 3-9 bin
        "images/ff4.jpg,teen,Robot,White\n"  # line 5: unknown bin and gender
        "images/missing.jpg,0-2,Male,White\n"  # line 6: no such image
    )
    return root


def test_read_fairface_bins_genders_and_problems(tmp_path: Path) -> None:
    result = read_fairface(_fairface_root(tmp_path))
    by_name = {Path(s.image_path).name: s for s in result.samples}
    assert sorted(by_name) == ["ff1.jpg", "ff2.jpg", "ff3.jpg", "ff4.jpg"]
    ff1, ff2, ff3, ff4 = (by_name[f"ff{i}.jpg"] for i in range(1, 5))
    assert ff1.mode == "crop" and ff1.gender[0] == 1 and ff1.age[0] == UNKNOWN
    assert AGE_RANGES[ff1.age_group[0]] == (20, 29)
    assert ff2.gender[0] == 0 and AGE_RANGES[ff2.age_group[0]] == (70, 100)
    assert AGE_RANGES[ff3.age_group[0]] == (3, 9)
    assert ff4.gender[0] == UNKNOWN and ff4.age_group[0] == UNKNOWN
    located = sorted((p.line, p.kind) for p in result.problems)
    assert located == [(5, "malformed_label"), (5, "malformed_label"), (6, "missing_image")]


def test_fairface_and_peta_csv_are_told_apart(tmp_path: Path) -> None:
    assert detect_format(_fairface_root(tmp_path)) == "fairface"
    peta = tmp_path / "peta"
    peta.mkdir()
    (peta / "labels.csv").write_text("file,subset,person_id,gender,age_group\n")
    assert detect_format(peta) == "peta"
    assert len(load_source(str(tmp_path / "fairface")).samples) == 4


@pytest.mark.parametrize("index", range(len(FAIRFACE_AGE_BINS)))
def test_fairface_bin_is_a_uniform_soft_target_over_its_years(index: int) -> None:
    group = fairface_age_group(FAIRFACE_AGE_BINS[index])
    assert group == FAIRFACE_BIN_OFFSET + index
    dist = age_target_distribution(torch.tensor([-1.0]), torch.tensor([group]), sigma=2.0)[0]
    low, high = AGE_RANGES[group]
    support = torch.nonzero(dist).flatten()
    assert support.min().item() == low and support.max().item() == high
    assert torch.allclose(dist[support], torch.full_like(dist[support], 1.0 / (high - low + 1)))
    assert dist.sum().item() == pytest.approx(1.0)


def test_age_bin_metrics_separate_from_peta_groups() -> None:
    # Two FairFace rows (20-29 hit, 60-69 predicted as 50-59) and one PETA row (Less30 hit).
    truth = [FAIRFACE_BIN_OFFSET + 3, FAIRFACE_BIN_OFFSET + 7, 1]
    pred_age = np.array([25.0, 55.0, 20.0])
    bins = age_bin_metrics(pred_age, truth)
    groups = age_group_metrics(pred_age, truth)
    assert bins["count"] == 2 and bins["accuracy"] == pytest.approx(0.5)
    assert bins["confusion"][7][6] == 1
    assert groups["count"] == 1 and groups["accuracy"] == 1.0
