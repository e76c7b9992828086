"""Local services: process handling (unit) and real SeaweedFS S3 + mlflow server on loopback (integration)."""

from __future__ import annotations

import os
import signal
import sys
import time
from urllib.parse import urlparse

import pytest

from mouaadnet.pipeline.services import LOOPBACK, ManagedProcess, ServiceError, free_ports, mlflow_command

# ------------------------------------------------------------------------------- process handling (fast)


def test_free_ports_distinct():
    ports = free_ports(8)
    assert len(set(ports)) == 8 and all(1024 < p < 65536 for p in ports)


def test_early_exit_names_log_and_output(tmp_path):
    log = tmp_path / "svc.log"
    proc = ManagedProcess("dummy", [sys.executable, "-c", "print('boom: bad flag'); raise SystemExit(3)"], log)
    proc.start()
    with pytest.raises(ServiceError) as info:
        proc.wait_ready(lambda: False, timeout=30)
    message = str(info.value)
    assert "exited with code 3" in message and str(log) in message and "boom: bad flag" in message


def test_timeout_stops_whole_process_group(tmp_path):
    log = tmp_path / "svc.log"
    # A leader with a child that ignores SIGTERM: stop() must still clear the group.
    script = ("import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', "
              "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)']); "
              "time.sleep(120)")
    proc = ManagedProcess("sleeper", [sys.executable, "-c", script], log).start()
    time.sleep(0.5)
    with pytest.raises(ServiceError, match="not ready after 1 s"):
        proc.wait_ready(lambda: False, timeout=1)
    assert not proc.alive()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("a process of the group outlived stop()")


def test_mlflow_command_binds_loopback_one_worker():
    cmd = mlflow_command("mlflow", 5123, "sqlite:////tmp/x.db", "s3://b/mlflow")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert "--serve-artifacts" in cmd and cmd[cmd.index("--artifacts-destination") + 1] == "s3://b/mlflow"


# ------------------------------------------------------------------------------- real services


@pytest.mark.integration
def test_seaweedfs_s3_put_get_and_auth(s3_service):
    import boto3
    from botocore.exceptions import ClientError

    assert urlparse(s3_service.endpoint_url).hostname == LOOPBACK
    client = s3_service.client()
    body = os.urandom(300_000)
    client.put_object(Bucket=s3_service.bucket, Key="test/blob.bin", Body=body)
    assert client.get_object(Bucket=s3_service.bucket, Key="test/blob.bin")["Body"].read() == body
    assert "test/blob.bin" in s3_service.list_keys("test/")

    intruder = boto3.client("s3", endpoint_url=s3_service.endpoint_url, aws_access_key_id="nobody",
                            aws_secret_access_key="wrong", region_name=s3_service.region)
    with pytest.raises(ClientError) as info:
        intruder.get_object(Bucket=s3_service.bucket, Key="test/blob.bin")
    assert info.value.response["Error"]["Code"] in {"InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch"}


@pytest.mark.integration
def test_mlflow_server_run_params_metrics_artifact_in_s3(mlflow_server_uri, s3_service, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_experiment("services-test")
    payload = tmp_path / "report.txt"
    payload.write_text("lineage check\n")
    with mlflow.start_run(run_name="parent") as parent:
        mlflow.log_params({"epochs": 2, "data_version": "abc123"})
        with mlflow.start_run(run_name="child", nested=True) as child:
            mlflow.log_metric("loss", 0.5, step=0)
            mlflow.log_metric("loss", 0.25, step=1)
            mlflow.log_artifact(str(payload), artifact_path="reports")

    client = MlflowClient(mlflow_server_uri)
    got = client.get_run(child.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert got.data.metrics["loss"] == 0.25
    assert [m.value for m in client.get_metric_history(child.info.run_id, "loss")] == [0.5, 0.25]
    assert client.get_run(parent.info.run_id).data.params == {"epochs": "2", "data_version": "abc123"}
    assert got.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied, client holds no S3 credentials

    # The artifact is in SeaweedFS under the server's --artifacts-destination ...
    keys = s3_service.list_keys("mlflow/")
    wanted = [k for k in keys if k.endswith(f"{child.info.run_id}/artifacts/reports/report.txt")]
    assert wanted, keys
    obj = s3_service.client().get_object(Bucket=s3_service.bucket, Key=wanted[0])
    assert obj["Body"].read() == b"lineage check\n"
    # ... and comes back through the proxy.
    local = mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="reports/report.txt",
                                                dst_path=str(tmp_path / "dl"))
    assert open(local).read() == "lineage check\n"


@pytest.mark.integration
def test_mlflow_model_registry_aliases(mlflow_server_uri, s3_service):
    import mlflow
    import numpy as np
    import onnx
    from mlflow import MlflowClient
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)

    name = "services-test-tiny"
    mlflow.set_experiment("services-test-registry")
    versions = []
    for _ in range(2):
        with mlflow.start_run():
            info = mlflow.onnx.log_model(model, name="model", registered_model_name=name,
                                         input_example=np.zeros((1, 2), np.float32))
            versions.append(str(info.registered_model_version))
    client = MlflowClient(mlflow_server_uri)
    client.set_registered_model_alias(name, "champion", versions[0])
    client.set_registered_model_alias(name, "candidate", versions[1])
    client.set_model_version_tag(name, versions[1], "artifact_sha256", "0" * 64)

    assert client.get_model_version_by_alias(name, "champion").version == versions[0]
    candidate = client.get_model_version_by_alias(name, "candidate")
    assert candidate.version == versions[1] and candidate.tags["artifact_sha256"] == "0" * 64
    client.set_registered_model_alias(name, "champion", versions[1])  # promote
    assert sorted(client.get_model_version(name, versions[1]).aliases) == ["candidate", "champion"]

    loaded = mlflow.onnx.load_model(f"models:/{name}@champion")
    assert loaded.graph.node[0].op_type == "Relu"
    model_keys = [k for k in s3_service.list_keys("mlflow/") if k.endswith("/model.onnx")]
    assert len(model_keys) >= 2, model_keys
