"""Where the pipeline's train step trains when it is not one process in its own task.

- ``train_with_torchrun``: one node with G GPUs: torchrun (--standalone) in the task's pod, one process per GPU;
- ``train_on_nodes``: N nodes: the dataset, the starting checkpoint and the resolved config onto the shared volume,
  a Kubeflow Trainer TrainJob running the same entry point (``mouaadnet.pipeline.trainjob``), waited for;
- ``summary_from_checkpoint``: what the step reports, read from rank 0's last.pt (run id, best score, metrics).
"""

from __future__ import annotations

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


def write_config(cfg, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return path


def train_with_torchrun(cfg, work: Path, gpus: int) -> None:
    """One node, ``gpus`` GPUs: torchrun (--standalone) runs `mouaadnet train` with one process per GPU."""
    import subprocess

    from mouaadnet.training.distributed import torchrun_command

    config_path = write_config(cfg, work / "train_config.yaml")
    command = torchrun_command(gpus, ["train", "--config", str(config_path), "--out", str(work), "--quiet",
                                      "--run-name", "train"])
    print(" ".join(command), flush=True)
    done = subprocess.run(command, check=False)  # its output goes to this task's log
    if done.returncode != 0:
        raise PipelineStepError(f"torchrun with {gpus} processes failed (exit code {done.returncode}); the failing "
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
