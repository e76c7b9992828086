"""Start, watch and stop the real `tritonserver` binary shipped in the `nvidia-pytriton` wheel (CPU, Python backend).

The wheel needs numpy<2 while the project's main venv has numpy 2, so it lives in a separate serving venv
(`.venv-serve`, built by `make serve-venv`: nvidia-pytriton, tritonclient[grpc], onnxruntime, pillow, numpy<2 and
this project installed --no-deps). What the server needs, all arranged here:
- a backend directory whose `python/` holds libtriton_python.so, triton_python_backend_utils.py and the
  `triton_python_backend_stub` built for the serving venv's Python (3.11) — symlinked from the wheel;
- the serving venv's bin/ first on PATH: the stub embeds Python in isolated mode (PYTHONPATH is ignored) and
  finds its environment from `python3` on PATH, so model.py can import onnxruntime and `mouaadnet`;
- HTTP, gRPC and metrics bound to 127.0.0.1, `--allow-gpu-metrics=false`, `--pinned-memory-pool-byte-size=0`.
Readiness and load failures are read from the HTTP health and repository-index endpoints (stdlib only).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = PROJECT_ROOT / ".venv-serve"
BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


class ServerError(RuntimeError):
    """The server could not be started, or a model failed to load (the message carries Triton's reason)."""


@dataclass
class TritonInstall:
    venv: Path
    root: Path  # .../site-packages/pytriton/tritonserver
    python_version: str

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"


def serving_venv() -> Path:
    """MOUAADNET_SERVE_VENV, else <project>/.venv-serve, else the running interpreter's venv if it has pytriton."""
    env = os.environ.get("MOUAADNET_SERVE_VENV")
    if env:
        return Path(env).resolve()
    if DEFAULT_VENV.is_dir():
        return DEFAULT_VENV
    return Path(sys.prefix)


def find_triton(venv: Path | None = None) -> TritonInstall:
    venv = Path(venv or serving_venv())
    roots = sorted(venv.glob("lib/python3.*/site-packages/pytriton/tritonserver"))
    if not roots:
        raise ServerError(f"no tritonserver found in {venv}: build the serving venv with `make serve-venv` "
                          "(or point MOUAADNET_SERVE_VENV at a venv with nvidia-pytriton installed)")
    root = roots[-1]
    version = root.parents[2].name.removeprefix("python")  # lib/python3.11/site-packages
    install = TritonInstall(venv, root, version)
    if not install.binary.is_file():
        raise ServerError(f"{install.binary} is missing (broken nvidia-pytriton install?)")
    if not install.stub.is_file():
        raise ServerError(f"no triton_python_backend_stub for Python {version} in {root / 'python_backend_stubs'}")
    return install


def prepare_backend_dir(install: TritonInstall, where: Path | None = None) -> Path:
    """A backend directory with python/{libtriton_python.so, triton_python_backend_utils.py, stub}. Idempotent."""
    where = Path(where or install.venv / "triton-backends")
    python_dir = where / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    wanted = {name: install.root / "backends" / "python" / name for name in BACKEND_FILES}
    wanted["triton_python_backend_stub"] = install.stub
    for name, source in wanted.items():
        link = python_dir / name
        if link.is_symlink() and Path(os.readlink(link)) == source:
            continue
        tmp = python_dir / f".{name}.tmp{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(source)
        os.replace(tmp, link)
    return where


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerConfig:
    repo: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    control_mode: str = "none"  # none | explicit | poll
    load_models: list[str] = field(default_factory=list)  # explicit mode: models to load at start ([] = all)
    poll_secs: int = 5
    log_verbose: int = 0
    shm_bytes: int = 16 * 1024 * 1024  # python backend shared memory per instance (grows on demand)
    extra_args: list[str] = field(default_factory=list)


def build_command(install: TritonInstall, backend_dir: Path, cfg: ServerConfig) -> list[str]:
    if cfg.control_mode not in ("none", "explicit", "poll"):
        raise ServerError(f"--model-control-mode must be none, explicit or poll, got {cfg.control_mode!r}")
    cmd = [
        str(install.binary),
        f"--model-repository={Path(cfg.repo).resolve()}",
        f"--backend-directory={backend_dir}",
        "--http-address=127.0.0.1", f"--http-port={cfg.http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={cfg.grpc_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={cfg.metrics_port}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--exit-on-error=false",  # stay up so the repository index can say which model failed and why
        "--strict-readiness=true",
        "--exit-timeout-secs=15",
        f"--backend-config=python,shm-default-byte-size={cfg.shm_bytes}",
        f"--log-verbose={cfg.log_verbose}",
        f"--model-control-mode={cfg.control_mode}",
    ]
    if cfg.control_mode == "explicit":
        cmd += [f"--load-model={name}" for name in cfg.load_models] or ["--load-model=*"]
    if cfg.control_mode == "poll":
        cmd.append(f"--repository-poll-secs={cfg.poll_secs}")
    return cmd + list(cfg.extra_args)


def server_env(install: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{install.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(install.venv)
    env.pop("PYTHONHOME", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM the server if the process that started it dies (no orphaned servers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort (non-glibc)
        pass


def _http(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class TritonServer:
    """A tritonserver child process: start(), wait_ready(), stop(); usable as a context manager."""

    def __init__(self, cfg: ServerConfig, install: TritonInstall | None = None, log_path: Path | None = None):
        self.cfg = cfg
        self.install = install or find_triton()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.cfg.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> TritonServer:
        if not Path(self.cfg.repo).is_dir():
            raise ServerError(f"model repository {self.cfg.repo} does not exist")
        backend_dir = prepare_backend_dir(self.install)
        cmd = build_command(self.install, backend_dir, self.cfg)
        if self.log_path:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            out = self._log_file
        else:
            out = None  # inherit: the user sees Triton's own log lines
        self.process = subprocess.Popen(cmd, env=server_env(self.install), stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        return self

    def live(self) -> bool:
        try:
            return _http(f"{self.http_url}/v2/health/live")[0] == 200
        except OSError:
            return False

    def ready(self) -> bool:
        try:
            return _http(f"{self.http_url}/v2/health/ready")[0] == 200
        except OSError:
            return False

    def model_index(self) -> list[dict]:
        status, body = _http(f"{self.http_url}/v2/repository/index", "POST", b"{}")
        if status != 200:
            raise ServerError(f"repository index failed: HTTP {status} {body[:200]!r}")
        return json.loads(body or b"[]")

    def failed_models(self) -> list[dict]:
        """Models the repository index reports UNAVAILABLE, each with Triton's reason."""
        return [m for m in self.model_index() if m.get("state") == "UNAVAILABLE" and m.get("reason")]

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until /v2/health/ready; raise ServerError naming each model that failed to load and why."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} before it was ready"
                                  + self._log_hint())
            if self.live():
                if self.ready():
                    return
                failed = self.failed_models()
                index = self.model_index()
                loading = [m for m in index if m.get("state") not in ("READY", "UNAVAILABLE")]
                if failed and not loading:
                    raise ServerError("\n".join(
                        f"model '{m['name']}' version {m.get('version', '?')} failed to load: {m['reason']}"
                        for m in failed))
            time.sleep(0.2)
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s" + self._log_hint())

    def _log_hint(self) -> str:
        if self.log_path and Path(self.log_path).exists():
            tail = Path(self.log_path).read_text(errors="replace").splitlines()[-15:]
            return "\n" + "\n".join(tail)
        return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests and stops the stubs), SIGKILL after ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the server and its stubs only
                self.process.wait(5)
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return self.process.returncode

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _print(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def serve(cfg: ServerConfig, echo=_print, timeout: float = 180.0, log_path: Path | None = None) -> int:
    """Foreground server for `mouaadnet serve`: prints endpoints when ready, stops on Ctrl-C / SIGTERM.

    Returns the exit code: 0 after a requested stop, 1 when a model failed to load (Triton's reason printed) or
    the server died.
    """
    server = TritonServer(cfg, log_path=log_path)
    stopping = {"flag": False}

    def on_signal(signum, _frame):
        stopping["flag"] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        try:
            deadline = time.monotonic() + timeout
            while not stopping["flag"]:
                try:
                    server.wait_ready(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                    break
                except ServerError as error:
                    if "not ready after" not in str(error) or time.monotonic() >= deadline:
                        raise
        except ServerError as error:
            echo(f"error: {error}", err=True)
            return 1
        if stopping["flag"]:
            return 0
        echo(f"tritonserver ready (pid {server.pid}), models in {Path(cfg.repo).resolve()}:")
        for model in server.model_index():
            echo(f"  {model['name']:<12} version {model.get('version', '-'):<4} {model.get('state', '?')}")
        echo(f"  gRPC     {server.grpc_url}")
        echo(f"  HTTP     {server.http_url}")
        echo(f"  metrics  {server.metrics_url}")
        echo(f"  model control: {cfg.control_mode}.  Ctrl-C or SIGTERM stops the server.")
        while not stopping["flag"]:
            if server.process.poll() is not None:
                echo(f"error: tritonserver exited unexpectedly with code {server.process.returncode}", err=True)
                return 1
            time.sleep(0.2)
        echo("stopping tritonserver ...")
        return 0
    finally:
        code = server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if code is not None and stopping["flag"]:
            echo(f"tritonserver stopped (exit code {code})")
