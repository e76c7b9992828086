"""Checkpoints that outlive the machine (mouaadnet.training.durable) and the pipeline train step's resume
(mouaadnet.pipeline.launch): in-process, seconds. The whole pipeline killed and re-submitted:
tests/test_pipeline_resume.py."""

from __future__ import annotations

import pytest
from test_train import tiny_config  # noqa: E402 - the same few-second config

from mouaadnet.data.assembly import load_training_data
from mouaadnet.pipeline import launch
from mouaadnet.training import durable
from mouaadnet.training.checkpoint import load_checkpoint
from mouaadnet.training.trainer import Trainer, train


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)


def _killed_in_second_epoch(monkeypatch):
    original = Trainer.validate

    def validate(self):
        if self.epoch == 1:
            raise KeyboardInterrupt  # the node is reclaimed during epoch 2
        return original(self)

    monkeypatch.setattr(Trainer, "validate", validate)
    return original


def test_a_preempted_run_resumes_on_a_new_machine_in_the_same_mlflow_run(tmp_path, tracking, monkeypatch):
    from mlflow import MlflowClient

    cfg = tiny_config(epochs=2, steps=2)
    data = load_training_data(cfg.data, cfg.seed)
    original = _killed_in_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "pod-1", progress=False, data=data, resume_key="k1")
    monkeypatch.setattr(Trainer, "validate", original)
    client = MlflowClient()
    run_id = durable.find_resumable(cfg.experiment, "k1")
    tags = client.get_run(run_id).data.tags
    assert tags[durable.KEY_TAG] == "k1" and tags[durable.EPOCHS_TAG] == "1" and tags[durable.SLOT_TAG] == "resume/b"
    assert {f.path for f in client.list_artifacts(run_id, "resume/b")} == {"resume/b/last.pt", "resume/b/best.pt"}
    assert durable.find_resumable(cfg.experiment, "other") is None

    # a new pod: nothing on its disk; the step finds the run by its key and continues it
    summary = launch.train_on_this_node(cfg, tmp_path / "pod-2", "k1", 1, None)
    assert summary["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[durable.RESUMED_TAG] == "1"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]  # epoch 2 once, not from zero
    assert load_checkpoint(tmp_path / "pod-2" / "last.pt")["epoch"] == 1
    # finished: a later run with the same key trains anew (what running without the cache means)
    assert durable.find_resumable(cfg.experiment, "k1") is None
    assert launch.train_on_this_node(cfg, tmp_path / "pod-3", "k1", 1, None)["run_id"] != run_id


def test_a_carried_checkpoint_continues_the_run_on_a_machine_whose_store_never_saw_it(tmp_path, tracking,
                                                                                       monkeypatch):
    """What a session commits under weights/ before its machine goes away (`mouaadnet pipeline carry`), and the
    next machine's train step continuing it (`pipeline run --resume-from`): a new run after the same epoch."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from mouaadnet.cli.main import app

    cfg = tiny_config(epochs=2, steps=2)
    original = _killed_in_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "machine-a", progress=False, resume_key="k3")
    monkeypatch.setattr(Trainer, "validate", original)
    run_a = durable.find_resumable(cfg.experiment, None)
    carried = tmp_path / "weights" / "resume" / "tiny.pt"
    result = CliRunner().invoke(app, ["pipeline", "carry", "--experiment", cfg.experiment, "--out", str(carried)])
    assert result.exit_code == 0, result.output
    assert 0 < carried.stat().st_size <= durable.CARRIED_MAX_BYTES
    assert durable.RESUMED_TAG not in MlflowClient().get_run(run_a).data.tags  # carrying is not resuming
    state = load_checkpoint(carried)
    exact = load_checkpoint(tmp_path / "machine-a" / "last.pt")
    assert all(state["model"][k].equal(v) for k, v in exact["model"].items())  # the weights themselves stay fp32
    assert {str(v.dtype) for s in state["optimizer"]["state"].values() for n, v in s.items() if n != "step"} == {
        "torch.bfloat16"}

    with pytest.raises(durable.CarryError, match="another training"):
        durable.take_carried(carried, "other-key", tmp_path / "refused")
    assert not (tmp_path / "refused" / "last.pt").exists()
    with pytest.raises(durable.CarryError, match="not a carried checkpoint"):
        durable.take_carried(tmp_path / "machine-a" / "last.pt", "k3", tmp_path / "refused")

    # the carrying machine itself finishes the run; the carried file then refuses to train its epochs again there
    assert launch.train_on_this_node(cfg, tmp_path / "machine-a2", "k3", 1, None)["run_id"] == run_a
    with pytest.raises(durable.CarryError, match=f"continues MLflow run {run_a}, which this store holds as finished"):
        launch.train_on_this_node(cfg, tmp_path / "machine-a3", "k3", 1, None, resume_from=str(carried))
    assert [m.step for m in MlflowClient().get_metric_history(run_a, "loss")] == [1, 2]  # nothing logged twice

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'machine-b.db'}")
    summary = launch.train_on_this_node(cfg, tmp_path / "machine-b", "k3", 1, None, resume_from=str(carried))
    client_b = MlflowClient()
    run_b = client_b.get_run(summary["run_id"])
    assert run_b.info.run_id != run_a and run_b.info.status == "FINISHED"
    assert run_b.data.tags["resumed_from_run"] == run_a and run_b.data.tags["resumed_at_epoch"] == "1"
    assert [m.step for m in client_b.get_metric_history(run_b.info.run_id, "loss")] == [1, 2]  # epoch 2 once
    assert load_checkpoint(tmp_path / "machine-b" / "best.pt")["model"]  # the best weights came along too


def test_an_interrupted_upload_never_moves_the_slot_a_resume_reads(tmp_path, tracking, monkeypatch):
    from mlflow import MlflowClient

    cfg = tiny_config(epochs=1, steps=1)
    summary = train(cfg, tmp_path / "run", progress=False, resume_key="k2")
    client = MlflowClient()
    assert client.get_run(summary.run_id).data.tags[durable.SLOT_TAG] == "resume/b"
    calls = []
    original = type(client).log_artifact

    def cut_off(self, run_id, path, artifact_path=None):  # last.pt lands in slot a, then the store goes away
        calls.append(artifact_path)
        if len(calls) > 1:
            raise ConnectionError("store went away mid-upload")
        return original(self, run_id, path, artifact_path)

    monkeypatch.setattr(type(client), "log_artifact", cut_off)
    assert durable.upload(summary.run_id, tmp_path / "run", 2, wait=0.1) is False
    assert calls[0] == "resume/a"
    tags = client.get_run(summary.run_id).data.tags
    assert tags[durable.SLOT_TAG] == "resume/b" and tags[durable.EPOCHS_TAG] == "1"


def test_resume_key_is_what_trains_not_where(tmp_path):
    inputs = [("coco", "a" * 32 + ".dir", "/x")]
    key = launch.resume_key("cfg", 0, 0, "exp", "", inputs)
    assert key == launch.resume_key("cfg", 0, 0, "exp", "", [("coco", "a" * 32 + ".dir", "/elsewhere")])
    assert key != launch.resume_key("cfg2", 0, 0, "exp", "", inputs)
    assert key != launch.resume_key("cfg", 3, 0, "exp", "", inputs)
    assert key != launch.resume_key("cfg", 0, 0, "exp", "", [("coco", "b" * 32 + ".dir", "/x")])
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    assert key != launch.resume_key("cfg", 0, 0, "exp", str(start), inputs)


def test_processes_one_per_core_only_when_the_machine_is_idle(monkeypatch):
    from mouaadnet.training import threads

    cfg = tiny_config()  # global batches 4 and 4
    monkeypatch.setattr(threads, "cores", lambda: 2)
    assert launch.processes(3, cfg) == 3  # asked for: as asked
    monkeypatch.setattr(launch.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert launch.processes(0, cfg) == 2
    monkeypatch.setattr(launch.os, "getloadavg", lambda: (1.8, 1.0, 1.0))  # another job on the cores
    assert launch.processes(0, cfg) == 1
    monkeypatch.setattr(launch.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    cfg.data.crop_batch_size = 5  # does not split over 2 processes
    assert launch.processes(0, cfg) == 1


CPU_CONFIG = """\
seed: 0
threads: 1
model: {scene_size: 64, crop_size: 32}
data:
  scene: [{path: data/train/annotations.json, val: data/val/annotations.json, max_val: 2}]
  crop: []
  scene_batch_size: 4
  augment: false
optim: {epochs: 2, steps_per_epoch: 2}
device: cpu
"""


def test_train_step_with_two_cpu_processes_runs_torchrun_and_resumes_it(tmp_path, tracking, monkeypatch):
    """nproc_per_node 2: torchrun with the resume key and the dataset inputs; killed in epoch 2 and re-run on a
    new pod, the same step resumes the run with --resume. torchrun's workers run in this process here (the
    real 2-process run: tests/test_distributed.py)."""
    import subprocess

    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from mouaadnet.cli.main import app
    from mouaadnet.data.synthetic import write_synthetic_dataset
    from mouaadnet.pipeline.params import PipelineStepError
    from mouaadnet.pipeline.steps import train_step

    write_synthetic_dataset(tmp_path / "dataset", 8, 2, seed=1, size=64)
    calls, real_run = [], subprocess.run

    def torchrun(command, check=False, **kwargs):
        if "torch.distributed.run" not in command:  # git rev-parse and the like
            return real_run(command, check=check, **kwargs)
        calls.append(command)
        assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        return subprocess.CompletedProcess(command, CliRunner().invoke(app, command[7:]).exit_code)

    monkeypatch.setattr(subprocess, "run", torchrun)
    fingerprint = "0" * 32 + ".dir"
    original = _killed_in_second_epoch(monkeypatch)
    with pytest.raises(PipelineStepError, match="torchrun with 2 processes failed"):
        train_step(tmp_path / "dataset", CPU_CONFIG, tmp_path / "pod-1" / "ckpt", data_fingerprint=fingerprint,
                   experiment="cpu-ddp", nproc_per_node=2)
    monkeypatch.setattr(Trainer, "validate", original)
    result = train_step(tmp_path / "dataset", CPU_CONFIG, tmp_path / "pod-2" / "ckpt", data_fingerprint=fingerprint,
                        experiment="cpu-ddp", nproc_per_node=2)
    first, second = calls
    key = first[first.index("--resume-key") + 1]
    assert "--resume" not in first and "--resume" in second and second[second.index("--resume-key") + 1] == key
    run = MlflowClient().get_run(result["run_id"])
    assert run.data.tags[durable.KEY_TAG] == key and run.data.tags[durable.RESUMED_TAG] == "1"
    assert [(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs] == [("data", fingerprint)]
    assert (tmp_path / "pod-2" / "ckpt" / "best.pt").is_file() and result["best_epoch"] >= 1


@pytest.mark.integration
def test_the_copy_goes_through_the_tracking_server_to_s3_and_back(tmp_path, mlflow_server_uri, s3_service,
                                                                    monkeypatch):
    """What a cluster does: the tracking server proxies the run's artifacts to S3 (SeaweedFS here), so a new pod
    with nothing on its disk resumes from there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    cfg = tiny_config(epochs=2, steps=1)
    cfg.experiment = "resume-s3"
    data = load_training_data(cfg.data, cfg.seed)
    original = _killed_in_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "pod-1", progress=False, data=data, resume_key="k-s3")
    monkeypatch.setattr(Trainer, "validate", original)
    run_id = durable.find_resumable(cfg.experiment, "k-s3")
    keys = s3_service.list_keys("mlflow/")
    assert any(k.endswith(f"{run_id}/artifacts/resume/b/last.pt") for k in keys), keys[:20]
    summary = launch.train_on_this_node(cfg, tmp_path / "pod-2", "k-s3", 1, None)
    assert summary["run_id"] == run_id and load_checkpoint(tmp_path / "pod-2" / "last.pt")["epoch"] == 1
