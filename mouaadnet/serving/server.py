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
``dead_stubs()`` names them, ``serve`` reloads the model (explicit model control, which Triton runs with behind
the guard for `serve`'s modes none and explicit) or restarts the server (poll), and
``stop()`` removes the shared-memory regions (/dev/shm) the stubs of this server left behind.

The request guard (``guard``; ``cfg.guard``, on by default): Triton listens on free internal loopback ports with
every API restricted to a key, a guard process on the configured public ports refuses what Triton cannot be told
to refuse (oversized requests above all) and forwards the rest. This object's own calls (health, repository
index, reload) go to the internal port with the keys; ``http_url`` / ``grpc_url`` are the public ones.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from .admission import budget_path
from .guard import ADMIN_HEADER, ENV_GUARD_KEY, GUARD_HEADER
from .stubs import SHM_DIR, Stub, children, proc_state, reload_marker, stub_of
from .triton_install import (
    ServerConfig,
    ServerError,
    TritonInstall,
    build_command,
    find_triton,
    guard_command,
    internal_config,
    prepare_backend_dir,
    resolve_admin_key,
    server_env,
)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM the server if the process that started it dies (no orphaned servers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort (non-glibc)
        pass


def _http(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 2.0,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
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
        self.guard: subprocess.Popen | None = None  # the request guard on the public ports (cfg.guard)
        self.internal = cfg  # what tritonserver itself listens on (internal ports behind the guard)
        self._keys: dict[str, str] = {}  # headers of this server's own calls to Triton (guard + admin key)
        self._log_file = None
        self._stubs: dict[int, Stub] = {}  # every stub seen, for dead-stub detection and /dev/shm cleanup
        self._handled_dead: set[int] = set()
        self.removed_shm: list[str] = []

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.http_port}"

    @property
    def internal_http_url(self) -> str:
        """Triton's own HTTP endpoint (behind the guard; every API there needs a key)."""
        return f"http://127.0.0.1:{self.internal.http_port}"

    @property
    def internal_grpc_url(self) -> str:
        return f"127.0.0.1:{self.internal.grpc_port}"

    @property
    def admin_key(self) -> str | None:
        return self._keys.get(ADMIN_HEADER)

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
        admin_key = self._keys.get(ADMIN_HEADER)  # kept across restarts: `publish --load` may have read it
        keep_guard = self.cfg.guard and self.guard is not None and self.guard.poll() is None
        if not keep_guard:  # a guard kept through a restart keeps forwarding to the same internal ports and keys
            self.internal, self._keys = self.cfg, {}
        if self.cfg.guard and not keep_guard:
            guard_key = secrets.token_hex(16)
            self._keys = {GUARD_HEADER: guard_key, ADMIN_HEADER: admin_key or resolve_admin_key(self.cfg)}
            self.internal = internal_config(self.cfg, guard_key, self._keys[ADMIN_HEADER])
        cmd = build_command(self.install, backend_dir, self.internal)
        self._stubs, self._handled_dead, self.removed_shm = {}, set(), []
        if self.log_path:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            out = self._log_file
        else:
            out = None  # inherit: the user sees Triton's own log lines
        self.process = subprocess.Popen(cmd, env=server_env(self.install), stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        if self.cfg.guard and not keep_guard:
            try:
                self.start_guard()
            except BaseException:
                self.stop()  # no tritonserver left running without its guard
                raise
        return self

    def start_guard(self, timeout: float = 30.0) -> None:
        """(Re)start the request guard on the public ports and wait until both accept connections."""
        env = {**server_env(self.install), ENV_GUARD_KEY: self._keys[GUARD_HEADER]}
        self.guard = subprocess.Popen(guard_command(self.install, self.cfg, self.internal), env=env,
                                      stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        for port in (self.cfg.grpc_port, self.cfg.http_port):
            while True:
                if self.guard.poll() is not None:
                    raise ServerError(f"the request guard exited with code {self.guard.returncode} (ports "
                                      f"{self.cfg.grpc_port}/{self.cfg.http_port} taken?)" + self._log_hint())
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise ServerError(f"the request guard is not listening on {port} after {timeout:.0f} s") \
                            from None
                    time.sleep(0.05)

    def guard_died(self) -> bool:
        return self.guard is not None and self.guard.poll() is not None

    def live(self) -> bool:
        try:
            return _http(f"{self.internal_http_url}/v2/health/live", headers=self._keys)[0] == 200
        except OSError:
            return False

    def ready(self) -> bool:
        try:
            return _http(f"{self.internal_http_url}/v2/health/ready", headers=self._keys)[0] == 200
        except OSError:
            return False

    def stubs(self) -> list[Stub]:
        """The stub processes of this server now (alive or zombie); remembered for cleanup."""
        if self.process is None:
            return []
        found = [stub for stub in map(stub_of, children(self.process.pid)) if stub is not None]
        self._stubs.update({stub.pid: stub for stub in found})
        return found

    def dead_stubs(self, include_handled: bool = False, rescan: bool = True) -> list[Stub]:
        """Stubs that exited while their server runs (zombies Triton never reaped: it did not notice).

        ``rescan=False`` looks only at the stubs already seen (one /proc/<pid>/stat read each: cheap enough to
        ask every 0.1 s); a rescan of /proc also finds the stubs started since (after a reload)."""
        if rescan:
            self.stubs()
        dead = [stub for pid, stub in self._stubs.items() if proc_state(pid) in ("Z", "X")]
        return dead if include_handled else [stub for stub in dead if stub.pid not in self._handled_dead]

    def mark_handled(self, stubs: list[Stub]) -> None:
        self._handled_dead.update(stub.pid for stub in stubs)

    def healthy(self) -> bool:
        """Ready *and* no stub death left unhandled: what Triton's own readiness endpoint does not tell."""
        return self.ready() and not self.dead_stubs()

    @property
    def can_reload(self) -> bool:
        """Whether Triton itself runs in explicit model control (`serve`'s modes none and explicit, behind the
        guard): one model can be loaded again; else (poll, or none without the guard) only a restart helps."""
        return self.internal.control_mode == "explicit"

    def reload_model(self, name: str, timeout: float = 120.0) -> None:
        """Explicit model control: load ``name`` again (new instances and stubs; traffic moves when ready).

        Triton 2.51 loads a fresh copy beside the old one and moves traffic to it; the old copy (its dead stub
        and its live ones) is never unloaded: its live stubs stay, idle, until the server stops, and the stop
        then waits the exit timeout for it (measured; docs/RELIABILITY.md, known limits)."""
        marker = reload_marker(self.process.pid)  # the guard's readiness answers: the new copy serves only now
        marker.write_text(f"{name}\n")
        try:
            status, body = _http(f"{self.internal_http_url}/v2/repository/models/{name}/load", "POST", b"{}",
                                 timeout=timeout, headers=self._keys)
        finally:
            marker.unlink(missing_ok=True)
        if status != 200:
            raise ServerError(f"reloading {name} failed: HTTP {status} {body[:300]!r}")

    def cleanup_shm(self) -> list[str]:
        """Remove the /dev/shm regions of this server's stubs that are still there (call once it has exited)."""
        if self.process is not None:
            budget_path(self.process.pid).unlink(missing_ok=True)  # preprocess's decode budget (admission)
            reload_marker(self.process.pid).unlink(missing_ok=True)
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
        status, body = _http(f"{self.internal_http_url}/v2/repository/index", "POST", b"{}", headers=self._keys)
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

    def stop(self, timeout: float = 20.0, keep_guard: bool = False) -> int | None:
        """SIGTERM (Triton drains in-flight requests and stops the stubs), SIGKILL after ``timeout``.

        ``keep_guard``: for a restart: the guard stays on the public ports (clients stay connected and get
        "retry" errors meanwhile instead of refused connections) and the next ``start()`` reuses its ports."""
        if not keep_guard:
            self._stop_guard()
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

    def _stop_guard(self) -> None:
        if self.guard is None:
            return
        if self.guard.poll() is None:
            self.guard.send_signal(signal.SIGTERM)
            try:
                self.guard.wait(10)
            except subprocess.TimeoutExpired:
                self.guard.kill()
                self.guard.wait(5)
        self.guard = None

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
