"""MLflow tracking: where runs go, runs that end FAILED/KILLED instead of FINISHED on errors, and what the MLflow UI
shows about them: experiments of kind "model training" (not GenAI), each run's source (git commit) and the
dataset it used (name + DVC md5 as digest + where it was read)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROJECT_NAME = "mouaadnet-ultra"
# MLflow 3's UI opens an experiment in its GenAI view (traces, token usage) unless told it holds model training
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a sqlite store in the current folder (works with no server)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit() -> str:
    """HEAD of the checkout; in the container image (no checkout) the commit it was built from."""
    if os.environ.get("MOUAADNET_GIT_COMMIT"):
        return os.environ["MOUAADNET_GIT_COMMIT"]
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


# How a tracking store says a row with that unique key was just inserted by someone else (sqlite, PostgreSQL, MySQL)
DUPLICATE_ROW = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def log_dataset(name: str, digest: str, source: str, context: str = "training", run_id: str | None = None) -> None:
    """Log the dataset as an input of the active run (or of ``run_id``): the runs table's Dataset column.

    Two runs of one experiment that log the same new dataset at the same moment (ablations started side by side)
    race on the store's unique (experiment, name, digest) row: the loser's insert fails. Its retry finds the
    winner's row and links the run to it, so the race costs one retry, not the run."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    data = dataset(name, digest, source)
    for attempt in range(3):
        try:
            if run_id is None:
                mlflow.log_input(data, context=context)
            else:
                entity = DatasetInput(data._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
                mlflow.MlflowClient().log_inputs(run_id, datasets=[entity])
            return
        except MlflowException as error:
            if attempt == 2 or not any(marker in str(error) for marker in DUPLICATE_ROW):
                raise
            time.sleep(0.5 * (attempt + 1))


LINEAGE_TAGS = ("git_commit", "data_fingerprint", "resumed_from_run", "resumed_at_epoch", "resume.resumed_after")


def training_lineage(train_run_id: str) -> dict[str, Any]:
    """Where a checkpoint came from, as the tracking store knows it: its train run, the pipeline run that owns it
    (with the KFP run id), the run it was carried from, the git commit and every dataset digest it trained on.
    The manifest of `ship` keeps this, so the lineage outlives the store. Raises when the store has no such run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri())
    run = client.get_run(train_run_id)
    tags = run.data.tags
    lineage: dict[str, Any] = {
        "tracking_uri": tracking_uri(),
        "experiment": client.get_experiment(run.info.experiment_id).name,
        "train_run": train_run_id,
        **{name: tags[name] for name in LINEAGE_TAGS if tags.get(name)},
        "data": [{"name": d.dataset.name, "digest": d.dataset.digest} for d in run.inputs.dataset_inputs],
    }
    parent = tags.get("mlflow.parentRunId")
    if parent:
        lineage["pipeline_run"] = parent
        lineage["kfp_run_id"] = client.get_run(parent).data.tags.get("pipeline.kfp_run_id", "")
    return lineage


# How long the end of a run waits for an unreachable tracking server (final metrics, status) before giving up.
FINAL_WAIT_ENV = "MOUAADNET_MLFLOW_WAIT"
DEFAULT_FINAL_WAIT = 120.0


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def final_wait() -> float:
    try:
        return max(0.0, float(os.environ.get(FINAL_WAIT_ENV, DEFAULT_FINAL_WAIT)))
    except ValueError:
        return DEFAULT_FINAL_WAIT


@contextmanager
def quick_http(retries: int = 1, timeout: int = 10) -> Iterator[None]:
    """MLflow REST calls that fail within seconds instead of MLflow's default minutes of retries (7 retries with
    exponential backoff): for calls whose failure is handled by retrying later (the epoch metrics)."""
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def retry_until(call, wait: float, what: str) -> bool:
    """Call ``call()`` (quick HTTP) until it succeeds or ``wait`` seconds passed; False (warned) on giving up."""
    deadline = time.monotonic() + wait
    delay = 1.0
    while True:
        try:
            with quick_http():
                call()
            return True
        except Exception as error:  # noqa: BLE001 - any tracking failure: retry, then report
            if time.monotonic() + delay > deadline:
                _warn(f"MLflow: {what} failed and was given up after {wait:.0f} s: {_short(error)}")
                return False
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


class MetricSpool:
    """Epoch metrics that survive a tracking-server outage.

    ``log`` queues the metrics with their step and wall-clock time, then delivers everything queued (oldest
    first, one ``log_batch`` each, original timestamps kept). While the server is unreachable the queue is
    also written to ``path`` (JSON lines), so a run killed during the outage keeps them on disk; a resumed
    run (``load``) delivers them. ``flush(wait)`` at the end keeps trying for ``wait`` seconds.
    """

    def __init__(self, run_id: str, path: str | Path):
        self.run_id, self.path = run_id, Path(path)
        self.pending: list[tuple[int, dict[str, float], int]] = []
        self.failed_attempts = 0
        self.delivered_late = 0
        self._warned = False

    def load(self) -> int:
        if not self.path.is_file():
            return 0
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
                self.pending.append((int(entry["step"]), dict(entry["metrics"]), int(entry["timestamp"])))
            except (ValueError, KeyError, TypeError):
                continue
        return len(self.pending)

    def log(self, metrics: dict[str, float], step: int) -> bool:
        self.pending.append((step, {k: float(v) for k, v in metrics.items()}, int(time.time() * 1000)))
        return self.flush()

    def _save(self) -> None:
        if not self.pending:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps({"run_id": self.run_id, "step": step, "timestamp": ts, "metrics": m})
                               + "\n" for step, m, ts in self.pending))
        os.replace(tmp, self.path)

    def _deliver(self) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient()
        while self.pending:
            step, metrics, ts = self.pending[0]
            client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])
            self.pending.pop(0)
            if self._warned:
                self.delivered_late += 1

    def flush(self, wait: float = 0.0) -> bool:
        if not self.pending:
            return True
        delivered = retry_until(self._deliver, wait, "logging epoch metrics") if wait > 0 else self._try_once()
        if delivered and self._warned:
            _warn(f"MLflow reachable again: {self.delivered_late} queued epoch(s) of metrics delivered")
        self._save()
        return delivered

    def _try_once(self) -> bool:
        try:
            with quick_http():
                self._deliver()
            return True
        except Exception as error:  # noqa: BLE001 - kept locally, retried at the next epoch / the end
            self.failed_attempts += 1
            if not self._warned:
                _warn(f"MLflow unreachable ({_short(error)}); training goes on, epoch metrics are kept in "
                      f"{self.path} and retried")
                self._warned = True
            return False


@contextmanager
def mlflow_run(experiment: str, run_name: str | None = None, run_id: str | None = None,
               tags: dict[str, str] | None = None, nested: bool = False, entry_point: str | None = None) -> Iterator[Any]:
    """Start (or resume, with ``run_id``) a run; an exception ends it FAILED, Ctrl-C/SIGTERM ends it KILLED.

    A new run gets the source tags (entry point: ``entry_point``, else ``run_name``); its experiment is a
    model-training one. The final status is retried for up to $MOUAADNET_MLFLOW_WAIT seconds (default 120) when
    the tracking server is unreachable, so a short outage at the end of a run still leaves the right status."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if run_id is None:
        use_experiment(experiment)
        tags = {**source_tags(entry_point if entry_point is not None else run_name or ""), **(tags or {})}
    run = mlflow.start_run(run_id=run_id, run_name=run_name, tags=tags, nested=nested)

    def finish(status: str) -> None:
        retry_until(lambda: mlflow.MlflowClient().set_terminated(run.info.run_id, status), final_wait(),
                    f"marking run {run.info.run_id} {status}")
        try:
            with quick_http(retries=0, timeout=5):
                mlflow.end_run(status)  # pops the fluent run stack (its own status call repeats ours)
        except Exception:  # noqa: BLE001 - the status was set above, or its failure reported
            pass

    try:
        yield run
    except KeyboardInterrupt:
        finish("KILLED")
        raise
    except BaseException:
        finish("FAILED")
        raise
    finish("FINISHED")


def log_params_safely(params: dict[str, Any]) -> None:
    """Log params in chunks (MLflow caps a batch at 100) with values stringified and length-capped."""
    import mlflow

    items = [(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))
