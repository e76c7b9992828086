"""`mouaadnet bench`: latency / throughput of every form of the model on this CPU, and the INT8 process RSS.

Backends: PyTorch eager (training form, deploy form), ONNX Runtime FP32 and INT8 QDQ (U8S8), and a peer in the
same run: the YOLOv8n architecture (``mouaadnet.bench.peers``) in ONNX Runtime FP32 and INT8, exported and quantized
the same way (scene size only). Each setting is
timed after warm-up; ORT sessions run with idle-thread spinning off so sessions timed in turn don't steal
each other's cores. Peak RSS is measured in a fresh subprocess that only loads the INT8 model and runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from model import ModelConfig, build_model, reparameterize_model
from model.export import export_onnx, ort_session, quantize_int8


@dataclass
class Row:
    backend: str
    mode: str
    size: int
    batch: int
    threads: int
    p50_ms: float
    p90_ms: float
    images_per_s: float
    file_mb: float | None = None


def time_fn(fn: Callable[[], object], runs: int, warmup: int) -> tuple[float, float, float]:
    """(p50 ms, p90 ms, mean ms) of ``fn`` over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 90) * 1e3), float(times.mean() * 1e3)


_RSS_SCRIPT = """
import resource, sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
o.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
x = np.random.rand(1, 3, int(sys.argv[2]), int(sys.argv[2])).astype(np.float32)
for _ in range(20):
    s.run(None, {"images": x})
# VmHWM (peak RSS of this address space) rather than ru_maxrss alone: Linux carries ru_maxrss over fork+exec,
# so a child of a big parent (torch loaded) would report the parent's peak.
try:
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
except (OSError, IndexError):
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(hwm)
"""


def process_peak_rss_mb(onnx_path: str | Path, size: int) -> float:
    """Peak RSS (MiB) of a fresh Python process that loads ``onnx_path`` in ORT and runs 20 inferences.

    Read from /proc/self/status VmHWM in the child (falls back to ``resource.getrusage`` ru_maxrss, which on
    Linux is inherited across fork+exec and would report the parent's peak)."""
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(onnx_path), str(size)], check=True,
                         capture_output=True, text=True, timeout=300)
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0  # KiB -> MiB


def run_bench(cfg: ModelConfig | None = None, model: torch.nn.Module | None = None,
              sizes: dict[str, int] | None = None, batches: tuple[int, ...] = (1, 8),
              threads: tuple[int, ...] = (1, 2), runs: int = 200, warmup: int = 20,
              calibration: torch.Tensor | None = None, workdir: str | Path | None = None,
              backends: tuple[str, ...] = ("torch-train", "torch-deploy", "ort-fp32", "ort-int8"),
              peer: bool = True) -> dict:
    """Benchmark every backend x mode x batch x threads; returns {"rows": [...], "rss_mb": ..., "files": ...}.

    ``model``: training form (random weights from ``cfg`` when None: speed does not depend on the weights).
    ``calibration``: float32 [N,3,S,S] scene-size images for INT8 (random when None: fine for timing only).
    """
    cfg = cfg or ModelConfig()
    sizes = sizes or {"scene": cfg.scene_size, "crop": cfg.crop_size}
    if model is None:
        torch.manual_seed(0)  # reproducible random weights: export's parity check then sees the same graph every run
    train = (model or build_model(cfg)).eval()
    deploy = reparameterize_model(train)
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    work = Path(tmp.name if tmp else workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    files: dict[str, float] = {}
    rss = peer_rss = None
    old_threads = torch.get_num_threads()
    try:
        for mode, size in sizes.items():
            fp32, int8 = work / f"{mode}{size}.onnx", work / f"{mode}{size}.int8.onnx"
            if any(b.startswith("ort") for b in backends):
                export_onnx(train, fp32, mode, size)
                calib = calibration if calibration is not None and mode == "scene" else None
                if calib is None or calib.shape[-1] != size:
                    calib = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0))
                quantize_int8(fp32, int8, calib)
                files[f"{mode} fp32"] = fp32.stat().st_size / 1e6
                files[f"{mode} int8"] = int8.stat().st_size / 1e6
            for batch in batches:
                x = torch.rand(batch, 3, size, size)
                xn = x.numpy()
                for n in threads:
                    for backend in backends:
                        if backend.startswith("ort"):
                            path = fp32 if backend == "ort-fp32" else int8
                            rows.append(_time_ort(backend, path, mode, xn, n, runs, warmup))
                            continue
                        torch.set_num_threads(n)
                        net = train if backend == "torch-train" else deploy

                        def fn(net=net, x=x, mode=mode):
                            with torch.inference_mode():
                                return net(x, mode=mode)
                        p50, p90, mean = time_fn(fn, runs, warmup)
                        rows.append(Row(backend, mode, size, batch, n, p50, p90, batch / mean * 1e3))
        if "ort-int8" in backends and "scene" in sizes:
            rss = process_peak_rss_mb(work / f"scene{sizes['scene']}.int8.onnx", sizes["scene"])
        if peer and "scene" in sizes:
            peer_rows, peer_files, peer_rss = _bench_peer(work, sizes["scene"], batches, threads, runs, warmup)
            rows += peer_rows
            files.update(peer_files)
    finally:
        torch.set_num_threads(old_threads)
        if tmp:
            tmp.cleanup()
    return {"rows": [asdict(r) for r in rows], "rss_mb": rss, "files_mb": files, "runs": runs, "warmup": warmup,
            "cpu": _cpu_name(), "cores": os.cpu_count(), "peer_rss_mb": peer_rss}


def _time_ort(backend: str, path: Path, mode: str, images: np.ndarray, threads: int, runs: int, warmup: int) -> Row:
    """One ONNX Runtime row: a session with ``threads`` intra-op threads timed on ``images``."""
    sess = ort_session(path, threads=threads)
    p50, p90, mean = time_fn(lambda: sess.run(None, {"images": images}), runs, warmup)
    batch, size = images.shape[0], images.shape[-1]
    return Row(backend, mode, size, batch, threads, p50, p90, batch / mean * 1e3, path.stat().st_size / 1e6)


def _bench_peer(work: Path, size: int, batches: tuple[int, ...], threads: tuple[int, ...], runs: int,
                warmup: int) -> tuple[list[Row], dict[str, float], float]:
    """Rows, file sizes and INT8 process peak RSS of the YOLOv8n-architecture peer at ``size`` (scene input)."""
    from mouaadnet.bench.peers import export_yolov8n_like

    fp32, int8 = work / f"peer{size}.onnx", work / f"peer{size}.int8.onnx"
    export_yolov8n_like(fp32, size)
    quantize_int8(fp32, int8, torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0)), contract=False)
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
        for n in threads:
            for name, path in (("peer-yolov8n-ort-fp32", fp32), ("peer-yolov8n-ort-int8", int8)):
                rows.append(_time_ort(name, path, "scene", x, n, runs, warmup))
    files = {"peer yolov8n fp32": fp32.stat().st_size / 1e6, "peer yolov8n int8": int8.stat().st_size / 1e6}
    return rows, files, process_peak_rss_mb(int8, size)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def markdown(result: dict) -> str:
    """The benchmark as a Markdown table, plus peak RSS and file sizes."""
    lines = [f"CPU: {result['cpu']} ({result['cores']} cores); {result['runs']} timed runs after "
             f"{result['warmup']} warm-up; ORT spinning off.", "",
             "| backend | mode | input | batch | threads | p50 ms | p90 ms | images/s | file MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        mb = f"{r['file_mb']:.3f}" if r["file_mb"] is not None else ""
        lines.append(f"| {r['backend']} | {r['mode']} | {r['size']}x{r['size']} | {r['batch']} | {r['threads']} | "
                     f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['images_per_s']:.1f} | {mb} |")
    if result["rss_mb"] is not None:
        lines += ["", f"Peak RSS of an ORT INT8 inference process (scene, batch 1, 1 thread): {result['rss_mb']:.1f} MiB"]
    if result.get("peer_rss_mb") is not None:
        lines.append(f"Same for the peer (YOLOv8n architecture, INT8): {result['peer_rss_mb']:.1f} MiB")
    if result["files_mb"]:
        lines.append("Files: " + ", ".join(f"{k} {v:.3f} MB" for k, v in result["files_mb"].items()))
    return "\n".join(lines)
