"""MLflow tracking: where runs go, runs that end FAILED/KILLED instead of FINISHED on errors, and what the MLflow UI
shows about them: experiments of kind "model training" (not GenAI), each run's source (git commit) and the
dataset it used (name + DVC md5 as digest + where it was read)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_NAME = "mouaadnet-ultra"
# MLflow 3's UI opens an experiment in its GenAI view (traces, token usage) unless told it holds model training
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a sqlite store in the current folder (works with no server)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_tags(entry_point: str = "") -> dict[str, str]:
    """Run tags the UI shows as Source (project and entry point) and Version (git commit)."""
    tags = {"mlflow.source.type": "PROJECT", "mlflow.source.name": PROJECT_NAME,
            "mlflow.source.git.commit": git_commit()}
    if entry_point:
        tags["mlflow.project.entryPoint"] = entry_point
    return tags


def use_experiment(name: str) -> Any:
    """``mlflow.set_experiment(name)``, tagged as a model-training experiment unless it already has a kind."""
    import mlflow

    experiment = mlflow.set_experiment(name)
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment


def dataset(name: str, digest: str, source: str) -> Any:
    """An MLflow dataset that records which data a run used without copying it: ``digest`` is the DVC md5 (or
    another fingerprint), ``source`` where it was read (a path or URI)."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource, S3ArtifactDatasetSource

    where = S3ArtifactDatasetSource(source) if source.startswith("s3://") else LocalArtifactDatasetSource(source)
    return MetaDataset(where, name=name, digest=digest[:36])


def log_dataset(name: str, digest: str, source: str, context: str = "training", run_id: str | None = None) -> None:
    """Log the dataset as an input of the active run (or of ``run_id``): the runs table's Dataset column."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    data = dataset(name, digest, source)
    if run_id is None:
        mlflow.log_input(data, context=context)
        return
    entity = DatasetInput(data._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
    mlflow.MlflowClient().log_inputs(run_id, datasets=[entity])


@contextmanager
def mlflow_run(experiment: str, run_name: str | None = None, run_id: str | None = None,
               tags: dict[str, str] | None = None, nested: bool = False, entry_point: str | None = None) -> Iterator[Any]:
    """Start (or resume, with ``run_id``) a run; an exception ends it FAILED, Ctrl-C/SIGTERM ends it KILLED.

    A new run gets the source tags (entry point: ``entry_point``, else ``run_name``); its experiment is a
    model-training one."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if run_id is None:
        use_experiment(experiment)
        tags = {**source_tags(entry_point if entry_point is not None else run_name or ""), **(tags or {})}
    run = mlflow.start_run(run_id=run_id, run_name=run_name, tags=tags, nested=nested)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def log_params_safely(params: dict[str, Any]) -> None:
    """Log params in chunks (MLflow caps a batch at 100) with values stringified and length-capped."""
    import mlflow

    items = [(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))
