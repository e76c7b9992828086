"""Serving benchmark: Triton gRPC (ensemble with JPEG bytes; detector alone with tensors) vs in-process ORT.

Bounded load on loopback only: C client threads, each with its own gRPC channel, send one image per request for
a fixed number of seconds per level. Reports p50/p99 latency, throughput, failed requests and the RSS of the
server plus its Python-backend stubs. `mouaadnet bench-serve --out docs/BENCHMARKS.md` rewrites only the
'## Serving' section of that file.
"""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .prepost import preprocess_batch, postprocess

SECTION = "## Serving"


def bench_photo(size: int = 640) -> bytes:
    """scikit-image's astronaut (a real photo, 512 px) upscaled to size x size, JPEG quality 90."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _summary(latencies: list[float], errors: int, seconds: float) -> dict:
    lat = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {"requests": len(latencies), "errors": errors, "seconds": round(seconds, 2),
            "throughput": round(len(latencies) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def run_load(make_call, concurrency: int, seconds: float, max_requests: int = 1_000_000) -> dict:
    """Run ``make_call()()`` from ``concurrency`` threads for ``seconds``; count latencies and failures."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []
    start_gate = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        call = make_call()
        call()  # warm the channel / session outside the measurement
        start_gate.wait()
        while time.perf_counter() < deadline[0] and len(latencies[i]) < max_requests:
            t0 = time.perf_counter()
            try:
                call()
            except Exception as error:  # noqa: BLE001 - counted and reported
                errors[i] += 1
                if not first_error:
                    first_error.append(repr(error)[:300])
                continue
            latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds + 0.0
    start_gate.wait()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    for t in threads:
        t.join(seconds + 120)
    elapsed = time.perf_counter() - t0
    out = _summary([x for lst in latencies for x in lst], sum(errors), elapsed)
    if first_error:
        out["first_error"] = first_error[0]
    return out


def process_tree_rss(pid: int) -> dict:
    """RSS (MiB) of ``pid`` and of its descendants (the Python-backend stubs)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [c for c, p in parents.items() if p in frontier]
        tree += frontier

    def rss(p: int) -> float:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    server = rss(pid)
    stubs = sum(rss(p) for p in tree[1:])
    return {"server_mib": round(server, 1), "stubs_mib": round(stubs, 1), "stub_processes": len(tree) - 1,
            "total_mib": round(server + stubs, 1)}


def main(onnx: Path | None = None, seconds: float = 20.0, levels: list[int] | None = None, out: Path | None = None,
         json_out: Path | None = None, echo=print) -> dict:
    import tritonclient.grpc as grpcclient

    from .onnx_model import OrtModel, export_standin_onnx
    from .publish import publish
    from .server import ServerConfig, TritonServer, free_port

    levels = levels or [1, 4, 8]
    work = Path(tempfile.mkdtemp(prefix="mouaadnet-bench-"))
    if onnx is None:
        onnx = export_standin_onnx(work / "standin" / "model.onnx")
        model_label = "stand-in export (seeded random weights, same graph as model/export.py)"
    else:
        model_label = str(onnx)
    import shutil

    from .server import PROJECT_ROOT

    repo = work / "repo"
    shutil.copytree(PROJECT_ROOT / "triton_repo", repo,
                    ignore=shutil.ignore_patterns("*.onnx", "*.plan", "*.json", "__pycache__", ".publish*"))
    for version in repo.glob("*/[0-9]*"):
        if version.name != "1":
            shutil.rmtree(version)
    publish(onnx, repo)
    photo = bench_photo()
    cfg = ServerConfig(repo=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    results: dict = {"model": model_label, "photo_bytes": len(photo), "photo_px": "640x640 JPEG q90",
                     "seconds_per_level": seconds, "machine": f"{os.cpu_count()} cores, {platform.machine()}",
                     "ensemble": {}, "detector": {}, "ort_model": {}, "ort_pipeline": {}}
    tensor = preprocess_batch([photo], 320)[0]
    with TritonServer(cfg, log_path=work / "triton.log") as server:
        url = server.grpc_url
        results["rss_idle"] = process_tree_rss(server.pid)

        def ensemble_call():
            client = grpcclient.InferenceServerClient(url)
            inp = grpcclient.InferInput("image", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[photo]], dtype=np.object_))
            outs = [grpcclient.InferRequestedOutput(n) for n in ("boxes", "scores", "gender", "age", "count")]
            return lambda: client.infer("mouaadnet", [inp], outputs=outs, client_timeout=60)

        def detector_call():
            client = grpcclient.InferenceServerClient(url)
            inp = grpcclient.InferInput("images", list(tensor.shape), "FP32")
            inp.set_data_from_numpy(tensor)
            return lambda: client.infer("detector", [inp], client_timeout=60)

        for c in levels:
            echo(f"ensemble    concurrency {c} ...")
            results["ensemble"][c] = run_load(ensemble_call, c, seconds)
            echo(f"  {results['ensemble'][c]}")
        results["rss_loaded"] = process_tree_rss(server.pid)
        for c in levels:
            echo(f"detector    concurrency {c} ...")
            results["detector"][c] = run_load(detector_call, c, seconds)
            echo(f"  {results['detector'][c]}")
        stats = grpcclient.InferenceServerClient(url).get_inference_statistics(as_json=True)
        results["triton_stats"] = {
            m["name"]: {k: round(int(m["inference_stats"][k].get("ns", 0)) / max(int(
                m["inference_stats"][k].get("count", 0)), 1) / 1e6, 3)
                for k in ("queue", "compute_input", "compute_infer", "compute_output")}
            for m in stats.get("model_stats", []) if "inference_stats" in m}
    ort = OrtModel(onnx, threads=1)  # as each `detector` instance (config: intra_op_threads 1)

    def ort_model_call():
        return lambda: ort(tensor)

    def ort_pipeline_call():
        def call():
            images, meta = preprocess_batch([photo], 320)
            o = ort(images)
            postprocess(o["boxes"], o["scores"], o["gender"], o["age"], meta, 0.3)
        return call

    for c in levels:
        echo(f"in-process ORT model    concurrency {c} ...")
        results["ort_model"][c] = run_load(ort_model_call, c, seconds)
        echo(f"  {results['ort_model'][c]}")
    for c in levels:
        echo(f"in-process ORT pipeline concurrency {c} ...")
        results["ort_pipeline"][c] = run_load(ort_pipeline_call, c, seconds)
        echo(f"  {results['ort_pipeline'][c]}")
    results["overhead_p50_ms"] = round(results["detector"][levels[0]]["p50_ms"] - results["ort_model"][levels[0]]["p50_ms"], 2)
    shutil.rmtree(work, ignore_errors=True)
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n")
    if out:
        write_section(Path(out), render(results, seconds, levels))
        echo(f"updated {out} ({SECTION})")
    return results


def render(r: dict, seconds: float, levels: list[int]) -> str:
    rows = []
    for key, label in (("ensemble", "Triton ensemble `mouaadnet` (JPEG bytes in, people out)"),
                       ("ort_pipeline", "in-process: prepost + ONNX Runtime (same functions)"),
                       ("detector", "Triton model step `detector` (tensor [1,3,320,320] in)"),
                       ("ort_model", "in-process ONNX Runtime `session.run` (same tensor)")):
        for c in levels:
            x = r[key][c]
            rows.append(f"| {label} | {c} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['throughput']:.1f} | "
                        f"{x['requests']} | {x['errors']} |")
    stats = "\n".join(f"| `{name}` | {v['queue']:.2f} | {v['compute_input']:.2f} | {v['compute_infer']:.2f} | "
                      f"{v['compute_output']:.2f} |" for name, v in sorted(r.get("triton_stats", {}).items()))
    best = r["ensemble"][levels[-1]]
    return f"""{SECTION}

Command: `.venv/bin/mouaadnet bench-serve --out docs/BENCHMARKS.md` ({seconds:.0f} s per level; bounded load, 127.0.0.1
only). Server: the `tritonserver` 2.51 of the `nvidia-pytriton` 0.7.0 wheel (CPU, Python backend; `detector` = ONNX
Runtime inside a Python-backend model, 2 instances x 1 intra-op thread), started by `mouaadnet.serving.server`.
Model: {r['model']}. Input: {r['photo_px']} ({r['photo_bytes']:,} bytes), one image per request, each
client thread with its own gRPC channel. Machine: {r['machine']} (shared with other jobs while measured).

| path | concurrency | p50 ms | p99 ms | images/s | requests | failed |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

- Ensemble at concurrency {levels[-1]}: **{best['throughput']:.1f} images/s**, {best['errors']} failed requests
  (target >= 120 images/s, 0 failed).
- Triton per-request overhead on the model step at concurrency {levels[0]}: p50 {r['detector'][levels[0]]['p50_ms']:.2f} ms
  vs {r['ort_model'][levels[0]]['p50_ms']:.2f} ms in-process = **{r['overhead_p50_ms']:+.2f} ms** (target <= 1.5 ms).
- Memory (RSS): idle server {r['rss_idle']['server_mib']} MiB + {r['rss_idle']['stub_processes']} stubs
  {r['rss_idle']['stubs_mib']} MiB = {r['rss_idle']['total_mib']} MiB; after the ensemble load
  {r['rss_loaded']['total_mib']} MiB.

Server-side averages per request (ms, Triton statistics over the whole run):

| model | queue | compute input | compute infer | compute output |
|---|---|---|---|---|
{stats}
"""


def write_section(path: Path, body: str) -> None:
    """Replace (or append) the '## Serving' section; other sections are left as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + body
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + body + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    path.write_text(new if new.endswith("\n") else new + "\n")
