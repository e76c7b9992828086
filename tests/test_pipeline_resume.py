"""A pipeline run killed mid-train and re-submitted resumes its train step (issue 22, item 1).

`mouaadnet pipeline run --cache` in a subprocess (its own process group: kfp.local's task processes die with
it, as a preempted node takes everything), SIGKILLed once the train step has copied a checkpoint to its MLflow
run's artifact store; the same command again: prepare_data comes from the cache, train resumes the same MLflow
run after the epochs it had finished (each epoch logged once, not from zero), and the pipeline completes. A
third submission after that reuses the finished train step from the cache instead of training again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("kfp")

from mouaadnet.tracking import PROJECT_ROOT  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(720)]

TINY = """\
seed: 0
model: {scene_size: 96, crop_size: 32}
data:
  scene:
    - path: data/train/annotations.json
      val: data/val/annotations.json
      max_val: 4
  crop: []
  scene_batch_size: 4
  augment: false
threads: 1
optim: {lr: 0.004, epochs: 4, steps_per_epoch: 30}
"""
EXPERIMENT = "pipeline-resume-test"


def _command(tmp_path) -> list[str]:
    return [sys.executable, "-m", "mouaadnet.cli", "pipeline", "run", "--config", str(tmp_path / "tiny.yaml"),
        "--cache", "--pipeline-root", str(tmp_path / "kfp"), "--experiment", EXPERIMENT, "--pretrained", "",
        "--min-ap50", "2", "--qat-steps", "2", "--triton-repo", str(tmp_path / "triton_repo")]


def _train_runs(client):
    from mouaadnet.training import durable

    exp = client.get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else client.search_runs([exp.experiment_id], f"tags.`{durable.KEY_TAG}` LIKE '%'")


def _kill_after_first_checkpoint(process: subprocess.Popen, client, deadline: float) -> str:
    """SIGKILL the whole process group once a train run says a checkpoint is in its artifact store."""
    from mouaadnet.training import durable

    while time.monotonic() < deadline and process.poll() is None:
        runs = [r for r in _train_runs(client) if int(r.data.tags.get(durable.EPOCHS_TAG, "0")) >= 1]
        if runs:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return runs[0].info.run_id
        time.sleep(0.3)
    process.kill()
    pytest.fail(f"no checkpoint uploaded before the deadline (exit {process.poll()}):\n{process.stdout.read()}")


def _wait_group_gone(pgid: int) -> None:
    for _ in range(100):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"processes of group {pgid} outlived the kill")


def test_a_killed_pipeline_run_resumes_training_in_the_same_mlflow_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from mouaadnet.pipeline import dvc_data
    from mouaadnet.training import durable

    dvc_data.ensure_data(PROJECT_ROOT)
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "examples").symlink_to(PROJECT_ROOT / "examples")  # real_val: examples/real, relative to the cwd
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("AWS_ACCESS_KEY_ID", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    first = subprocess.Popen(_command(tmp_path), cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_run = _kill_after_first_checkpoint(first, client, time.monotonic() + 240)
    _wait_group_gone(first.pid)
    done_before = int(client.get_run(killed_run).data.tags[durable.EPOCHS_TAG])
    assert client.get_run(killed_run).info.status == "RUNNING"  # nobody was left to end it

    second = subprocess.run(_command(tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-6000:]
    assert f"train: resuming MLflow run {killed_run} after epoch {done_before}" in output
    assert [r.info.run_id for r in _train_runs(client)] == [killed_run]  # one train run, continued
    run = client.get_run(killed_run)
    assert run.info.status == "FINISHED"
    assert run.data.tags[durable.RESUMED_TAG] == str(done_before) and 1 <= done_before < 4
    assert [m.step for m in client.get_metric_history(killed_run, "loss")] == [1, 2, 3, 4]  # each epoch once
    parents = client.search_runs([run.info.experiment_id], "tags.`pipeline.step` = 'pipeline'",
                                 order_by=["attributes.start_time DESC"])
    assert len(parents) == 2 and parents[0].info.status == "FINISHED"  # the killed one was never ended
    adopted = parents[0].data.tags
    assert adopted["run.train"] == killed_run  # the re-submitted pipeline run's train step is the resumed run
    prepared = client.search_runs([run.info.experiment_id], "tags.`pipeline.step` = 'prepare_data'")
    assert [r.info.run_id for r in prepared] == [adopted["run.prepare_data"]]  # from the cache, not redone

    # Submitted once more after it finished: the train step comes from the cache (its Metrics output is a file,
    # which kfp.local's cache needs), so no training starts and no train run is added.
    third = subprocess.run(_command(tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = third.stdout + third.stderr
    assert third.returncode == 0, output[-6000:]
    assert re.search(r"Executing task \S*evaluate", output), output[-6000:]  # the uncached steps ran
    assert not re.search(r"Executing task \S*train", output), output[-6000:]
    assert [r.info.run_id for r in _train_runs(client)] == [killed_run]
