"""`mouaadnet bench`: latency / throughput of every form of the model on this CPU, best runtime per model, and the
process RSS per runtime.

Backends: PyTorch eager (training form, deploy form), ONNX Runtime FP32 and INT8 QDQ (U8S8), OpenVINO with the
FP32 graph at f32 and at bf16 inference precision (bf16: OpenVINO's default on AMX CPUs) and OpenVINO INT8 (NNCF
PTQ on the same calibration images, ``mouaadnet.runtime.openvino_export``), and a peer in the same run: the
YOLOv8n architecture (``mouaadnet.bench.peers``) through the same exporters, quantizers and runtimes (scene size
only). All backends of one (mode, batch, threads) setting are timed in interleaved rounds after warm-up, so a
load change on a shared machine hits every row alike; ORT sessions run with idle-thread spinning off, OpenVINO
with one stream, a latency hint and a static batch. ``best`` names the fastest runtime/precision per model (scene,
batch 1, 1 thread; crop too for ours) and the ratio ours/peer at each side's best. Peak RSS per runtime is
measured in a fresh subprocess that only loads one model and runs it (``process_peak_rss_mb``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from model import ModelConfig, build_model, reparameterize_model
from model.export import export_onnx, quantize_int8
from mouaadnet.runtime.timing import cpu_name, time_interleaved

PEER = "peer-yolov8n"
ORT_BACKENDS = ("ort-fp32", "ort-int8")
OV_BACKENDS = ("ov-f32", "ov-bf16", "ov-int8")
DEFAULT_BACKENDS = ("torch-train", "torch-deploy", *ORT_BACKENDS, *OV_BACKENDS)
# backend -> (model file kind, runtime, OpenVINO precision)
FILE_BACKENDS = {"ort-fp32": ("fp32", "onnxruntime", None), "ort-int8": ("int8", "onnxruntime", None),
                 "ov-f32": ("fp32", "openvino", "f32"), "ov-bf16": ("fp32", "openvino", "bf16"),
                 "ov-int8": ("ov-int8", "openvino", None)}


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
    precision: str | None = None  # stated by the runtime; OpenVINO INT8: "int8/<precision of the float parts>"


_RSS_SCRIPT = """
import resource, sys
import numpy as np
from mouaadnet.runtime import open_model
m = open_model(sys.argv[1], sys.argv[2], None if sys.argv[3] == "-" else sys.argv[3], threads=1)
x = np.random.rand(1, 3, m.size, m.size).astype(np.float32)
for _ in range(20):
    m(x)
# VmHWM (peak RSS of this address space) rather than ru_maxrss alone: Linux carries ru_maxrss over fork+exec,
# so a child of a big parent (torch loaded) would report the parent's peak.
try:
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
except (OSError, IndexError):
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(hwm)
"""


def process_peak_rss_mb(path: str | Path, size: int | None = None, runtime: str = "onnxruntime",
                        precision: str | None = None) -> float:
    """Peak RSS (MiB) of a fresh Python process that loads ``path`` in ``runtime`` (``mouaadnet.runtime``, 1 thread)
    and runs 20 inferences at batch 1. ``size`` is unused (the model's own input size is taken); kept for callers.

    Read from /proc/self/status VmHWM in the child (falls back to ``resource.getrusage`` ru_maxrss, which on
    Linux is inherited across fork+exec and would report the parent's peak). The child imports only numpy and
    the runtime (no torch), as a deployment would."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), runtime, precision or "-"], check=True,
                         capture_output=True, text=True, timeout=300, env=env)
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0  # KiB -> MiB


def _openvino_ok(backends: tuple[str, ...]) -> tuple[str, ...]:
    """Drop the OpenVINO backends (with a note) when openvino/nncf are not installed."""
    from mouaadnet.runtime import openvino_available

    wanted = [b for b in backends if b.startswith("ov-")]
    if not wanted or openvino_available():
        return backends
    print("bench: openvino is not installed; OpenVINO rows skipped (pip install 'mouaadnet-ultra[openvino]')",
          file=sys.stderr)
    return tuple(b for b in backends if not b.startswith("ov-"))


def _model_files(export: Callable[[Path], None], name: str, work: Path, size: int, backends: tuple[str, ...],
                 calibration: torch.Tensor, contract: bool = True) -> dict[str, Path]:
    """The files the backends need: FP32 ONNX, ORT INT8 QDQ, OpenVINO NNCF INT8 IR (same calibration images)."""
    kinds = {FILE_BACKENDS[b][0] for b in backends if b in FILE_BACKENDS}
    if not kinds:
        return {}
    files = {"fp32": work / f"{name}.onnx"}
    export(files["fp32"])
    if "int8" in kinds:
        files["int8"] = quantize_int8(files["fp32"], work / f"{name}.int8.onnx", calibration, contract=contract)
    if "ov-int8" in kinds:
        from mouaadnet.runtime.openvino_export import quantize_openvino

        files["ov-int8"] = quantize_openvino(files["fp32"], work / f"{name}.ov-int8.xml", calibration.numpy())
    return files


def _file_mb(path: Path) -> float:
    from mouaadnet.runtime.openvino_export import ir_size_mb

    return ir_size_mb(path) if path.suffix == ".xml" else path.stat().st_size / 1e6


def run_bench(cfg: ModelConfig | None = None, model: torch.nn.Module | None = None,
              sizes: dict[str, int] | None = None, batches: tuple[int, ...] = (1, 8),
              threads: tuple[int, ...] = (1, 2), runs: int = 200, warmup: int = 20,
              calibration: torch.Tensor | None = None, workdir: str | Path | None = None,
              backends: tuple[str, ...] = DEFAULT_BACKENDS, peer: bool = True, rss: bool = True) -> dict:
    """Benchmark every backend x mode x batch x threads (the peer's rows interleaved with ours at the scene size);
    returns {"rows": [...], "best": {...}, "rss_mb": {...}, "files_mb": {...}, ...}.

    ``model``: training form (random weights from ``cfg`` when None: speed does not depend on the weights).
    ``calibration``: float32 [N,3,S,S] scene-size images for INT8 (random when None: fine for timing only).
    """
    from mouaadnet.runtime import open_model

    cfg = cfg or ModelConfig()
    sizes = sizes or {"scene": cfg.scene_size, "crop": cfg.crop_size}
    backends = _openvino_ok(tuple(backends))
    if model is None:
        torch.manual_seed(0)  # reproducible random weights: export's parity check then sees the same graph every run
    train = (model or build_model(cfg)).eval()
    deploy = reparameterize_model(train)
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    work = Path(tmp.name if tmp else workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    files_mb: dict[str, float] = {}
    rss_mb: dict[str, float] = {}
    old_threads = torch.get_num_threads()
    try:
        files: dict[tuple[str, str], dict[str, Path]] = {}
        for mode, size in sizes.items():
            calib = calibration if calibration is not None and mode == "scene" else None
            if calib is None or calib.shape[-1] != size:
                calib = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0))
            files[("ours", mode)] = _model_files(lambda path, mode=mode, size=size: export_onnx(train, path, mode, size),
                                                 f"{mode}{size}", work, size, backends, calib)
        if peer and "scene" in sizes:
            from mouaadnet.bench.peers import export_yolov8n_like

            size = sizes["scene"]
            files[("peer", "scene")] = _model_files(lambda path: export_yolov8n_like(path, size), f"peer{size}", work,
                                                    size, backends, torch.rand(8, 3, size, size,
                                                                               generator=torch.Generator().manual_seed(0)),
                                                    contract=False)
        for (who, mode), found in files.items():
            for kind, path in found.items():
                label = f"{mode} {kind}" if who == "ours" else f"peer yolov8n {kind}"
                files_mb[label] = _file_mb(path)
        for mode, size in sizes.items():
            for batch in batches:
                x = torch.rand(batch, 3, size, size)
                xn = np.ascontiguousarray(x.numpy())
                for n in threads:
                    torch.set_num_threads(n)
                    fns: dict[str, Callable[[], object]] = {}
                    meta: dict[str, tuple[str, float | None, str | None]] = {}
                    for who in ("ours", "peer"):
                        found = files.get((who, mode))
                        if found is None:
                            continue
                        for backend in backends:
                            if backend not in FILE_BACKENDS:
                                continue
                            kind, runtime, precision = FILE_BACKENDS[backend]
                            m = open_model(found[kind], runtime, precision, threads=n)
                            name = backend if who == "ours" else f"{PEER}-{backend}"
                            fns[name] = lambda m=m, xn=xn: m(xn)
                            # an OpenVINO INT8 model: INT8 convs, the stated precision for what stays float
                            stated = f"int8/{m.precision}" if m.runtime == "openvino" and m.quantized else m.precision
                            meta[name] = (mode, _file_mb(found[kind]), stated)
                    for backend in backends:
                        if backend.startswith("torch"):
                            net = train if backend == "torch-train" else deploy

                            def fn(net=net, x=x, mode=mode):
                                with torch.inference_mode():
                                    return net(x, mode=mode)
                            fns[backend], meta[backend] = fn, (mode, None, "fp32")
                    for name, (p50, p90, mean) in time_interleaved(fns, runs, warmup).items():
                        _, mb, precision = meta[name]
                        rows.append(Row(name, mode, size, batch, n, p50, p90, batch / mean * 1e3, mb, precision))
                    fns.clear()
        if rss:
            for (who, mode), found in files.items():
                if mode != "scene":
                    continue
                for backend in backends:
                    if backend in FILE_BACKENDS:
                        kind, runtime, precision = FILE_BACKENDS[backend]
                        name = backend if who == "ours" else f"{PEER}-{backend}"
                        rss_mb[name] = process_peak_rss_mb(found[kind], None, runtime, precision)
    finally:
        torch.set_num_threads(old_threads)
        if tmp:
            tmp.cleanup()
    return {"rows": [asdict(r) for r in rows], "best": best_rows([asdict(r) for r in rows]), "rss_mb": rss_mb,
            "files_mb": files_mb, "runs": runs, "warmup": warmup, "cpu": cpu_name(), "cores": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def best_rows(rows: list[dict], batch: int = 1, threads: int = 1) -> dict:
    """The fastest exported-model row (ONNX Runtime / OpenVINO; PyTorch eager is not a deployment) per model and
    mode at ``batch``/``threads``, and ours/peer at each side's best (scene)."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["batch"] != batch or r["threads"] != threads or r["backend"].startswith(("torch", f"{PEER}-torch")):
            continue
        who = "peer" if r["backend"].startswith(PEER) else "ours"
        key = f"{who} {r['mode']}"
        if key not in best or r["p50_ms"] < best[key]["p50_ms"]:
            best[key] = r
    out: dict = {"batch": batch, "threads": threads, "models": best}
    if "ours scene" in best and "peer scene" in best:
        out["ours_over_peer"] = best["ours scene"]["p50_ms"] / best["peer scene"]["p50_ms"]
    return out



def markdown(result: dict) -> str:
    """The benchmark as a Markdown table, then the best runtime per model, peak RSS per runtime and file sizes."""
    load = result.get("load_average")
    load_text = f"; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end" if load else ""
    lines = [f"CPU: {result['cpu']} ({result['cores']} cores); {result['runs']} timed runs after "
             f"{result['warmup']} warm-up, backends interleaved in rounds; ORT spinning off{load_text}.", "",
             "| backend | mode | input | batch | threads | precision | p50 ms | p90 ms | images/s | file MB |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        mb = f"{r['file_mb']:.3f}" if r["file_mb"] is not None else ""
        lines.append(f"| {r['backend']} | {r['mode']} | {r['size']}x{r['size']} | {r['batch']} | {r['threads']} | "
                     f"{r.get('precision') or ''} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['images_per_s']:.1f} | {mb} |")
    best = result.get("best") or {}
    if best.get("models"):
        lines += ["", f"Best exported runtime per model (batch {best['batch']}, {best['threads']} thread):"]
        for key, r in best["models"].items():
            lines.append(f"- {key}: {r['backend']} ({r.get('precision') or '-'}) {r['p50_ms']:.2f} ms")
        if "ours_over_peer" in best:
            lines.append(f"- ours / peer at each side's best (scene): {best['ours_over_peer']:.2f}x")
    if result.get("rss_mb"):
        lines += ["", "Peak RSS of an inference process (scene, batch 1, 1 thread; numpy + the runtime, no torch): "
                  + ", ".join(f"{k} {v:.1f} MiB" for k, v in result["rss_mb"].items())]
    if result["files_mb"]:
        lines.append("Files: " + ", ".join(f"{k} {v:.3f} MB" for k, v in result["files_mb"].items())
                     + " (OpenVINO IR: .xml + .bin)")
    return "\n".join(lines)
