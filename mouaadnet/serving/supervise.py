"""`mouaadnet serve`: the server in the foreground, its stubs and request guard watched (see ``server`` for why
Triton needs watching) until Ctrl-C / SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .guard import ENV_ADMIN_KEY
from .server import TritonServer
from .stubs import SHM_DIR, Stub
from .triton_install import ADMIN_KEY_FILE, ServerConfig, ServerError


def _print(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def _describe_dead(stubs: list[Stub]) -> str:
    return ", ".join(f"{stub.instance} (model {stub.model}, pid {stub.pid})" for stub in stubs)


def _recover(server: TritonServer, cfg: ServerConfig, dead: list[Stub], echo: Callable[..., None], recover: bool,
             restarts: list[float], max_restarts: int, restart_window: float,
             start_and_wait: Callable[[], None]) -> int | None:
    """Reload the models of ``dead`` stubs (or restart the server where Triton cannot reload one); an exit code
    when serve must stop, None when it recovered."""
    server.mark_handled(dead)
    echo(f"error: Python-backend stub died: {_describe_dead(dead)}; Triton keeps reporting the model READY while "
         "requests routed to that instance fail ('Stub process ... is not healthy'; the request guard sends them "
         "again)", err=True)
    if not recover:
        echo("not recovering (--no-recover): exiting so a supervisor can restart the server", err=True)
        return 1
    now = time.monotonic()
    restarts[:] = [t for t in restarts if now - t < restart_window] + [now]
    if len(restarts) > max_restarts:
        echo(f"error: {len(restarts)} stub deaths within {restart_window:.0f} s: giving up", err=True)
        return 1
    try:
        if server.can_reload:
            for name in sorted({stub.model for stub in dead}):
                started = time.monotonic()
                server.reload_model(name)
                server.stubs()  # the new stubs, watched from now on
                echo(f"reloaded model {name} in {time.monotonic() - started:.1f} s: new stubs are serving it "
                     f"(tritonserver pid {server.pid} kept)")
        else:
            echo(f"restarting tritonserver (model control {cfg.control_mode}: Triton cannot reload one model) ...")
            code = server.stop(keep_guard=True)
            echo(f"tritonserver stopped (exit code {code}); starting it again (the request guard stays up and "
                 "answers 'retry' meanwhile)")
            start_and_wait()
            echo(f"tritonserver ready again (pid {server.pid})")
    except ServerError as error:
        echo(f"error: recovery failed: {error}", err=True)
        return 1
    return None


def serve(cfg: ServerConfig, echo=_print, timeout: float = 180.0, log_path: Path | None = None,
          recover: bool = True, max_restarts: int = 3, restart_window: float = 600.0) -> int:
    """Foreground server for `mouaadnet serve`: prints endpoints when ready, stops on Ctrl-C / SIGTERM.

    Watches the Python-backend stubs (every 0.1 s): when one dies, its model is reloaded, the server and the
    model's other instances keep running (modes none and explicit: Triton runs in explicit model control behind
    the guard), or, in mode poll, where Triton refuses load requests, the whole server is restarted; at most
    ``max_restarts`` times in ``restart_window`` seconds; with ``recover=False`` it exits 1 naming the dead stub.
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
        if cfg.guard:
            where = ("ServerConfig.admin_key" if cfg.admin_key else f"${ENV_ADMIN_KEY}"
                     if os.environ.get(ENV_ADMIN_KEY) else Path(cfg.repo).resolve() / ADMIN_KEY_FILE)
            echo(f"  requests over {cfg.max_request_bytes / 2**20:.0f} MiB are refused; the repository (index, "
                 f"load, unload), logging and trace APIs need the header mouaadnet-admin-key (key in {where})")
        echo(f"  model control: {cfg.control_mode}.  Ctrl-C or SIGTERM stops the server.")
        next_check = time.monotonic() + 1.0
        while not stopping["flag"]:
            if server.process.poll() is not None:
                echo(f"error: tritonserver exited unexpectedly with code {server.process.returncode}", err=True)
                return 1
            if server.guard_died():
                echo(f"error: the request guard exited with code {server.guard.returncode}; starting it again",
                     err=True)
                try:
                    server.start_guard()
                except ServerError as error:
                    echo(f"error: {error}", err=True)
                    return 1
            rescan = time.monotonic() >= next_check
            if rescan:
                next_check = time.monotonic() + 1.0
            dead = server.dead_stubs(rescan=rescan)  # known stubs every tick: a death is seen within 0.1 s
            if dead:
                code = _recover(server, cfg, dead, echo, recover, restarts, max_restarts, restart_window,
                                start_and_wait)
                if code is not None:
                    return code
            time.sleep(0.1)
        echo("stopping tritonserver ..." + (" (it waits its exit timeout, 15 s, for the earlier copy of a model "
                                           "whose stub died: Triton 2.51 never unloads it)"
                                           if restarts and server.can_reload else ""))
        return 0
    finally:
        code = server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if getattr(server, "removed_shm", None):
            echo(f"removed {len(server.removed_shm)} shared-memory region(s) its stubs left in {SHM_DIR}")
        if code is not None and stopping["flag"]:
            echo(f"tritonserver stopped (exit code {code})")
