"""`mouaadnet bench-app`: resident memory of the Gradio app while it serves, beside the same inference alone.

Both are real processes started here and stopped by PID: `mouaadnet app` on a free 127.0.0.1 port, driven by
gradio_client (scene and crop requests on the pip-package photos), and a bare Python process that does the same
requests through `Predictor` (ONNX Runtime + prepost, no Gradio). VmRSS is read from /proc after the requests
(VmHWM: the peak). The difference is what Gradio itself adds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int) -> dict:
    """VmRSS (now) and VmHWM (peak) of a process, in MB (10^6 bytes)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024 / 1e6
    return {"rss_mb": round(fields["VmRSS"], 1), "peak_mb": round(fields["VmHWM"], 1)}


def start_app(scene: Path, crop: Path, port: int, threads: int = 1, log: Path | None = None,
              timeout: float = 180.0) -> subprocess.Popen:
    """`python -m mouaadnet.cli app ...` as a child process; returns once it answers HTTP on 127.0.0.1:port."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "mouaadnet.cli", "app", "--model", str(scene), "--crop-model",
                             str(crop), "--port", str(port), "--threads", str(threads)],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`mouaadnet app` exited with {proc.returncode}" + (f"; see {log}" if log else ""))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise TimeoutError(f"`mouaadnet app` did not answer on port {port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a child we started: SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _inference_only(scene: str, crop: str, requests: int) -> None:
    """Child-process body: the app's requests through Predictor alone; prints the memory as JSON."""
    from mouaadnet.apps.models import Predictor
    from mouaadnet.data.samples import sample_images

    photos = [p.read_bytes() for p in sample_images().values()]
    predictor = Predictor(scene, crop)
    before = memory_mb(os.getpid())
    for i in range(requests):
        data = photos[i % len(photos)]
        predictor.detect(data)
        predictor.classify_crop(data)
    print(json.dumps({"before_first_request": before, "serving": memory_mb(os.getpid())}))


def run_bench(scene: Path, crop: Path, requests: int = 20, echo=print) -> dict:
    from gradio_client import Client, handle_file

    from mouaadnet.data.samples import sample_images

    photos = list(sample_images().values())
    port = free_port()
    proc = start_app(scene, crop, port)
    try:
        idle = memory_mb(proc.pid)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        times = []
        for i in range(requests):
            photo = handle_file(str(photos[i % len(photos)]))
            start = time.perf_counter()
            client.predict(photo, 0.3, api_name="/scene")
            client.predict(photo, api_name="/crop")
            times.append((time.perf_counter() - start) * 1e3)
        serving = memory_mb(proc.pid)
    finally:
        stop(proc)
    code = "import sys; from mouaadnet.apps.app_bench import _inference_only as f; f(sys.argv[1], sys.argv[2], int(sys.argv[3]))"
    done = subprocess.run([sys.executable, "-c", code, str(scene), str(crop), str(requests)], capture_output=True,
                          text=True, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    alone = json.loads(done.stdout.strip().splitlines()[-1])
    import gradio

    result = {
        "app_idle_before_first_request": idle, "app_serving": serving,
        "inference_only_before_first_request": alone["before_first_request"], "inference_only_serving": alone["serving"],
        "gradio_adds_mb": round(serving["rss_mb"] - alone["serving"]["rss_mb"], 1),
        "requests": requests, "request_pair_ms_p50": round(sorted(times)[len(times) // 2], 1),
        "gradio": gradio.__version__, "loadavg": [round(v, 2) for v in os.getloadavg()],
        "models": {"scene": str(scene), "crop": str(crop)},
    }
    echo(json.dumps(result, indent=2))
    return result


def markdown(result: dict) -> str:
    a, b = result["app_serving"], result["inference_only_serving"]
    rows = [
        "| process | before the first request (RSS) | serving (RSS) | peak (VmHWM) |",
        "|---|---|---|---|",
        f"| `mouaadnet app` (Gradio {result['gradio']} + ONNX Runtime in-process) | "
        f"{result['app_idle_before_first_request']['rss_mb']:.0f} MB | {a['rss_mb']:.0f} MB | {a['peak_mb']:.0f} MB |",
        f"| the same inference alone (Predictor: ONNX Runtime + prepost) | "
        f"{result['inference_only_before_first_request']['rss_mb']:.0f} MB | {b['rss_mb']:.0f} MB | "
        f"{b['peak_mb']:.0f} MB |",
        "",
        f"Gradio adds {result['gradio_adds_mb']:.0f} MB; {result['requests']} scene + crop request pairs "
        f"(p50 {result['request_pair_ms_p50']:.0f} ms per pair through gradio_client); load average "
        f"{result['loadavg']}.",
    ]
    return "\n".join(rows)
