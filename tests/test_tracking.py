"""What the MLflow UI shows about this project's runs: experiments of kind model training, the data each run used
(MLflow dataset inputs: name + DVC md5 as digest + source) and the source (project, entry point, git commit)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mouaadnet.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, PROJECT_NAME, git_commit


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _datasets(run) -> dict[str, tuple[str, str, str]]:
    return {d.dataset.name: (d.dataset.digest, d.dataset.source, {t.key: t.value for t in d.tags}.get("mlflow.data.context"))
            for d in run.inputs.dataset_inputs}


def _source(run, entry_point: str) -> None:
    tags = run.data.tags
    assert tags["mlflow.source.type"] == "PROJECT" and tags["mlflow.source.name"] == PROJECT_NAME
    assert tags["mlflow.source.git.commit"] == git_commit()
    assert tags["mlflow.project.entryPoint"] == entry_point


def test_tiny_training_run_records_kind_dataset_source_and_prints_progress(tracking, tmp_path, capsys):
    from test_train import tiny_config

    from mouaadnet.training.trainer import train

    cfg = tiny_config(epochs=1, steps=2)
    summary = train(cfg, tmp_path / "run", progress=False, progress_every=0.0)

    out = capsys.readouterr().out
    assert "progress  epoch 1/1  step 1/2  loss " in out and "progress  epoch 1/1  step 2/2" in out and "ETA" in out
    assert tracking.get_experiment_by_name("tests").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    run = tracking.get_run(summary.run_id)
    _source(run, "train")
    digest = hashlib.sha256(b"synthetic:24:0").hexdigest()[:16]  # generated data: the spec is the data
    assert _datasets(run)["synthetic"] == (digest, '{"uri": "synthetic:24:0"}', "training")
    assert set(_datasets(run)) == {"synthetic", "synthetic-crops"}


def test_pipeline_run_records_the_dvc_md5_as_its_dataset(tracking):
    from mouaadnet.pipeline.lineage import DATASET_NAME, start_pipeline_run

    md5 = "0123456789abcdef0123456789abcdef.dir"
    run_id = start_pipeline_run("pipeline-tracking-test", {"data_version": md5, "epochs": 1}, "kfp-7")
    run = tracking.get_run(run_id)
    _source(run, "pipeline")
    digest, source, context = _datasets(run)[DATASET_NAME]
    assert digest == md5 and context == "training" and source.endswith('/data"}')
    assert tracking.get_experiment_by_name("pipeline-tracking-test").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_an_experiment_kind_set_by_hand_is_kept(tracking):
    from mouaadnet.tracking import use_experiment

    exp = tracking.create_experiment("kept", tags={EXPERIMENT_KIND_TAG: "finetuning"})
    use_experiment("kept")
    assert tracking.get_experiment(exp).tags[EXPERIMENT_KIND_TAG] == "finetuning"


def test_a_dvc_tracked_source_is_named_by_its_md5(tmp_path):
    from mouaadnet.data.assembly import dataset_inputs
    from mouaadnet.data.config import DataConfig, SourceConfig

    folder = tmp_path / "street"
    folder.mkdir()
    (tmp_path / "street.dvc").write_text("outs:\n- md5: 9f86d081884c7d659a2feaa0c55ad015.dir\n  path: street\n")
    cfg = DataConfig(scene=[SourceConfig(path=str(folder))])
    assert dataset_inputs(cfg) == [("street", "9f86d081884c7d659a2feaa0c55ad015.dir", str(folder.resolve()))]


def test_training_lineage_reads_the_train_run_its_pipeline_run_and_data_digests(tracking, tmp_path):
    import torch
    from mlflow.entities import DatasetInput

    from mouaadnet.export.ship import lineage
    from mouaadnet.tracking import dataset, training_lineage

    # the fixture's client only: mlflow's process-wide URI may point at another test's store
    experiment_id = tracking.create_experiment("lineage-test")
    pipeline = tracking.create_run(experiment_id, tags={"pipeline.kfp_run_id": "kfp-123"}).info.run_id
    train = tracking.create_run(experiment_id, tags={"mlflow.parentRunId": pipeline, "git_commit": "abc123",
                                                     "resumed_from_run": "old-run"}).info.run_id
    data = dataset("street_person", "d41d8cd98f00b204e9800998ecf8427e.dir", str(tmp_path))
    tracking.log_inputs(train, datasets=[DatasetInput(data._to_mlflow_entity(), [])])
    found = training_lineage(train)
    assert found["train_run"] == train and found["pipeline_run"] == pipeline and found["kfp_run_id"] == "kfp-123"
    assert found["experiment"] == "lineage-test" and found["git_commit"] == "abc123"
    assert found["resumed_from_run"] == "old-run"
    assert found["data"] == [{"name": "street_person", "digest": "d41d8cd98f00b204e9800998ecf8427e.dir"}]
    # what ship writes into the manifest: the checkpoint's run, looked up; a run the store lacks keeps its id
    torch.save({"model": {}, "mlflow_run_id": train}, tmp_path / "here.pt")
    assert lineage(tmp_path / "here.pt") == found
    torch.save({"model": {}, "mlflow_run_id": "0" * 32}, tmp_path / "elsewhere.pt")
    gone = lineage(tmp_path / "elsewhere.pt")
    assert gone["train_run"] == "0" * 32 and "not_in_store" in gone and "pipeline_run" not in gone
    torch.save({"model": {}}, tmp_path / "bare.pt")
    assert lineage(tmp_path / "bare.pt") == {}


RACE_SCRIPT = """
import os, sys, time
from pathlib import Path
import mlflow
from mouaadnet.tracking import log_dataset
folder = Path(sys.argv[1])
mlflow.set_experiment("race")
with mlflow.start_run() as run:
    (folder / f"ready-{os.getpid()}").write_text(run.info.run_id)
    while not (folder / "go").exists():
        time.sleep(0.001)
    for i in range(30):
        log_dataset(f"set{i}", f"{i:036d}", "/data")
"""


def test_two_runs_logging_the_same_new_datasets_at_once_both_link_them(tracking, tmp_path):
    """Ablations started side by side log the same data as inputs at the same moment: the store's unique dataset
    row makes one insert fail (MLflow's IntegrityError), and the run that lost must not crash for it."""
    import os
    import subprocess
    import sys
    import time

    tracking.create_experiment("race")  # created once, so the race is on the datasets only
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = tmp_path / "race.py"
    script.write_text(RACE_SCRIPT)
    runs = [subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline and all(r.poll() is None for r in runs):
        time.sleep(0.05)
    (tmp_path / "go").write_text("")
    for run in runs:
        _, err = run.communicate(timeout=180)
        assert run.returncode == 0, err[-2000:]
    for ready in tmp_path.glob("ready-*"):
        linked = _datasets(tracking.get_run(ready.read_text()))
        assert sorted(linked) == sorted(f"set{i}" for i in range(30))
