"""The teacher cache (mouaadnet.data.teacher): written by a fake worker script (no .venv-peer needed), read back
into training samples, and refused with a clear error when it is missing, stale or incomplete."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.config import ConfigError
from mouaadnet.data import teacher
from mouaadnet.data.assembly import load_training_data, training_split
from mouaadnet.data.config import DataConfig, SourceConfig
from mouaadnet.data.crop_readers import read_utkface
from mouaadnet.data.dataset import CropDataset, collate_crop
from mouaadnet.data.teacher import TeacherCacheError, attach_teacher, cache_path, read_cache, teach_source
from mouaadnet.data.types import UNKNOWN
from mouaadnet.training.config import TrainConfig

# A stand-in for age_gender_worker.py --stream: P(female) 0.25 and age 40 for every face, an error for names with
# "bad", and with FAKE_STOP_AFTER=N it dies after N faces (a killed run).
FAKE_WORKER = """
import json, os, sys
paths = json.load(sys.stdin)
print(json.dumps({"ready": True, "version": "fake 0"}), flush=True)
stop = int(os.environ.get("FAKE_STOP_AFTER", "-1"))
for i, path in enumerate(paths):
    if i == stop:
        sys.exit(3)
    if "bad" in os.path.basename(path):
        print(json.dumps({"path": path, "error": "ValueError: no face"}), flush=True)
    else:
        print(json.dumps({"path": path, "p_female": 0.25, "age": 40.0, "ms": 1.0}), flush=True)
"""


def _faces(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(folder / name)
    return folder


NAMES = ["20_0_0_1.jpg.chip.jpg", "30_1_0_2.jpg.chip.jpg", "45_0_1_3.jpg.chip.jpg", "60_1_2_bad.jpg.chip.jpg"]


@pytest.fixture
def utk(tmp_path: Path) -> Path:
    return _faces(tmp_path / "utkface", NAMES)


@pytest.fixture
def worker(tmp_path: Path) -> Path:
    path = tmp_path / "fake_worker.py"
    path.write_text(FAKE_WORKER)
    return path


def _write_cache(spec: Path, cache: Path, rows: dict[str, tuple[float, float] | None]) -> Path:
    """A cache file as `mouaadnet data teach` writes it (None: the teacher failed on that face)."""
    path = cache_path(str(spec), cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = teacher.source_fingerprint(str(spec))
    lines = [json.dumps({"format": 1, "source": str(spec), "digest": digest, "teacher": "test"})]
    for name, value in rows.items():
        lines.append(json.dumps({"file": name, "p_female": None if value is None else value[0],
                                 "age": None if value is None else value[1], "failed": value is None}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_attach_sets_teacher_labels_and_failed_faces_keep_ground_truth_only(utk: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    _write_cache(utk, cache, {NAMES[0]: (0.1, 22.0), NAMES[1]: (0.9, 28.5), NAMES[2]: (0.3, 50.0), NAMES[3]: None})
    samples = read_utkface(utk).samples
    assert attach_teacher(samples, str(utk), cache) == 1
    by_name = {Path(s.image_path).name: s for s in samples}
    assert (by_name[NAMES[1]].teacher_p_female, by_name[NAMES[1]].teacher_age) == (0.9, 28.5)
    failed = by_name[NAMES[3]]
    assert (failed.teacher_p_female, failed.teacher_age) == (UNKNOWN, UNKNOWN)
    assert (failed.gender[0], failed.age[0]) == (1.0, 60.0)  # the ground truth is untouched
    batch = collate_crop([item for item in (CropDataset(samples, 32, augment=False)[i] for i in range(4))])
    assert batch["teacher_gender"].tolist() == pytest.approx([0.1, 0.9, 0.3, UNKNOWN])
    assert batch["teacher_age"].tolist() == pytest.approx([22.0, 28.5, 50.0, UNKNOWN])


def test_samples_without_distillation_have_no_teacher_labels(utk: Path):
    batch = collate_crop([CropDataset(read_utkface(utk).samples, 32, augment=False)[0]])
    assert batch["teacher_gender"].tolist() == [UNKNOWN] and batch["teacher_age"].tolist() == [UNKNOWN]


def test_missing_cache_is_a_clear_error(utk: Path, tmp_path: Path):
    with pytest.raises(TeacherCacheError, match="never taught.*mouaadnet data teach --config"):
        attach_teacher(read_utkface(utk).samples, str(utk), tmp_path / "empty")


def test_cache_of_a_changed_folder_is_refused(utk: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    old = _write_cache(utk, cache, {name: (0.5, 30.0) for name in NAMES})
    _faces(utk, ["33_0_0_9.jpg.chip.jpg"])  # the folder changed: another digest
    with pytest.raises(TeacherCacheError, match="another version of the folder.*mouaadnet data teach"):
        attach_teacher(read_utkface(utk).samples, str(utk), cache)
    with pytest.raises(TeacherCacheError, match="another version"):  # the old file read against the new digest
        read_cache(old, teacher.source_fingerprint(str(utk)))


def test_incomplete_cache_is_a_clear_error(utk: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    _write_cache(utk, cache, {NAMES[0]: (0.5, 30.0)})
    with pytest.raises(TeacherCacheError, match="lacks 3 of the 4 training faces.*finish it"):
        attach_teacher(read_utkface(utk).samples, str(utk), cache)


def test_teach_writes_the_cache_and_resumes_after_a_kill(utk: Path, tmp_path: Path, worker: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "cache"
    samples = read_utkface(utk).samples
    monkeypatch.setenv("FAKE_STOP_AFTER", "2")
    with pytest.raises(TeacherCacheError, match="worker failed"):
        teach_source(str(utk), samples, cache, sys.executable, worker, progress=False)
    path = cache_path(str(utk), cache)
    assert len(read_cache(path)) == 2  # what the killed run did is kept
    with path.open("a") as handle:  # and a torn last line (killed mid-write) is dropped, not fatal
        handle.write('{"file": "45_0')
    monkeypatch.delenv("FAKE_STOP_AFTER")
    asked: list[str] = []
    teach_source(str(utk), samples, cache, sys.executable, worker, progress=False, echo=asked.append)
    assert "2 of 4 faces cached, 2 to teach" in asked[0]
    labels = read_cache(path, teacher.source_fingerprint(str(utk)))
    assert sorted(labels) == sorted(NAMES)
    assert labels[NAMES[0]] == teacher.TeacherLabel(0.25, 40.0, False)
    assert labels[NAMES[3]].failed and labels[NAMES[3]].p_female is None
    # everything cached: the worker is not started again (a missing interpreter would fail)
    teach_source(str(utk), samples, cache, tmp_path / "no-python", worker, progress=False, echo=asked.append)
    assert "4 of 4 faces cached, 0 to teach" in asked[-1]


def test_missing_peer_venv_says_make_peer_venv(utk: Path, tmp_path: Path, worker: Path):
    with pytest.raises(TeacherCacheError, match="make peer-venv"):
        teach_source(str(utk), read_utkface(utk).samples, tmp_path / "cache", tmp_path / "no-python", worker,
                     progress=False)
    assert not (tmp_path / "cache").exists()  # nothing written before the interpreter is found


def test_training_data_of_a_distill_source_carries_the_teacher(utk: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "cache"
    _write_cache(utk, cache, {name: (0.5, 30.0) for name in NAMES})
    monkeypatch.setattr(teacher, "DEFAULT_TEACHER_CACHE", cache)
    data = load_training_data(DataConfig(crop=[SourceConfig(path=str(utk), val_fraction=0.0, distill=True)]), 0)
    assert [s.teacher_age for s in data.crop.samples] == [30.0] * 4
    plain = load_training_data(DataConfig(crop=[SourceConfig(path=str(utk), val_fraction=0.0)]), 0)
    assert [s.teacher_age for s in plain.crop.samples] == [UNKNOWN] * 4
    monkeypatch.setattr(teacher, "DEFAULT_TEACHER_CACHE", tmp_path / "elsewhere")
    with pytest.raises(TeacherCacheError, match="mouaadnet data teach"):
        load_training_data(DataConfig(crop=[SourceConfig(path=str(utk), val_fraction=0.0, distill=True)]), 0)


def test_config_needs_both_a_distill_source_and_a_weight(tmp_path: Path):
    source = {"path": "../shared/data/utkface", "distill": True}
    with pytest.raises(ValueError, match="loss.gender_distill and loss.age_distill are 0"):
        TrainConfig.model_validate({"data": {"crop": [source]}})
    with pytest.raises(ValueError, match="no crop source has distill: true"):
        TrainConfig.model_validate({"data": {"crop": [{"path": "x"}]}, "loss": {"age_distill": 0.5}})
    ok = TrainConfig.model_validate({"data": {"crop": [source]}, "loss": {"gender_distill": 1.0}})
    assert ok.data.crop[0].distill and ok.loss.age_distill == 0.0
    bad = tmp_path / "typo.yaml"
    bad.write_text("data:\n  crop:\n    - path: x\n      distil: true\n")
    with pytest.raises(ConfigError, match="distil"):
        TrainConfig.from_yaml(bad)


def test_only_face_sources_distil(tmp_path: Path):
    peta = tmp_path / "peta"
    peta.mkdir()
    (peta / "labels.csv").write_text("file,subset,person_id,gender,age_group\n")
    assert not teacher.is_face_source(str(peta))
    with pytest.raises(TeacherCacheError, match="not a face source"):
        attach_teacher([], str(peta), tmp_path / "cache")


def test_cli_teaches_the_configs_face_sources(utk: Path, tmp_path: Path, worker: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    from mouaadnet.cli.main import app

    config = tmp_path / "faces.yaml"
    config.write_text(f"data:\n  crop:\n    - path: {utk}\n      val_fraction: 0.25\n")
    cache = tmp_path / "cache"
    monkeypatch.setattr(teacher, "DEFAULT_PEER_PYTHON", tmp_path / "no-python")
    failed = CliRunner().invoke(app, ["data", "teach", "--config", str(config), "--cache-dir", str(cache)])
    assert failed.exit_code == 1 and "make peer-venv" in failed.output
    monkeypatch.setattr(teacher, "DEFAULT_PEER_PYTHON", Path(sys.executable))
    monkeypatch.setattr(teacher, "WORKER", worker)
    done = CliRunner().invoke(app, ["data", "teach", "--config", str(config), "--cache-dir", str(cache), "--quiet"])
    assert done.exit_code == 0, done.output
    train = training_split(SourceConfig(path=str(utk), val_fraction=0.25), 0)  # the training split only
    assert f"0 of {len(train)} faces cached, {len(train)} to teach" in done.output
    assert sorted(read_cache(cache_path(str(utk), cache))) == sorted(Path(s.image_path).name for s in train)
