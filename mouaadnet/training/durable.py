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


def find_resumable(experiment: str, key: str | None) -> str | None:
    """The newest unfinished run of ``experiment`` tagged ``key`` (None: any key) that has an uploaded checkpoint."""
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    tagged = f"tags.`{KEY_TAG}` = '{key}'" if key is not None else f"tags.`{KEY_TAG}` != ''"
    runs = client.search_runs([exp.experiment_id], tagged, order_by=["attributes.start_time DESC"], max_results=50)
    return next((r.info.run_id for r in runs if r.info.status in UNFINISHED and r.data.tags.get(SLOT_TAG)), None)


def download(run_id: str, out_dir: str | Path) -> int:
    """Put the run's newest complete copy into ``out_dir`` (last.pt, best.pt) to resume it there; returns the
    epochs it holds."""
    done = fetch(run_id, out_dir)
    client = _client()
    tags = client.get_run(run_id).data.tags
    client.set_tag(run_id, RESUMED_TAG, ",".join(filter(None, [tags.get(RESUMED_TAG), str(done)])))
    return done


def fetch(run_id: str, out_dir: str | Path) -> int:
    """Copy the run's newest complete copy into ``out_dir`` (last.pt, best.pt); returns the epochs it holds."""
    client = _client()
    tags = client.get_run(run_id).data.tags
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        local = Path(client.download_artifacts(run_id, tags[SLOT_TAG], tmp))
        for name in FILES:
            if (local / name).is_file():
                shutil.move(str(local / name), out / name)
    return int(tags.get(EPOCHS_TAG, "0"))


# ---- carried checkpoints: a copy small enough to commit, for a run that must continue on another machine -------
CARRIED_MAX_BYTES = 12 * 2**20  # what the repository accepts under weights/
CARRIED_FORMAT = "mouaadnet-carried-1"


class CarryError(RuntimeError):
    """A carried checkpoint that cannot be written or does not continue this run; the message says why."""


def _bf16(tree):
    """Floating-point tensors of a nested state as bf16 (ints and step counters unchanged)."""
    import torch

    if isinstance(tree, dict):
        return {k: (v if k == "step" else _bf16(v)) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor) and tree.is_floating_point():
        return tree.to(torch.bfloat16)
    return tree


def slim_state(last: dict, best: dict | None, key: str) -> dict:
    """One file from last.pt (+ the best epoch's EMA weights): the weights stay fp32, the optimizer moments and the
    best weights bf16. Resuming from it continues the schedule, data stream and RNG exactly; only the Adam
    moments carry bf16 rounding (~3 significant digits), which the next steps wash out."""
    state = dict(last)
    state["optimizer"] = {**last["optimizer"], "state": _bf16(last["optimizer"]["state"])}
    if best is not None:
        best_weights = best.get("ema") or best["model"]
        state["best_weights"] = _bf16(best_weights)
    state["carried"] = {"format": CARRIED_FORMAT, "resume_key": key, "from_run": last.get("mlflow_run_id")}
    return state


def carry(run_id: str, out: str | Path) -> Path:
    """Write run ``run_id``'s newest complete copy as one file (``out``, <= 12 MiB) that a train step on another
    machine continues from (``take_carried``): commit it under weights/ before the machine goes away."""
    from mouaadnet.training.checkpoint import atomic_save, load_checkpoint

    key = _client().get_run(run_id).data.tags.get(KEY_TAG)
    if not key:
        raise CarryError(f"MLflow run {run_id} has no {KEY_TAG} tag: only a pipeline train step can be carried")
    with tempfile.TemporaryDirectory() as tmp:
        done = fetch(run_id, tmp)  # not a resume: the run's own resume tags stay as they are
        last = load_checkpoint(Path(tmp) / "last.pt")
        best = load_checkpoint(Path(tmp) / "best.pt") if (Path(tmp) / "best.pt").is_file() else None
    out = Path(out)
    atomic_save(slim_state(last, best, key), out)
    size = out.stat().st_size
    if size > CARRIED_MAX_BYTES:
        out.unlink()
        raise CarryError(f"the carried checkpoint of run {run_id} would be {size / 2**20:.1f} MiB, over the "
                         f"{CARRIED_MAX_BYTES / 2**20:.0f} MiB the repository takes; nothing written")
    print(f"carried run {run_id} after epoch {done}: {out} ({size / 2**20:.1f} MiB)")
    return out


def take_carried(path: str | Path, key: str, out_dir: str | Path) -> int:
    """Put a carried checkpoint into ``out_dir`` as last.pt and best.pt; refuses one that trained something else
    (another config, schedule, starting point or data: another resume key). Returns the epochs it holds."""
    from mouaadnet.training.checkpoint import atomic_save, load_checkpoint

    state = load_checkpoint(path)
    carried = state.pop("carried", None)
    if not carried or carried.get("format") != CARRIED_FORMAT:
        raise CarryError(f"{path} is not a carried checkpoint (write one with `mouaadnet pipeline carry`)")
    if carried["resume_key"] != key:
        raise CarryError(f"{path} continues another training (resume key {carried['resume_key']}, this step's is "
                         f"{key}): the config, epochs, experiment, starting weights or data differ; nothing "
                         f"was resumed")
    finished = _finished_here(carried.get("from_run"))
    if finished is not None:
        raise CarryError(f"{path} continues MLflow run {carried['from_run']}, which this store holds as finished "
                         f"(after epoch {finished}): continuing it would train those epochs again into that run; its "
                         f"checkpoints are in its artifact store. Nothing was resumed (re-run without --resume-from, "
                         f"with --cache, to reuse the finished step)")
    best_weights = state.pop("best_weights", None)
    out = Path(out_dir)
    atomic_save(state, out / "last.pt")
    if best_weights is not None:
        best = {k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "scaler")}
        best.update(model=_float(best_weights), ema=_float(best_weights), epoch=state["best_epoch"])
        atomic_save(best, out / "best.pt")
    return int(state["epoch"]) + 1


def _finished_here(run_id: str | None) -> str | None:
    """Epochs done (tag) of ``run_id`` when this tracking store holds it as FINISHED; None when the run is unknown
    here (another machine's store: the usual case for a carried file), unfinished, or the store cannot say."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = _client().get_run(run_id)
    except MlflowException:
        return None
    return run.data.tags.get(EPOCHS_TAG, "?") if run.info.status == "FINISHED" else None


def _float(weights: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()} if weights else weights
