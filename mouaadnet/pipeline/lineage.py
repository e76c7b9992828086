"""MLflow lineage of a pipeline run: one parent run, a child run per step, and the Model Registry.

- ``start_pipeline_run`` opens the **parent run** (pipeline params, git commit, KFP run id, tag
  ``pipeline.kfp_run_id``); ``finish_pipeline_run`` (the exit handler) ends it FINISHED or FAILED.
- Each step logs a **child run** (``pipeline.step`` tag). Steps that Kubeflow may cache (prepare_data, train,
  reparameterize, qat, export_onnx) take no run-specific input, so that their cache key is the data version,
  the config and their upstream artifacts only; their child runs are adopted by the parent run afterwards
  (``adopt_runs``, called by evaluate; a reused cached run is recorded on the parent as ``reused.<step>``).
  Steps that never cache (evaluate, compile_tensorrt, publish) open their child run under the parent directly.
- ``log_onnx_model`` logs an ONNX model with its signature; ``champion`` reads the registry's champion alias.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mouaadnet.pipeline.params import config_digest, validate_params

PARENT_TAG = "mlflow.parentRunId"
STEP_TAG = "pipeline.step"
STEP_ERROR_TAG = "pipeline.step_error"
FAILED_STEPS_TAG = "pipeline.failed_steps"
KFP_RUN_TAG = "pipeline.kfp_run_id"
PIPELINE_TAG = "pipeline.name"
PIPELINE_NAME = "mouaadnet"
DEFAULT_EXPERIMENT = "mouaadnet-pipeline"
DEFAULT_REGISTERED_MODEL = "mouaadnet-detector"
# Higher is better; the champion moves only when a candidate beats it on this (see champion.py).
PRIMARY_METRIC = "real_AP50"
DATASET_NAME = "data"  # the DVC-tracked dataset (data.dvc), as MLflow dataset inputs name it; digest: its md5


def _mlflow():
    import mlflow

    from mouaadnet.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def _client():
    return _mlflow().MlflowClient()


def start_pipeline_run(experiment: str, params: dict[str, Any], kfp_run_id: str = "",
                       run_name: str | None = None) -> str:
    """Open the parent run (left RUNNING for the steps; the exit handler ends it) and return its id."""
    from mlflow.entities import Param

    from mouaadnet.tracking import PROJECT_ROOT, git_commit, log_dataset, source_tags, use_experiment

    validate_params(params)
    _mlflow()
    client = _client()
    exp = use_experiment(experiment)
    tags = {**source_tags("pipeline"), PIPELINE_TAG: PIPELINE_NAME, KFP_RUN_TAG: kfp_run_id, "git_commit": git_commit(),
            STEP_TAG: "pipeline"}
    run = client.create_run(exp.experiment_id, tags=tags,
                            run_name=run_name or f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}")
    run_id = run.info.run_id
    values = {k: str(v)[:6000] for k, v in params.items() if k != "config"}
    if "config" in params:
        values["config_sha"] = config_digest(str(params["config"]))
        client.log_text(run_id, str(params["config"]), "pipeline/config.yaml")
    items = [Param(k, v) for k, v in values.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])
    if params.get("data_version"):
        log_dataset(DATASET_NAME, str(params["data_version"]), str(PROJECT_ROOT / DATASET_NAME), run_id=run_id)
    return run_id


def find_pipeline_run(experiment: str, kfp_run_id: str) -> str | None:
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None or not kfp_run_id:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{KFP_RUN_TAG}` = '{kfp_run_id}' "
                              f"and tags.`{STEP_TAG}` = 'pipeline'", max_results=1)
    return runs[0].info.run_id if runs else None


def adopt_runs(parent_run_id: str, runs: dict[str, str]) -> dict[str, str]:
    """Make each step run (step -> run id) a child of the parent; runs that already belong to another
    pipeline run (a Kubeflow cache hit) are recorded on the parent as ``reused.<step>`` instead."""
    if not parent_run_id:
        return {}
    client = _client()
    outcome = {}
    for step, run_id in runs.items():
        if not run_id:
            continue
        run = client.get_run(run_id)
        owner = run.data.tags.get(PARENT_TAG)
        if owner in (None, "", parent_run_id):
            client.set_tag(run_id, PARENT_TAG, parent_run_id)
            client.set_tag(parent_run_id, f"run.{step}", run_id)
            outcome[step] = "child"
        else:
            client.set_tag(parent_run_id, f"reused.{step}", run_id)
            outcome[step] = "reused"
        if step == "prepare_data" and run.data.tags.get("data_fingerprint"):
            client.set_tag(parent_run_id, "data_fingerprint", run.data.tags["data_fingerprint"])
        if step == "train":
            _copy_dataset_inputs(client, run, parent_run_id)
    return outcome


def _copy_dataset_inputs(client, run, parent_run_id: str) -> None:
    """The data the train run recorded (pinned folders' digests) also on the parent: its Dataset column then says
    what the pipeline run trained on, not only the data.dvc version it prepared."""
    from mlflow.entities import DatasetInput

    have = {(d.dataset.name, d.dataset.digest) for d in client.get_run(parent_run_id).inputs.dataset_inputs}
    new = [DatasetInput(d.dataset, d.tags) for d in run.inputs.dataset_inputs
           if (d.dataset.name, d.dataset.digest) not in have]
    if new:
        client.log_inputs(parent_run_id, datasets=new)


def finish_pipeline_run(experiment: str, kfp_run_id: str, state: str, error: str = "",
                        since_ms: int | None = None) -> str | None:
    """Exit handler: end the parent run FINISHED (state SUCCEEDED) or FAILED (anything else). Step runs of this
    pipeline run left without a parent (a step that failed before evaluate adopted it) are adopted, and any
    still RUNNING is ended FAILED. Creates a FAILED parent if the pipeline failed before it was opened."""
    client = _client()
    parent = find_pipeline_run(experiment, kfp_run_id)
    ok = state == "SUCCEEDED"
    if parent is None:
        if ok:
            return None
        parent = start_pipeline_run(experiment, {}, kfp_run_id, run_name="pipeline-failed-early")
    run = client.get_run(parent)
    start = since_ms if since_ms is not None else run.info.start_time
    orphans = client.search_runs([run.info.experiment_id], filter_string=f"attributes.start_time >= {start}",
                                 max_results=200)
    failed: dict[str, str] = {}
    for orphan in orphans:
        tags = orphan.data.tags
        if orphan.info.run_id == parent or tags.get(STEP_TAG) in (None, "pipeline"):
            continue
        if not tags.get(PARENT_TAG):
            client.set_tag(orphan.info.run_id, PARENT_TAG, parent)
        if tags.get(PARENT_TAG, parent) != parent:
            continue
        if orphan.info.status == "RUNNING":  # its process died: the step did not finish
            client.set_terminated(orphan.info.run_id, "FAILED")
            failed.setdefault(tags[STEP_TAG], tags.get(STEP_ERROR_TAG, "its process ended without finishing"))
        elif orphan.info.status in ("FAILED", "KILLED"):
            failed[tags[STEP_TAG]] = tags.get(STEP_ERROR_TAG) or failed.get(tags[STEP_TAG]) or orphan.info.status
    client.set_tag(parent, "pipeline.state", state)
    if failed and not ok:
        client.set_tag(parent, FAILED_STEPS_TAG, ",".join(sorted(failed)))
        named = "; ".join(f"step {step} failed: {why}" for step, why in sorted(failed.items()))
        error = f"{named} ({error})" if error else named
    if error:
        client.set_tag(parent, "pipeline.error", error[:4000])
    client.set_terminated(parent, "FINISHED" if ok else "FAILED")
    return parent


def _record_step_failure(step: str, experiment: str, parent_run_id: str, error: BaseException) -> None:
    """A FAILED run tagged with the step and its error, so the exit handler can name the step that failed even
    when it died before opening its own run (an invalid config, a missing artifact). Best effort: it never
    hides the step's own error."""
    try:
        client = _client()
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        text = f"{type(error).__name__}: {error}".strip()
        tags = {STEP_TAG: step, STEP_ERROR_TAG: text[:4000], **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
        run = client.create_run(exp_id, tags=tags, run_name=f"{step} (failed)")
        client.set_terminated(run.info.run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
    except Exception:  # noqa: BLE001 - tracking down must not replace the real error
        pass


def records_failure(step: str):
    """Decorator for a pipeline step function: when it raises, record the failure (see _record_step_failure)."""

    def wrap(func):
        signature = inspect.signature(func)

        @functools.wraps(func)
        def inner(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except BaseException as error:
                if getattr(error, "mouaadnet_step_run", None):  # its step_run already recorded it
                    raise
                bound = signature.bind_partial(*args, **kwargs).arguments
                _record_step_failure(step, bound.get("experiment") or DEFAULT_EXPERIMENT,
                                     bound.get("parent_run_id") or "", error)
                raise

        return inner

    return wrap


@contextlib.contextmanager
def step_run(step: str, parent_run_id: str = "", experiment: str = DEFAULT_EXPERIMENT,
             tags: dict[str, str] | None = None) -> Iterator[Any]:
    """A child run of ``parent_run_id`` (or a plain run in ``experiment``): FAILED when the step raises."""
    from mouaadnet.tracking import mlflow_run

    mlflow = _mlflow()
    if parent_run_id:
        parent = _client().get_run(parent_run_id)
        experiment = _client().get_experiment(parent.info.experiment_id).name
    all_tags = {STEP_TAG: step, **({PARENT_TAG: parent_run_id} if parent_run_id else {}), **(tags or {})}
    while mlflow.active_run() is not None:  # a leftover run of this process must not become the parent
        mlflow.end_run()
    with mlflow_run(experiment, run_name=step, tags=all_tags) as run:
        try:
            yield run
        except BaseException as error:  # the run ends FAILED/KILLED (mlflow_run); say why, once
            with contextlib.suppress(Exception):
                _client().set_tag(run.info.run_id, STEP_ERROR_TAG, f"{type(error).__name__}: {error}"[:4000])
                error.mouaadnet_step_run = run.info.run_id  # records_failure: already recorded here
            raise


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def write_metrics_artifact(path: str, metrics: dict[str, Any]) -> None:
    """A KFP Metrics output's values also as a JSON file at its path. kfp.local's cache treats a local artifact
    without a file as missing and re-runs the task, and a Metrics artifact otherwise lives in metadata only: without
    the file a finished train step trained again whenever its pipeline was re-submitted."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(metrics, indent=1, sort_keys=True, default=str))


def log_onnx_model(path: Path, name: str, example) -> str:
    """mlflow.onnx.log_model with a signature inferred from a real run and an input example; returns model id."""
    import onnx
    from mlflow.models import infer_signature

    from model.export import run_onnx

    mlflow = _mlflow()
    outputs = run_onnx(path, example)
    info = mlflow.onnx.log_model(onnx.load(str(path)), name=name, input_example=example,
                                 signature=infer_signature(example, outputs))
    mlflow.log_artifact(str(path) + ".json", artifact_path=f"sidecars/{name}")
    return getattr(info, "model_id", None) or info.model_uri


def _champion(client, name: str) -> tuple[str, float] | None:
    try:
        current = client.get_model_version_by_alias(name, "champion")
    except Exception:  # noqa: BLE001 - MlflowException when the alias does not exist
        return None
    try:
        return current.version, float(current.tags.get(PRIMARY_METRIC, "nan"))
    except ValueError:
        return current.version, float("nan")
