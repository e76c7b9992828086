"""Security checks, read from the running system rather than from flags: listening sockets, credentials in
what MLflow and the pipeline spec keep, how checkpoints are loaded."""

from __future__ import annotations

import ast
import ipaddress
import subprocess

import psutil
import pytest
import yaml
from _rel import PYTHON, ROOT, child_env

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]



def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # gRPC's IPv6 socket bound to ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)

CANARY = "canary-Secr3t-0f-the-suite"


def _listening(pid: int) -> list[tuple[str, int, str]]:
    """(ip, port, process name) of every LISTEN socket of ``pid`` and its descendants."""
    found = []
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((conn.laddr.ip, conn.laddr.port, proc.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _check_loopback(scoreboard, what: str, pid: int):
    sockets = _listening(pid)
    exposed = [s for s in sockets if not _is_loopback(s[0])]
    ok = bool(sockets) and not exposed
    scoreboard.record("security", f"{what} listens on loopback only",
                      done=f"read the LISTEN sockets of {what} (pid {pid}) and its children with psutil",
                      observed=f"{len(sockets)} listening: " + ", ".join(sorted({f'{ip}:{port}' for ip, port, _ in sockets}))
                      + (f"; EXPOSED {exposed}" if exposed else ""), ok=ok)
    assert ok, sockets


@pytest.mark.integration
def test_triton_listens_on_loopback_only(triton, scoreboard):
    _check_loopback(scoreboard, "tritonserver", triton.pid)
    _check_loopback(scoreboard, "request guard (public gRPC/HTTP ports)", triton.guard.pid)


@pytest.mark.integration
def test_mlflow_and_seaweedfs_listen_on_loopback_only(s3_service, mlflow_tracking_server, scoreboard):
    """The session's services (tests/conftest_services.py), as `make run` and the pipeline tests start them."""
    _check_loopback(scoreboard, "SeaweedFS (S3)", s3_service.pid)
    _check_loopback(scoreboard, "mlflow server", mlflow_tracking_server.pid)


def test_no_credential_in_mlflow_or_run_outputs(tmp_path, scoreboard):
    """Train with every credential variable set to a canary; nothing MLflow or the run folder keeps has it."""
    cfg = {"experiment": "rel-secrets", "model": {"scene_size": 64, "crop_size": 32},
           "data": {"scene": [{"path": "synthetic:8:0", "val": "synthetic:2:9"}], "scene_batch_size": 2},
           "optim": {"epochs": 1, "steps_per_epoch": 1}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    # MLFLOW_TRACKING_USERNAME is not among them: MLflow records it as the run's owner (tag mlflow.user), an
    # identity rather than a credential.
    secrets = {"AWS_ACCESS_KEY_ID": CANARY + "-id", "AWS_SECRET_ACCESS_KEY": CANARY,
               "MLFLOW_TRACKING_PASSWORD": CANARY + "-pw", "MLFLOW_TRACKING_TOKEN": CANARY + "-token"}
    env = child_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", **secrets)
    result = subprocess.run([PYTHON, "-m", "mouaadnet.cli", "train", "--config", str(tmp_path / "cfg.yaml"),
                             "--out", str(tmp_path / "out")], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("rel-secrets").experiment_id])[0]
    places = {"params": str(run.data.params), "tags": str(run.data.tags), "stdout": result.stdout,
              "stderr": result.stderr}
    for path in [*tmp_path.rglob("*")]:
        if path.is_file() and path.suffix in (".yaml", ".json", ".txt", ".log", ".pt", ".db", ".jsonl", ""):
            places[str(path.relative_to(tmp_path))] = path.read_bytes().decode("latin-1")
    leaks = sorted(name for name, text in places.items() if CANARY in text)
    ok = not leaks
    scoreboard.record("security", "no credential in MLflow params/tags, logs or run files",
                      done="mouaadnet train with AWS_* and MLFLOW_TRACKING_* set to a canary value",
                      observed=f"searched {len(places)} places (params, tags, stdout, stderr, checkpoints, config, "
                               f"sqlite store, artifacts): canary found in {leaks or 'none'}", ok=ok)
    assert ok, leaks


def test_no_credential_in_the_compiled_pipeline(tmp_path, monkeypatch, scoreboard):
    pytest.importorskip("kfp")
    from mouaadnet.kubeflow.runner import compile_pipeline

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, CANARY)
    spec = compile_pipeline(tmp_path / "pipeline.yaml").read_text()
    committed = (ROOT / "cluster" / "mouaadnet.yaml").read_text()
    ok = CANARY not in spec and CANARY not in committed and "mouaadnet-credentials" in spec
    scoreboard.record("security", "no credential in the compiled pipeline",
                      done="mouaadnet pipeline compile with credentials set to a canary in the environment",
                      observed="canary absent from the fresh and the committed spec; tasks read the Secret "
                               f"'mouaadnet-credentials': {'mouaadnet-credentials' in spec}", ok=ok)
    assert ok


def test_every_torch_load_is_weights_only(scoreboard):
    calls, unsafe = 0, []
    for path in [*(ROOT / "model").rglob("*.py"), *(ROOT / "mouaadnet").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func.value, "id", None) == "torch":
                calls += 1
                weights_only = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    unsafe.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    ok = calls > 0 and not unsafe
    scoreboard.record("security", "checkpoints load with weights_only=True",
                      done="parsed every torch.load call in model/ and mouaadnet/ (its Kubeflow components too)",
                      observed=f"{calls} calls, {len(unsafe)} without weights_only=True {unsafe}; a pickle that runs "
                               "code is refused (see the cli: loader cases)", ok=ok)
    assert ok, unsafe
