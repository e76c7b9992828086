"""Faults in serving: a Python-backend stub killed under load, a publish killed mid-copy, a published file
changed afterwards. Servers are `mouaadnet serve` subprocesses on free loopback ports, stopped by PID."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import _images as img
import pytest
from _rel import FULL, PYTHON, ROOT, child_env, image_input

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(900)]

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from mouaadnet.serving.triton_install import ServerError, find_triton, free_port  # noqa: E402

try:
    find_triton()
except ServerError as _error:
    pytest.skip(f"serving venv missing ({_error})", allow_module_level=True)


def _repo(root: Path, onnx: Path) -> Path:
    from _serving_utils import copy_repo

    from mouaadnet.serving.publish import publish

    repo = copy_repo(root / "repo")
    publish(onnx, repo)
    return repo


class Serve:
    """`mouaadnet serve` as a subprocess; its output collected by a thread."""

    def __init__(self, repo: Path, log: Path, mode: str):
        self.grpc, self.http = free_port(), free_port()
        cmd = [PYTHON, "-m", "mouaadnet.cli", "serve", "--repo", str(repo), "--grpc-port", str(self.grpc),
               "--http-port", str(self.http), "--metrics-port", str(free_port()), "--log-file", str(log),
               "--model-control-mode", mode]
        self.proc = subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.times: list[float] = []  # monotonic time each line was read
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.times.append(time.monotonic())
            self.lines.append(line.rstrip())

    def seen_at(self, text: str) -> float | None:
        """When the first line containing ``text`` was read."""
        return next((t for t, line in zip(self.times, self.lines) if text in line), None)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.3)
                return any(text in line for line in self.lines)
            time.sleep(0.2)
        return False

    def triton_pid(self) -> int | None:
        for line in self.lines:
            found = re.search(r"ready(?: again)? \(pid (\d+)\)", line)
            if found:
                pid = int(found.group(1))
        return locals().get("pid")

    def stop(self, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode


def _stubs(server_pid: int):
    from mouaadnet.serving.stubs import children as _children
    from mouaadnet.serving.stubs import stub_of as _stub_of

    return [s for s in map(_stub_of, _children(server_pid)) if s is not None]


def _stub_pids(server_pid: int, model: str) -> list[int]:
    return [s.pid for s in _stubs(server_pid) if s.model == model]


def _left_in_shm(regions: set[str]) -> list[str]:
    """Which of this server's stub regions still exist (other servers on the machine have their own)."""
    return sorted(r for r in regions if (Path("/dev/shm") / r).exists())


KILL_SECONDS = 60.0 if FULL else 20.0  # issue 24: 2 clients for 60 s, one detector stub SIGKILLed
KILL_AFTER = 5.0
MAX_FAILED = 0.02  # issue 24 targets: <= 2 % of requests failed, recovery <= 3 s, no full-server restart
MAX_RECOVERY_S = 3.0


class Traffic:
    """2 clients sending the good JPEG in a loop, and a health poller (every 0.1 s: server and ensemble
    readiness through the public HTTP port), all with timestamps."""

    def __init__(self, serve: Serve, clients: int = 2):
        self.serve, self.stop = serve, threading.Event()
        self.outcomes: list[tuple[float, float, str | None]] = []  # (start, seconds, error)
        self.health: list[tuple[float, bool, bool]] = []  # (time, server ready, mouaadnet ready)
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]
        self.threads.append(threading.Thread(target=self._poll))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _client(self) -> None:
        client, blob = grpcclient.InferenceServerClient(self.serve.url), img.good_jpeg()
        while not self.stop.is_set() and len(self.outcomes) < 50_000:
            started = time.monotonic()
            try:
                client.infer("mouaadnet", [image_input([blob])], client_timeout=30)
                self.outcomes.append((started, time.monotonic() - started, None))
            except InferenceServerException as error:
                self.outcomes.append((started, time.monotonic() - started, error.message()[:160]))
                time.sleep(0.05)

    def _poll(self) -> None:
        import urllib.error
        import urllib.request

        def ok(path: str) -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.serve.http}{path}", timeout=5) as answer:
                    return answer.status == 200
            except (urllib.error.URLError, OSError):
                return False

        while not self.stop.is_set():
            self.health.append((time.monotonic(), ok("/v2/health/ready"), ok("/v2/models/mouaadnet/ready")))
            time.sleep(0.1)


def _kill_one_stub(serve: Serve, model: str) -> tuple[int, float]:
    victim = _stub_pids(serve.triton_pid(), model)[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    return victim, killed_at


@pytest.mark.parametrize("mode", ["none", *(pytest.param(m, marks=pytest.mark.skipif(
    not FULL, reason=f"full run only (make reliability): model control {m} costs another server start"))
    for m in ("explicit", "poll"))])
def test_detector_stub_killed_under_load(tmp_path, standin_onnx, scoreboard, mode):
    """Issue 24: SIGKILL of one detector stub, 2 clients for 60 s: <= 2 % failed, recovery <= 3 s, no restart
    of tritonserver, health truthful throughout. Modes none (serve's default) and explicit reload the model
    (Triton runs in explicit model control behind the guard); poll restarts the server (Triton refuses loads)."""
    repo = _repo(tmp_path, standin_onnx)
    serve = Serve(repo, tmp_path / "triton.log", mode)
    regions: set[str] = set()
    try:
        assert serve.wait_for("Ctrl-C", 240), "\n".join(serve.lines)
        pid_before = serve.triton_pid()
        with Traffic(serve) as traffic:
            time.sleep(KILL_AFTER)
            regions |= {stub.shm_region for stub in _stubs(pid_before)}
            victim, killed_at = _kill_one_stub(serve, "detector")
            recovered = serve.wait_for("reloaded model detector" if mode != "poll" else "ready again", 240)
            recovered_at = serve.seen_at("reloaded model detector" if mode != "poll" else "ready again")
            pid_after = serve.triton_pid()
            regions |= {stub.shm_region for stub in _stubs(pid_after)}
            detector_stubs = len(_stub_pids(pid_after, "detector"))
            time.sleep(max(0.0, killed_at + KILL_SECONDS - KILL_AFTER - time.monotonic()))
    finally:
        code = serve.stop()
    outcomes, health = traffic.outcomes, traffic.health
    failed = [o for o in outcomes if o[2]]
    recovery = (recovered_at or float("inf")) - killed_at
    after = [o for o in outcomes if o[0] > killed_at + recovery + 1.0]
    failed_after = [o for o in after if o[2]]
    hung = [o for o in outcomes if o[1] >= 30]
    leaked = _left_in_shm(regions)
    # health is truthful: with one detector instance alive (and the guard sending the dead one's requests again)
    # the server answers throughout, so it must say ready throughout; a restart (poll) must say ready again after
    said_ready = [h for h in health if h[1] and h[2]]
    ready_after = all(h[1] and h[2] for h in health if h[0] > killed_at + recovery + 2.0)
    rate = len(failed) / max(1, len(outcomes))
    messages = sorted({o[2] for o in failed})
    restart = pid_after != pid_before
    if mode == "poll":  # the fallback: a full restart (Triton refuses load requests in poll mode)
        ok = recovered and not failed_after and not hung and code == 0 and not leaked and ready_after
    else:
        ok = (recovered and not restart and rate <= MAX_FAILED and recovery <= MAX_RECOVERY_S and not hung
              and not failed_after and code == 0 and not leaked and len(said_ready) == len(health))
    how = "restarts tritonserver" if mode == "poll" else "reloads the model"
    bounds = ("the fallback for poll, where Triton refuses loads: targets not applied" if mode == "poll" else
              f"bounds {MAX_RECOVERY_S:.0f} s, {100 * MAX_FAILED:.0f} % failed, same pid")
    scoreboard.record(
        "fault", f"detector stub SIGKILLed under load (model control {mode})",
        done=f"2 clients for {KILL_SECONDS:.0f} s; SIGKILL of one detector stub (pid {victim}) after "
             f"{KILL_AFTER:.0f} s; health (server + ensemble ready) polled every 0.1 s",
        observed=f"`mouaadnet serve` {how} {recovery:.1f} s after the kill ({bounds}), tritonserver pid "
                 f"{pid_before} -> {pid_after}; {len(failed)} of {len(outcomes)} requests failed ({100 * rate:.2f} %)"
                 f"{': ' + '; '.join(messages)[:140] if messages else ''}"
                 f"; max latency {max(o[1] for o in outcomes):.1f} s; health ready in {len(said_ready)} of "
                 f"{len(health)} polls, ready after recovery: {ready_after}; {len(failed_after)} of {len(after)} "
                 f"failed after; detector stubs after: {detector_stubs}; serve exit {code}; /dev/shm regions "
                 f"left: {len(leaked)}",
        ok=ok, faults=1, requests=len(outcomes), failed=len(failed), good_failed=len(failed))
    assert ok, "\n".join(serve.lines[-30:]) + f"\nfailed: {failed[:3]} leaked {leaked} recovery {recovery}"


def test_single_instance_stub_killed_health_says_not_ready(tmp_path, standin_onnx, scoreboard):
    """postprocess has one instance: with its stub dead no request can be answered, and Triton 2.51 still says
    READY. Through the guard, server and ensemble readiness say "not ready" until the model is reloaded (here
    by the test, after 3 s, as `serve` does at once: its reload takes < 1 s, too short to watch)."""
    import urllib.error
    import urllib.request

    from mouaadnet.serving.server import TritonServer
    from mouaadnet.serving.triton_install import ServerConfig

    repo = _repo(tmp_path, standin_onnx)
    cfg = ServerConfig(repo=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    server = TritonServer(cfg, log_path=tmp_path / "triton.log")

    def ready(base: str, path: str) -> bool:
        keys = server._keys if base == server.internal_http_url else {}  # Triton's own port needs the guard's key
        request = urllib.request.Request(base + path, headers=keys)
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def look(base: str) -> bool:
        return ready(base, "/v2/health/ready") and ready(base, "/v2/models/mouaadnet/ready")

    with server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        blob = img.good_jpeg()
        before = look(server.http_url) and client.is_server_ready() and client.is_model_ready("mouaadnet")
        os.kill(_stub_pids(server.pid, "postprocess")[0], signal.SIGKILL)
        time.sleep(0.5)
        polls = []  # (the guard says ready over HTTP or gRPC, Triton itself says ready) for 2.5 s
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            polls.append((look(server.http_url) or client.is_server_ready() or client.is_model_ready("mouaadnet"),
                          look(server.internal_http_url)))
            time.sleep(0.1)
        try:
            client.infer("mouaadnet", [image_input([blob])], client_timeout=30)
            during = "served"
        except InferenceServerException as error:
            during = error.message()[:120]
        started = time.monotonic()
        server.reload_model("postprocess")
        reload_s = time.monotonic() - started
        time.sleep(0.5)
        after = look(server.http_url) and client.is_server_ready() and client.is_model_ready("mouaadnet")
        served_after = client.infer("mouaadnet", [image_input([blob])], client_timeout=30).as_numpy("count") is not None
    guard_not_ready = bool(polls) and not any(p[0] for p in polls)
    triton_ready = sum(p[1] for p in polls)
    ok = before and guard_not_ready and "is not healthy" in during and after and served_after
    scoreboard.record(
        "fault", "single-instance stub SIGKILLed: health says not ready until reloaded",
        done="SIGKILL of the only postprocess stub; server and ensemble readiness (HTTP and gRPC) polled every "
             "0.1 s for 2.5 s through the guard and straight from Triton; a request; then the reload serve does",
        observed=f"through the guard: ready before {before}, not ready in {len(polls) - sum(p[0] for p in polls)} of "
                 f"{len(polls)} polls after the kill (Triton itself: ready in {triton_ready} of {len(polls)}); a "
                 f"request meanwhile: {during}; reload {reload_s:.1f} s, then ready {after}, served {served_after}",
        ok=ok, faults=1, requests=2, failed=0 if during == "served" else 1)
    assert ok, (before, polls, during, after, served_after)


KILL_IN_PUBLISH = r"""
import os, shutil, signal, sys
real = shutil.copyfile
def copyfile(src, dst, *a, **k):
    if str(src).endswith(".onnx"):
        data = open(src, "rb").read()
        with open(dst, "wb") as f:
            f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
shutil.copyfile = copyfile
from mouaadnet.cli.main import app
sys.argv = ["mouaadnet"] + sys.argv[1:]
app()
"""


def test_sigkill_during_publish_leaves_only_complete_versions(tmp_path, standin_onnx, scoreboard):
    from mouaadnet.serving.publish import numeric_versions, publish
    from mouaadnet.serving.repo_check import check_repo

    repo = _repo(tmp_path, standin_onnx)  # versions 1 (seed) and 2
    before = numeric_versions(repo / "detector")
    killed = subprocess.run([PYTHON, "-c", KILL_IN_PUBLISH, "publish", str(standin_onnx), "--repo", str(repo)],
                            env=child_env(), capture_output=True, text=True, timeout=300)
    after_kill = numeric_versions(repo / "detector")
    debris = sorted(p.name for p in (repo / "detector").glob(".publish-*"))
    report = check_repo(repo)
    again = publish(standin_onnx, repo)
    cleaned = not list((repo / "detector").glob(".publish-*"))
    ok = (killed.returncode == -signal.SIGKILL and after_kill == before and bool(debris) and report.ok
          and again.version == before[-1] + 1 and cleaned)
    scoreboard.record("fault", "SIGKILL during mouaadnet publish",
                      done="publish killed after copying half of model.onnx into its staging folder",
                      observed=f"exit {killed.returncode}; versions before {before}, after {after_kill} (no partial "
                               f"version: Triton only loads numeric folders); staging debris {debris} ignored by "
                               f"`repo check` ({report.ok}) and removed by the next publish ({cleaned}), which made "
                               f"version {again.version}", ok=ok, faults=1, data_lost=0 if after_kill == before else 1)
    assert ok, killed.stderr[-2000:]


def test_version_changed_after_publishing_is_refused_at_load(tmp_path, standin_onnx, scoreboard):
    """A published model.onnx whose bytes no longer match its sidecar: the version fails to load with the reason;
    `serve` names it and exits 1 instead of serving a file nobody published."""
    repo = _repo(tmp_path, standin_onnx)
    for name in ("mouaadnet", "preprocess", "postprocess"):
        import shutil

        shutil.rmtree(repo / name)
    with open(repo / "detector" / "2" / "model.onnx", "ab") as handle:
        handle.write(b"\0\0\0\0")  # bit rot / a hand edit after publishing
    serve = Serve(repo, tmp_path / "triton.log", "none")
    serve.wait_for("failed to load", 240)
    code = serve.stop()
    line = next((ln for ln in serve.lines if "failed to load" in ln), "")
    ok = code == 1 and "does not match" in line and "sha256" in line
    scoreboard.record("fault", "published model.onnx changed on disk afterwards",
                      done="4 bytes appended to detector/2/model.onnx, then mouaadnet serve",
                      observed=f"serve exit {code}: {line[:300]}", ok=ok, faults=1)
    assert ok, "\n".join(serve.lines)
