"""Where the pipeline's train step trains when it is not one process in its own task, and what lets it resume.

- ``resume_key``: what a train step trains, as one digest: a re-submitted run with the same key resumes the
  unfinished MLflow run of that key from the checkpoint in its artifact store (``mouaadnet.training.durable``);
- ``processes``: how many training processes one CPU node runs (``nproc_per_node``, 0 = one per core when idle);
- ``train_with_torchrun``: one node with G GPUs, or P CPU processes: torchrun (--standalone) in the task's pod;
- ``train_on_nodes``: N nodes: the dataset, the starting checkpoint and the resolved config onto the shared volume,
  a Kubeflow Trainer TrainJob running the same entry point (``mouaadnet.pipeline.trainjob``), waited for;
- ``summary_from_checkpoint``: what the step reports, read from rank 0's last.pt (run id, best score, metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from mouaadnet.pipeline.params import PipelineStepError, train_config


def summary_from_checkpoint(work: Path) -> dict[str, Any]:
    """What a training run in other processes leaves: rank 0's last.pt has the run id, best score and metrics."""
    from mouaadnet.training.checkpoint import load_checkpoint

    last = work / "last.pt"
    if not last.is_file():
        raise PipelineStepError(f"training wrote no last.pt in {work}")
    state = load_checkpoint(last)
    return {"run_id": state["mlflow_run_id"], "best_score": float(state["best_score"]),
            "best_epoch": int(state["best_epoch"]) + 1, "metrics": dict(state["metrics"])}


def resume_key(config: str, epochs: int, steps_per_epoch: int, experiment: str, pretrained: str,
               datasets: list[tuple[str, str, str]]) -> str:
    """Digest of what the step trains: config text, schedule overrides, experiment, starting weights, data
    digests. Not where nor on how many processes: a run may resume on another machine and process count."""
    start = hashlib.sha256(Path(pretrained).read_bytes()).hexdigest() if pretrained else ""
    what = {"config": config, "epochs": epochs, "steps_per_epoch": steps_per_epoch, "experiment": experiment,
            "pretrained": start, "data": sorted((name, digest) for name, digest, _ in datasets)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def processes(nproc_per_node: int, cfg) -> int:
    """Training processes for one CPU node: ``nproc_per_node``, or with 0 one per core when the machine is
    otherwise idle (1-minute load under 0.5) and the global batches split evenly, else 1 (contention: one
    process with ``threads: auto`` degrades gracefully; DDP waits for its slowest process every step)."""
    if nproc_per_node > 0:
        return nproc_per_node
    from mouaadnet.training.threads import cores

    n = cores()
    batches = (cfg.data.scene_batch_size, cfg.data.crop_batch_size)
    if n > 1 and os.getloadavg()[0] < 0.5 and all(b % n == 0 for b in batches):
        return n
    return 1


def train_on_this_node(cfg, work: Path, key: str, nproc: int, datasets: list[tuple[str, str, str]] | None,
                       progress: bool = False, progress_every: float | None = None,
                       resume_from: str = "") -> dict[str, Any]:
    """Train on this node, in this process (``nproc`` 1) or with torchrun; resumes the unfinished MLflow run of
    ``key`` from the checkpoint in its artifact store when there is one, else the carried checkpoint
    ``resume_from`` (another machine's run, committed under weights/: a new MLflow run that records where it
    picked up), else starts a new run tagged ``key``. Returns the summary values (run id, best score and epoch,
    last metrics)."""
    resume = resume_checkpoint(cfg, work, key, resume_from)
    if nproc > 1:
        train_with_torchrun(cfg, work, nproc, resume, key, datasets)
        return summary_from_checkpoint(work)
    from mouaadnet.training.trainer import train

    result = train(cfg, work, resume=resume, progress=progress, run_name="train", progress_every=progress_every,
                   datasets=datasets, resume_key=key)
    return {"run_id": result.run_id, "best_score": result.best_score, "best_epoch": result.best_epoch,
            "metrics": result.last_metrics}


def resume_checkpoint(cfg, work: Path, key: str, resume_from: str = "") -> bool:
    """Put the checkpoint this step continues into ``work``: its own unfinished MLflow run's newest copy, else the
    carried file ``resume_from``; False when there is neither (a new run)."""
    from mouaadnet.training import durable

    run_id = durable.find_resumable(cfg.experiment, key)
    if run_id:
        done = durable.download(run_id, work)
        print(f"train: resuming MLflow run {run_id} after epoch {done} (its checkpoint, from its artifact store)",
              flush=True)
    elif resume_from:
        done = durable.take_carried(resume_from, key, work)
        print(f"train: continuing the carried checkpoint {resume_from} after epoch {done} (its MLflow run where "
              f"this store knows it, else a new run that records the run it came from)", flush=True)
    else:
        return False
    write_config(cfg, work / "config.yaml")  # a new run writes it at its start; this pod never saw that
    return True


def write_config(cfg, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return path


def train_with_torchrun(cfg, work: Path, nproc: int, resume: bool = False, key: str = "",
                        datasets: list[tuple[str, str, str]] | None = None) -> None:
    """One node: torchrun (--standalone) runs `mouaadnet train` with ``nproc`` processes (one per GPU, or CPU
    processes of one thread each: torchrun sets OMP_NUM_THREADS=1 and ``threads: auto`` shares the cores)."""
    import subprocess

    from mouaadnet.training.distributed import torchrun_command

    config_path = write_config(cfg, work / "train_config.yaml")
    args = ["train", "--config", str(config_path), "--out", str(work), "--quiet", "--run-name", "train"]
    if resume:
        args.append("--resume")
    if key:
        args += ["--resume-key", key]
    if datasets is not None:
        (work / "datasets.json").write_text(json.dumps(datasets))
        args += ["--datasets", str(work / "datasets.json")]
    command = torchrun_command(nproc, args)
    print(" ".join(command), flush=True)
    done = subprocess.run(command, check=False)  # its output goes to this task's log
    if done.returncode != 0:
        raise PipelineStepError(f"torchrun with {nproc} processes failed (exit code {done.returncode}); the failing "
                                f"rank and its error are in the log above")


def train_on_nodes(dataset_dir, config: str, epochs: int, steps_per_epoch: int, experiment: str, num_nodes: int,
                   gpus: int, image: str, volume: str, runtime: str, namespace: str, shared_dir, kube,
                   pretrained: str = "") -> tuple[Path, Path]:
    """Several nodes: dataset + config (+ the ``pretrained`` checkpoint, "" = from scratch) onto the shared volume,
    a TrainJob, wait. Returns (out dir, job folder)."""
    import signal

    from mouaadnet.pipeline import trainjob

    shared = Path(shared_dir)
    if not volume or not image:
        raise PipelineStepError("num_nodes > 1 needs train_volume (a ReadWriteMany PVC) and the trainer image")
    if not shared.is_dir():
        raise PipelineStepError(f"num_nodes > 1: the PVC {volume} is not mounted at {shared}")
    name = trainjob.job_name()
    root = shared / name
    shutil.copytree(dataset_dir, root / "data")
    cfg = train_config(config, root / "data", epochs, steps_per_epoch)
    cfg.experiment = experiment
    if pretrained:  # a path in this pod: the nodes read their copy on the volume
        cfg.pretrained = str(shutil.copyfile(pretrained, root / "pretrained.pt"))
    config_path = write_config(cfg, root / "config.yaml")
    manifest = trainjob.render_trainjob(name, namespace or trainjob.current_namespace(), image, num_nodes, gpus,
                                        str(config_path), str(root / "out"), volume, str(shared),
                                        runtime or trainjob.DEFAULT_RUNTIME)

    def cancelled(signum, frame):  # the pipeline run cancelled: run_trainjob deletes the TrainJob
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, cancelled)
    try:
        custom, core = kube or (None, None)
        trainjob.run_trainjob(manifest, custom, core, echo=lambda line: print(line, flush=True))
    except trainjob.TrainJobFailed as error:
        raise PipelineStepError(f"{error}; its files stay in {root} on the volume {volume}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return root / "out", root
