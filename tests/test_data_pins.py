"""Pinned data outside data/ (mouaadnet.pipeline.data_pins): DVC's folder md5, `mouaadnet data pin / verify`, and
the train step refusing a folder that changed while recording every digest as an MLflow dataset input.

Small synthetic folders in tmp_path stand in for ../shared/data (tests never need it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mouaadnet.cli.main import app
from mouaadnet.data.synthetic import write_synthetic_dataset
from mouaadnet.pipeline.data_pins import DataPinError, folder_digest, pins_path, verify_sources, write_pins
from mouaadnet.pipeline.dvc_data import dvc_executable
from mouaadnet.pipeline.params import PipelineStepError, train_config


def _config(tmp_path: Path, ext: Path) -> Path:
    """A config reading a COCO folder outside data/ (train + a separate val) and a generated crop source."""
    config = tmp_path / "ext.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": "pins-test", "device": "cpu", "threads": 1,
        "model": {"scene_size": 64, "crop_size": 32},
        "data": {"scene": [{"path": str(ext / "train" / "annotations.json"),
                            "val": str(ext / "val" / "annotations.json"), "max_val": 2}],
                 "crop": [{"path": "synthetic-crops:8:1", "val": "synthetic-crops:2:9", "max_val": 2}],
                 "scene_batch_size": 2, "crop_batch_size": 2, "augment": False},
        "optim": {"epochs": 1, "steps_per_epoch": 2}}))
    return config


@pytest.fixture
def ext(tmp_path):
    write_synthetic_dataset(tmp_path / "ext", 4, 2, seed=5, size=64)
    return tmp_path / "ext"


def test_folder_digest_is_what_dvc_add_pins(tmp_path, ext):
    (ext / "train" / "images" / "sub dir").mkdir()
    (ext / "train" / "images" / "sub dir" / "é.txt").write_text("non-ascii name, nested")
    repo = tmp_path / "dvcrepo"
    repo.mkdir()
    subprocess.run([dvc_executable(), "init", "--no-scm", "-q"], cwd=repo, check=True)
    subprocess.run(["cp", "-r", str(ext / "train"), str(repo / "train")], check=True)
    subprocess.run([dvc_executable(), "add", "-q", "train"], cwd=repo, check=True)
    pinned = yaml.safe_load((repo / "train.dvc").read_text())["outs"][0]
    digest = folder_digest(ext / "train")
    assert (digest.md5, digest.size, digest.nfiles) == (pinned["md5"], pinned["size"], pinned["nfiles"])


def test_pin_then_verify_and_refuse_a_changed_folder(tmp_path, ext):
    config = _config(tmp_path, ext)
    out = write_pins(config, echo=lambda line: None)
    assert out == tmp_path / "ext.pins.yaml" == pins_path(config)
    pins = yaml.safe_load(out.read_text())["sources"]
    assert set(pins) == {str(ext / "train" / "annotations.json"), str(ext / "val" / "annotations.json")}
    cfg = train_config(config.read_text())
    inputs = verify_sources(cfg, out.read_text())
    assert [name for name, _, _ in inputs] == ["ext", "ext/val"]  # generated sources are their own spec
    assert inputs[0][1] == folder_digest(ext / "train").md5 and inputs[0][2] == str((ext / "train").resolve())

    image = sorted((ext / "train" / "images").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")  # a silent change: same name, one byte more
    with pytest.raises(DataPinError) as error:
        verify_sources(cfg, out.read_text())
    spec, pinned = str(ext / "train" / "annotations.json"), pins[str(ext / "train" / "annotations.json")]["md5"]
    message = str(error.value)
    assert spec in message and f"pinned {pinned}" in message and f"found {folder_digest(ext / 'train').md5}" in message
    with pytest.raises(DataPinError, match="is not pinned: run `mouaadnet data pin"):
        verify_sources(cfg, "")


def test_cli_data_pin_and_verify(tmp_path, ext):
    config = _config(tmp_path, ext)
    runner = CliRunner()
    result = runner.invoke(app, ["data", "verify", "--config", str(config)])
    assert result.exit_code == 1 and "is not pinned" in result.output
    result = runner.invoke(app, ["data", "pin", "--config", str(config)])
    assert result.exit_code == 0 and "ext.pins.yaml" in result.output and "(5 files" in result.output
    result = runner.invoke(app, ["data", "verify", "--config", str(config)])
    assert result.exit_code == 0 and result.output.count("ok  ") == 2
    (ext / "val" / "extra.txt").write_text("a file added")
    result = runner.invoke(app, ["data", "verify", "--config", str(config)])
    assert result.exit_code == 1 and "changed since it was pinned" in result.output


def test_pipeline_arguments_carry_the_pins_file(tmp_path, ext):
    from mouaadnet.kubeflow.runner import pipeline_arguments
    from mouaadnet.tracking import PROJECT_ROOT

    config = _config(tmp_path, ext)
    assert pipeline_arguments(config, PROJECT_ROOT)["data_pins"] == ""
    write_pins(config, echo=lambda line: None)
    assert pipeline_arguments(config, PROJECT_ROOT)["data_pins"] == pins_path(config).read_text()
    assert (PROJECT_ROOT / "configs" / "real.pins.yaml").is_file()  # the long run's data is pinned in the repo
    real = yaml.safe_load((PROJECT_ROOT / "configs" / "real.pins.yaml").read_text())["sources"]
    assert set(real) == set(pipeline_pinned(PROJECT_ROOT / "configs" / "real.yaml"))


def pipeline_pinned(config: Path) -> list[str]:
    from mouaadnet.pipeline.data_pins import pinned_specs

    return pinned_specs(train_config(config.read_text()))


def test_train_step_records_pinned_digests_and_refuses_changed_data(tmp_path, ext, monkeypatch):
    from mlflow import MlflowClient

    from mouaadnet.pipeline.steps import train_step

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, ext)
    pins = write_pins(config, echo=lambda line: None).read_text()
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    result = train_step(dataset, config.read_text(), tmp_path / "ckpt", experiment="pins-test", data_pins=pins,
                        data_fingerprint="0" * 32 + ".dir")
    inputs = MlflowClient().get_run(result["run_id"]).inputs.dataset_inputs
    # data.dvc's md5 is not recorded: this config reads nothing under data/
    assert [(d.dataset.name, d.dataset.digest) for d in inputs] == [
        ("ext", folder_digest(ext / "train").md5), ("ext/val", folder_digest(ext / "val").md5)]
    # the pipeline's parent run shows them too once evaluate adopts the train run
    from mouaadnet.pipeline.lineage import adopt_runs, start_pipeline_run

    parent = start_pipeline_run("pins-test", {"data_version": "1" * 32 + ".dir"}, "kfp-1")
    adopt_runs(parent, {"train": result["run_id"]})
    adopt_runs(parent, {"train": result["run_id"]})  # twice: recorded once
    shown = [(d.dataset.name, d.dataset.digest) for d in MlflowClient().get_run(parent).inputs.dataset_inputs]
    assert sorted(shown) == sorted([("data", "1" * 32 + ".dir"), *[(d.dataset.name, d.dataset.digest) for d in inputs]])
    (ext / "val" / "annotations.json").write_text((ext / "val" / "annotations.json").read_text() + " ")
    with pytest.raises(PipelineStepError, match="ext/val/annotations.json changed since it was pinned"):
        train_step(dataset, config.read_text(), tmp_path / "ckpt2", experiment="pins-test", data_pins=pins)
