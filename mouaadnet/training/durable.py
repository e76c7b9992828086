"""Checkpoints that outlive the machine: copies of a run's last.pt / best.pt in its MLflow artifact store.

A pipeline's train step runs in a pod (or a kfp.local task folder) that a preemption takes away with its disk.
After every epoch rank 0 uploads both files to the run's artifact store (S3 behind the tracking server on a
cluster, ./mlruns locally), tagged with the step's resume key; a re-submitted run with the same key finds the
run, downloads the newest complete copy and continues it, in the same MLflow run.

Two slots (``resume/a``, ``resume/b``) alternate by epoch and the ``resume.slot`` tag moves only after a slot's
upload finished: an upload cut off by a kill never replaces the copy a resume reads, on any store (a local
artifact store copies files in place, it has no atomic rename).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mouaadnet.tracking import retry_until, tracking_uri

KEY_TAG = "resume.key"  # what the run trains (config, data digests, schedule): see pipeline.launch.resume_key
SLOT_TAG = "resume.slot"  # artifact folder of the newest complete copy
EPOCHS_TAG = "resume.epochs_done"  # epochs that copy holds
RESUMED_TAG = "resume.resumed_after"  # epochs done at each resume, comma-separated
FILES = ("last.pt", "best.pt")
UNFINISHED = ("RUNNING", "FAILED", "KILLED")  # a killed process leaves its run RUNNING


def _client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri())


def upload(run_id: str, out_dir: str | Path, epochs_done: int, wait: float = 60.0) -> bool:
    """Copy last.pt and best.pt of ``out_dir`` to the run's artifact store; False (warned) when the store stayed
    unreachable for ``wait`` seconds: training goes on and the next epoch tries again."""
    slot = f"resume/{'ab'[epochs_done % 2]}"
    files = [Path(out_dir) / name for name in FILES if (Path(out_dir) / name).is_file()]

    def send() -> None:
        client = _client()
        for path in files:
            client.log_artifact(run_id, str(path), slot)
        client.set_tag(run_id, SLOT_TAG, slot)  # only now does a resume read this slot
        client.set_tag(run_id, EPOCHS_TAG, str(epochs_done))

    return retry_until(send, wait, f"uploading the resume checkpoint of epoch {epochs_done}")


def find_resumable(experiment: str, key: str) -> str | None:
    """The newest unfinished run of ``experiment`` tagged ``key`` that has an uploaded checkpoint."""
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`{KEY_TAG}` = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        if run.info.status in UNFINISHED and run.data.tags.get(SLOT_TAG):
            return run.info.run_id
    return None


def download(run_id: str, out_dir: str | Path) -> int:
    """Put the run's newest complete copy into ``out_dir`` (last.pt, best.pt); returns the epochs it holds."""
    client = _client()
    tags = client.get_run(run_id).data.tags
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        local = Path(client.download_artifacts(run_id, tags[SLOT_TAG], tmp))
        for name in FILES:
            if (local / name).is_file():
                shutil.move(str(local / name), out / name)
    done = tags.get(EPOCHS_TAG, "0")
    client.set_tag(run_id, RESUMED_TAG, ",".join(filter(None, [tags.get(RESUMED_TAG), done])))
    return int(done)
