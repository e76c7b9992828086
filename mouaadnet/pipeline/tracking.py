"""MLflow tracking: where runs go, and runs that end FAILED/KILLED instead of FINISHED on errors."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a sqlite store in the current folder (works with no server)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def mlflow_run(experiment: str, run_name: str | None = None, run_id: str | None = None,
               tags: dict[str, str] | None = None, nested: bool = False) -> Iterator[Any]:
    """Start (or resume, with ``run_id``) a run; an exception ends it FAILED, Ctrl-C/SIGTERM ends it KILLED."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if run_id is None:
        mlflow.set_experiment(experiment)
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
