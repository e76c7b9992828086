import json

import numpy as np
import yaml
from PIL import Image
from typer.testing import CliRunner

from mouaadnet.cli.main import app

runner = CliRunner()


def _yolo_dataset(root, bad_line=False, corrupt=False):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.jpg")
        (root / "labels" / f"im{i}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    if bad_line:
        (root / "labels" / "im1.txt").write_text("0 0.5 0.5 0.25 0.5\n0 0.5 oops\n")
    if corrupt:
        (root / "images" / "im2.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return root


def test_data_check_clean_dataset_exits_0(tmp_path):
    result = runner.invoke(app, ["data", "check", str(_yolo_dataset(tmp_path / "ok")), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["sources"][0]["samples"] == 3 and report["sources"][0]["persons"] == 3


def test_data_check_reports_bad_line_and_corrupt_image(tmp_path):
    root = _yolo_dataset(tmp_path / "bad", bad_line=True, corrupt=True)
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1
    assert "im1.txt:2" in result.output
    assert "im2.jpg" in result.output


def test_data_check_unknown_source_fails_clearly(tmp_path):
    result = runner.invoke(app, ["data", "check", str(tmp_path / "nowhere")])
    assert result.exit_code != 0
    assert "nowhere" in result.output


def _tiny_config(tmp_path):
    cfg = {
        "experiment": "cli-tests",
        "model": {"scene_size": 64, "crop_size": 32},
        "data": {"scene": [{"path": "synthetic:8:0", "val": "synthetic:2:9"}],
                 "crop": [{"path": "synthetic-crops:8:1", "val": "synthetic-crops:2:8"}],
                 "scene_batch_size": 2, "crop_batch_size": 2},
        "optim": {"epochs": 1, "steps_per_epoch": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_then_evaluate_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(_tiny_config(tmp_path)), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "done: 1 epochs" in result.output and (out / "best.pt").is_file() and (out / "last.pt").is_file()
    result = runner.invoke(app, ["evaluate", str(out / "best.pt"), "--data", "synthetic:3:5",
                                 "--data", "synthetic-crops:4:6", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert {"synthetic", "synthetic-crops"} <= set(metrics)
    assert "AP50" in metrics["synthetic"] and "age_mae" in metrics["synthetic-crops"]
    result = runner.invoke(app, ["evaluate", str(out / "best.pt"), "--data", "synthetic:2:5", "--data",
                                 "synthetic-crops:4:6", "--json", "--flip", "--second-pass", "--threshold", "0"])
    assert result.exit_code == 0, result.output
    levers = json.loads(result.stdout)
    assert levers["synthetic"]["second_pass_ms_per_person"] > 0 and "age_mae" in levers["synthetic-crops"]
    result = runner.invoke(app, ["evaluate", str(out / "best.pt"), "--data", "synthetic:2:5", "--json",
                                 "--receptive-field"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["synthetic"]["erf_people"] > 0
    result = runner.invoke(app, ["evaluate", str(out / "best.pt"), "--data", "synthetic:2:5", "--box-cells"])
    assert result.exit_code == 2 and "arch-v2" in result.output  # the tiny config is v1: no box at every cell
    # --resume of a finished run does nothing more and still succeeds
    result = runner.invoke(app, ["train", "--config", str(_tiny_config(tmp_path)), "--out", str(out), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output


def test_train_cli_rejects_bad_config_and_missing_resume(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  epochz: 3\n")
    result = runner.invoke(app, ["train", "--config", str(bad)])
    assert result.exit_code == 2 and "unknown key 'optim.epochz'" in result.output
    result = runner.invoke(app, ["train", "--config", str(_tiny_config(tmp_path)), "--out", str(tmp_path / "none"),
                                 "--resume"])
    assert result.exit_code == 1 and "no checkpoint to resume" in result.output


def test_evaluate_cli_rejects_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"junk")
    result = runner.invoke(app, ["evaluate", str(bad), "--data", "synthetic:2:0"])
    assert result.exit_code == 2 and "x.pt" in result.output


def test_train_cli_set_override_is_validated_and_saved(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = runner.invoke(app, ["train", "--config", str(_tiny_config(tmp_path)), "--set", "optim.epochz=2"])
    assert result.exit_code == 2 and "unknown key optim.epochz" in result.output
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(_tiny_config(tmp_path)), "--out", str(out), "--quiet",
                                 "--set", "seed=7"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 7
