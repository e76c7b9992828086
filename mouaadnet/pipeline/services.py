"""Real local services for tests and `make run`: a SeaweedFS S3 endpoint and an `mlflow server`.

Both bind 127.0.0.1 on free ports, keep their data and logs in a folder the caller gives, are started as
their own process group and stopped by that id (SIGTERM, then SIGKILL after a grace period). Start-up
waits until the service answers; a failure raises `ServiceError` naming the log file.

    with seaweedfs_s3(tmp / "s3") as s3, mlflow_server(tmp / "mlflow", s3) as uri:
        mlflow.set_tracking_uri(uri)
        ...

`python -m mouaadnet.pipeline.services DIR` starts both and prints the environment to use them until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
DEFAULT_BUCKET = "mouaadnet"
DEFAULT_REGION = "us-east-1"


class ServiceError(RuntimeError):
    """A local service could not be started, did not become ready, or died."""


# --------------------------------------------------------------------------------------------- helpers


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """n distinct free TCP ports on host (all sockets held open together so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    # SeaweedFS derives nothing from these, but keep away from the +10000 gRPC convention's upper range.
    if any(p > 55000 for p in ports):
        return free_ports(n, host)
    return ports


def find_executable(name: str) -> str:
    """The console script `name` next to this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(
            f"'{name}' not found next to {sys.executable} nor on PATH; install the pipeline extras: "
            f"pip install -e '.[pipeline]'"
        )
    return found


def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


@dataclass
class ManagedProcess:
    """A child process in its own session (process group id == pid), logging to one file."""

    name: str
    cmd: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServiceError(f"{self.name}: not started")
        return self.proc.pid

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.cmd)}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=dict(self.env) if self.env is not None else None,
                    cwd=self.cwd, start_new_session=True,
                )
            except OSError as error:
                raise ServiceError(f"{self.name}: could not run {self.cmd[0]}: {error} (log: {self.log_path})") from error
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def fail(self, why: str) -> ServiceError:
        return ServiceError(f"{self.name} (pid {self.proc.pid if self.proc else '-'}) {why}; "
                            f"log: {self.log_path}\n--- last lines ---\n{_tail(self.log_path)}")

    def wait_ready(self, probe: Callable[[], bool], timeout: float, interval: float = 0.25) -> None:
        """Poll probe() until it returns True; raise (and stop the process) on death or timeout."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise self.fail(f"exited with code {code} before it was ready")
            try:
                if probe():
                    return
            except Exception as error:  # noqa: BLE001 - any probe failure means "not yet"
                last_error = error
            time.sleep(interval)
        self.stop()
        raise self.fail(f"not ready after {timeout:.0f} s (last probe error: {last_error!r})")

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; returns the exit code."""
        if self.proc is None:
            return None
        pgid = self.proc.pid  # start_new_session: the group id is the child's pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Children of the group (e.g. server workers) that outlived the leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        return self.proc.returncode


# ------------------------------------------------------------------------------------------- SeaweedFS


@dataclass(frozen=True)
class S3Service:
    """A running S3 endpoint: where it is, how to log in, and the bucket created for the caller."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str
    data_dir: Path
    log_path: Path
    pid: int

    def env(self) -> dict[str, str]:
        """Environment for S3 clients (boto3, s3fs/DVC) and for an MLflow server/client using this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def client(self):
        """A boto3 S3 client for this endpoint (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def list_keys(self, prefix: str = "", bucket: str | None = None) -> list[str]:
        keys: list[str] = []
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket or self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys


def write_s3_identities(path: Path, access_key: str, secret_key: str) -> Path:
    """SeaweedFS `-s3.config` JSON with one admin identity holding one static key pair."""
    config = {"identities": [{
        "name": "mouaadnet",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def seaweedfs_command(weed: str, data_dir: Path, config: Path, ports: list[int]) -> list[str]:
    """`weed server` with master, volume, filer and S3 on the given 8 loopback ports (http + gRPC each)."""
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    return [
        weed, "server",
        f"-dir={data_dir}",
        f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        "-volume.max=32", "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={config}",
    ]


def _cleanup_weed_sockets(ports: list[int]) -> None:
    # weed puts per-port unix sockets in /tmp (seaweedfs-<role>[-grpc]-<port>.sock) and may leave them.
    for role in ("master", "volume", "filer", "s3"):
        for kind in ("", "-grpc"):
            for port in ports:
                with contextlib.suppress(OSError):
                    Path(f"/tmp/seaweedfs-{role}{kind}-{port}.sock").unlink()


@contextlib.contextmanager
def seaweedfs_s3(
    workdir: str | os.PathLike,
    bucket: str = DEFAULT_BUCKET,
    access_key: str = "mouaadnet-test",
    secret_key: str = "mouaadnet-test-secret",
    timeout: float = 60.0,
    extra_buckets: tuple[str, ...] = (),
) -> Iterator[S3Service]:
    """Start SeaweedFS (`weed server -s3`) on loopback with a static key pair; yield an `S3Service`.

    The bucket (and extra_buckets) exist when this yields. Data and `weed.log` live under workdir.
    """
    workdir = Path(workdir)
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = write_s3_identities(workdir / "s3.json", access_key, secret_key)
    log_path = workdir / "weed.log"
    weed = find_executable("weed")
    ports = free_ports(8)
    proc = ManagedProcess("SeaweedFS", seaweedfs_command(weed, data_dir, config, ports), log_path, cwd=workdir)
    service = None
    proc.start()
    try:
        service = S3Service(
            endpoint_url=f"http://{LOOPBACK}:{ports[6]}", access_key=access_key, secret_key=secret_key,
            bucket=bucket, region=DEFAULT_REGION, data_dir=data_dir, log_path=log_path, pid=proc.pid,
        )
        client = service.client()
        wanted = (bucket, *extra_buckets)

        def ready() -> bool:
            # An authenticated request proves S3 + filer + volume server + identities are all up.
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            for name in wanted:
                if name not in existing:
                    client.create_bucket(Bucket=name)
            return True

        proc.wait_ready(ready, timeout)
        yield service
    finally:
        # The filer's gRPC graceful stop waits 15 s for subscribers; the data is throw-away, so be brief.
        proc.stop(grace=3.0)
        _cleanup_weed_sockets(ports)


# --------------------------------------------------------------------------------------------- MLflow


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    backend_store_uri: str
    artifacts_destination: str
    log_path: Path
    pid: int

    def __str__(self) -> str:
        return self.uri


def mlflow_command(mlflow: str, port: int, backend_store_uri: str, artifacts_destination: str) -> list[str]:
    return [
        mlflow, "server",
        "--backend-store-uri", backend_store_uri,
        "--serve-artifacts", "--artifacts-destination", artifacts_destination,
        "--host", LOOPBACK, "--port", str(port), "--workers", "1",
    ]


def mlflow_server_env(s3: S3Service | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    # Without this the server also launches a huey job runner: ~10 processes and ~2 GB RSS.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.setdefault("PYTHONUNBUFFERED", "1")
    if s3 is not None:
        env.update(s3.env())
    return env


@contextlib.contextmanager
def mlflow_server(
    workdir: str | os.PathLike,
    s3: S3Service | None = None,
    artifacts_prefix: str = "mlflow",
    timeout: float = 120.0,
) -> Iterator[MlflowServer]:
    """Start `mlflow server` (sqlite backend in workdir, artifacts proxied to s3://bucket/prefix); yield it.

    Without `s3` the artifacts go to workdir/artifacts. Clients only need the tracking URI
    (`str(server)` / `server.uri`): the server proxies artifact uploads, so they need no S3 credentials.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    backend = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    if s3 is not None:
        destination = f"s3://{s3.bucket}/{artifacts_prefix.strip('/')}"
    else:
        destination = str((workdir / "artifacts").resolve())
    port = free_ports(1)[0]
    log_path = workdir / "mlflow-server.log"
    proc = ManagedProcess(
        "mlflow server", mlflow_command(find_executable("mlflow"), port, backend, destination),
        log_path, env=mlflow_server_env(s3), cwd=workdir,
    )
    uri = f"http://{LOOPBACK}:{port}"
    proc.start()
    try:
        def ready() -> bool:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                return response.status == 200

        proc.wait_ready(ready, timeout, interval=0.5)
        yield MlflowServer(uri=uri, backend_store_uri=backend, artifacts_destination=destination,
                           log_path=log_path, pid=proc.pid)
    finally:
        proc.stop(grace=10.0)


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    """python -m mouaadnet.pipeline.services DIR: run SeaweedFS S3 + mlflow server until Ctrl-C/SIGTERM."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mouaadnet.pipeline.services", description=main.__doc__)
    parser.add_argument("workdir", type=Path, help="folder for data and logs (created)")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET)
    parser.add_argument("--no-mlflow", action="store_true", help="only the S3 endpoint")
    args = parser.parse_args(argv)

    stop = {"now": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(seaweedfs_s3(args.workdir / "s3", bucket=args.bucket))
        lines = [f"export {k}={v}" for k, v in s3.env().items()]
        lines.append(f"# S3 endpoint {s3.endpoint_url} (pid {s3.pid}, log {s3.log_path})")
        if not args.no_mlflow:
            server = stack.enter_context(mlflow_server(args.workdir / "mlflow", s3))
            lines.insert(0, f"export MLFLOW_TRACKING_URI={server.uri}")
            lines.append(f"# mlflow server {server.uri} (pid {server.pid}, log {server.log_path})")
        print("\n".join(lines), flush=True)
        while not stop["now"]:
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
