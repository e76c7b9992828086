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

Stub deaths: Triton 2.51 neither restarts a Python-backend stub that died (OOM kill, segfault, SIGKILL) nor
reports it: health, readiness and the repository index stay READY while every request routed to that instance
fails with "Stub process '<model>_0_0' is not healthy", and stopping the server then runs into its exit timeout.
So the stubs are watched here (from /proc: a stub that exited is left as a zombie child of tritonserver):
``dead_stubs()`` names them, ``serve`` reloads the model (explicit model control) or restarts the server, and
``stop()`` removes the shared-memory regions (/dev/shm) the stubs of this server left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .stubs import SHM_DIR, Stub, children, proc_state, stub_of
from .triton_install import (
    ServerConfig,
    ServerError,
    TritonInstall,
    build_command,
    find_triton,
    prepare_backend_dir,
    server_env,
)


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
        self._stubs: dict[int, Stub] = {}  # every stub seen, for dead-stub detection and /dev/shm cleanup
        self._handled_dead: set[int] = set()
        self.removed_shm: list[str] = []

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
        self._stubs, self._handled_dead, self.removed_shm = {}, set(), []
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

    def stubs(self) -> list[Stub]:
        """The stub processes of this server now (alive or zombie); remembered for cleanup."""
        if self.process is None:
            return []
        found = [stub for stub in map(stub_of, children(self.process.pid)) if stub is not None]
        self._stubs.update({stub.pid: stub for stub in found})
        return found

    def dead_stubs(self, include_handled: bool = False) -> list[Stub]:
        """Stubs that exited while their server runs (zombies Triton never reaped: it did not notice)."""
        self.stubs()
        dead = [stub for pid, stub in self._stubs.items() if proc_state(pid) in ("Z", "X")]
        return dead if include_handled else [stub for stub in dead if stub.pid not in self._handled_dead]

    def mark_handled(self, stubs: list[Stub]) -> None:
        self._handled_dead.update(stub.pid for stub in stubs)

    def healthy(self) -> bool:
        """Ready *and* no stub dead: what Triton's own readiness endpoint does not tell."""
        return self.ready() and not self.dead_stubs(include_handled=True)

    def reload_model(self, name: str, timeout: float = 120.0) -> None:
        """Explicit model control: load ``name`` again (new instances and stubs; traffic moves when ready)."""
        status, body = _http(f"{self.http_url}/v2/repository/models/{name}/load", "POST", b"{}", timeout=timeout)
        if status != 200:
            raise ServerError(f"reloading {name} failed: HTTP {status} {body[:300]!r}")

    def cleanup_shm(self) -> list[str]:
        """Remove the /dev/shm regions of this server's stubs that are still there (call once it has exited)."""
        removed = []
        for stub in self._stubs.values():
            path = SHM_DIR / stub.shm_region
            if stub.shm_region.startswith("triton_python_backend_shm_region_") and path.exists():
                try:
                    path.unlink()
                    removed.append(stub.shm_region)
                except OSError:
                    pass
        return removed

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
                    self.stubs()
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
            self.stubs()  # remember the current stubs' shared memory before they go
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the server and its stubs only
                self.process.wait(5)
        self._wait_stubs_gone(5.0)
        self.removed_shm = self.cleanup_shm()
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return self.process.returncode

    def _wait_stubs_gone(self, timeout: float) -> None:
        """Stubs notice their server's death and exit by themselves; SIGKILL any left after ``timeout``."""
        deadline = time.monotonic() + timeout
        alive = [pid for pid in self._stubs if proc_state(pid) not in (None, "Z", "X")]
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in alive if proc_state(pid) not in (None, "Z", "X")]
        for pid in alive:  # pids recorded as this server's stubs: still that process only if still a stub
            stub = stub_of(pid)
            if stub is not None and stub.shm_region == self._stubs[pid].shm_region:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

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


def _describe_dead(stubs: list[Stub]) -> str:
    return ", ".join(f"{stub.instance} (model {stub.model}, pid {stub.pid})" for stub in stubs)


def serve(cfg: ServerConfig, echo=_print, timeout: float = 180.0, log_path: Path | None = None,
          recover: bool = True, max_restarts: int = 3, restart_window: float = 600.0) -> int:
    """Foreground server for `mouaadnet serve`: prints endpoints when ready, stops on Ctrl-C / SIGTERM.

    Watches the Python-backend stubs: when one dies, the model is reloaded (explicit model control) or the whole
    server restarted (none / poll: Triton refuses load requests there), at most ``max_restarts`` times in
    ``restart_window`` seconds; with ``recover=False`` it exits 1 naming the dead stub instead.
    Returns the exit code: 0 after a requested stop, 1 when a model failed to load (Triton's reason printed),
    the server died, or a dead stub could not be recovered.
    """
    server = TritonServer(cfg, log_path=log_path)
    stopping = {"flag": False}

    def on_signal(signum, _frame):
        stopping["flag"] = True

    def start_and_wait() -> None:
        server.start()
        deadline = time.monotonic() + timeout
        while not stopping["flag"]:
            try:
                server.wait_ready(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                return
            except ServerError as error:
                if "not ready after" not in str(error) or time.monotonic() >= deadline:
                    raise

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    restarts: list[float] = []
    try:
        try:
            start_and_wait()
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
        next_check = time.monotonic() + 1.0
        while not stopping["flag"]:
            if server.process.poll() is not None:
                echo(f"error: tritonserver exited unexpectedly with code {server.process.returncode}", err=True)
                return 1
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                dead = server.dead_stubs()
                if dead:
                    server.mark_handled(dead)
                    echo(f"error: Python-backend stub died: {_describe_dead(dead)}; Triton keeps reporting the "
                         "model READY while requests routed to that instance fail ('Stub process ... is not "
                         "healthy')", err=True)
                    if not recover:
                        echo("not recovering (--no-recover): exiting so a supervisor can restart the server",
                             err=True)
                        return 1
                    now = time.monotonic()
                    restarts[:] = [t for t in restarts if now - t < restart_window] + [now]
                    if len(restarts) > max_restarts:
                        echo(f"error: {len(restarts)} stub deaths within {restart_window:.0f} s: giving up",
                             err=True)
                        return 1
                    try:
                        if cfg.control_mode == "explicit":
                            for name in sorted({stub.model for stub in dead}):
                                server.reload_model(name)
                                echo(f"reloaded model {name}: new stubs are serving it")
                        else:
                            echo(f"restarting tritonserver (model control {cfg.control_mode}: Triton cannot "
                                 "reload one model) ...")
                            code = server.stop()
                            echo(f"tritonserver stopped (exit code {code}); starting it again")
                            start_and_wait()
                            echo(f"tritonserver ready again (pid {server.pid})")
                    except ServerError as error:
                        echo(f"error: recovery failed: {error}", err=True)
                        return 1
            time.sleep(0.2)
        echo("stopping tritonserver ...")
        return 0
    finally:
        code = server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if getattr(server, "removed_shm", None):
            echo(f"removed {len(server.removed_shm)} shared-memory region(s) its stubs left in {SHM_DIR}")
        if code is not None and stopping["flag"]:
            echo(f"tritonserver stopped (exit code {code})")
