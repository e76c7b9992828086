"""`mouaadnet bench-web`: model-call latency in headless Chromium (onnxruntime-web) beside ONNX Runtime in Python.

Rows: WASM 1 thread, WASM with threads (cross-origin isolated page), WebGPU on SwiftShader where asked (the
software adapter that headless Chromium offers with unsafe flags: proves the path, not GPU speed), and
ONNX Runtime in Python at 1 and 2 threads; each for every model given (FP32 and INT8). Each configuration runs
in a fresh browser; the whole set is repeated `rounds` times, interleaved, so a background load drifting over
the run shifts every row alike. Timings are the `session.run` call only (no decode / letterbox), on one photo,
after `warmup` calls (V8 compiles WASM in tiers: the first ~20 calls are slower).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mouaadnet.runtime.timing import cpu_name


@dataclass
class Config:
    runtime: str  # "browser" | "python"
    provider: str  # wasm | webgpu | cpu
    threads: int | None
    flags: tuple[str, ...] = ()
    note: str = ""


@dataclass
class Row:
    runtime: str
    provider: str
    threads: int | None
    model: str
    precision: str
    p50_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    note: str = ""
    samples: list[float] = field(default_factory=list, repr=False)


def machine_facts() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "loadavg": [round(v, 2) for v in load],
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def browser_configs(webgpu: bool, threads: int | None = None) -> list[Config]:
    from .browser import WEBGPU_SOFTWARE_FLAGS

    many = threads or max(2, min(4, os.cpu_count() or 2))
    configs = [Config("browser", "wasm", 1), Config("browser", "wasm", many)]
    if webgpu:
        configs.append(Config("browser", "webgpu", None, WEBGPU_SOFTWARE_FLAGS, "SwiftShader (CPU-emulated GPU)"))
    return configs


def _browser_times(url: str, config: Config, model: str, image_url: str, runs: int, warmup: int) -> tuple[list, dict]:
    from .browser import chromium, open_page

    query = f"model={model}&ep={config.provider}" + (f"&threads={config.threads}" if config.threads else "")
    with chromium(config.flags) as browser:
        page = open_page(browser, f"{url}?{query}", timeout_s=600)
        info = page.evaluate("window.mouaadnet.ready")
        if info["ep"] != config.provider:
            raise RuntimeError(f"asked for {config.provider}, the page runs {info['ep']} ({info.get('fallback')})")
        times = page.evaluate(f"window.mouaadnet.bench({image_url!r}, {runs}, {warmup})")
    return times, info


def _python_times(path: Path, threads: int, tensor: np.ndarray, runs: int, warmup: int) -> list[float]:
    from mouaadnet.runtime.session import ort_session
    from mouaadnet.runtime.timing import call_times_ms

    session = ort_session(path, threads)
    feed = {"images": tensor[None]}
    return call_times_ms({"python": lambda: session.run(None, feed)}, runs, warmup, rounds=1)["python"]


def run_bench(models: list[Path], image: Path | None = None, runs: int = 50, warmup: int = 30, rounds: int = 3,
              webgpu: bool = True, python_threads: tuple[int, ...] = (1, 2), echo=print) -> dict:
    """Measure every configuration for every model; returns {facts, rows}."""
    from mouaadnet.data.samples import sample_images
    from mouaadnet.serving.prepost import preprocess_one

    from .web import WebServer, WebSite

    site = WebSite.build(models)
    samples = sample_images()
    image = Path(image) if image else next(iter(samples.values()))
    site.samples.setdefault(image.name, image)
    image_url = f"samples/{image.name}"
    configs = browser_configs(webgpu) + [Config("python", "cpu", t) for t in python_threads]
    collected: dict[tuple, list[float]] = {}
    infos: dict[tuple, dict] = {}
    facts = machine_facts()
    loads = [facts["loadavg"][0]]
    with WebServer(site, 0) as server:
        for r in range(rounds):
            for config in configs:
                if config.provider == "webgpu" and r > 0:
                    continue  # SwiftShader is ~100x slower than WASM: one round says enough
                for info in site.models:
                    key = (config.runtime, config.provider, config.threads, info.name)
                    # SwiftShader WebGPU is ~100x slower: a few calls say enough
                    n, w = (max(3, runs // 10), 3) if config.provider == "webgpu" else (runs, warmup)
                    if config.runtime == "browser":
                        times, page_info = _browser_times(server.url, config, info.name, image_url, n, w)
                        infos[key] = page_info
                    else:
                        tensor, _ = preprocess_one(image.read_bytes(), info.input_size or 320)
                        times = _python_times(info.path, config.threads, tensor, n, w)
                    collected.setdefault(key, []).extend(times)
                    echo(f"round {r + 1}/{rounds} {config.runtime:7s} {config.provider:6s} "
                         f"threads={config.threads} {info.name}: p50 {statistics.median(times):.2f} ms")
            loads.append(os.getloadavg()[0])
    rows = []
    for config in configs:
        for info in site.models:
            key = (config.runtime, config.provider, config.threads, info.name)
            t = np.asarray(collected[key])
            threads = infos.get(key, {}).get("threads", config.threads) if config.runtime == "browser" else config.threads
            rows.append(Row(config.runtime, config.provider, threads, info.name, info.precision,
                            float(np.median(t)), float(np.percentile(t, 90)), float(t.min()), len(t), config.note,
                            [round(float(v), 3) for v in t]))
    import onnxruntime

    facts.update({"loadavg_during": [round(v, 2) for v in loads], "image": image.name,
                  "onnxruntime": onnxruntime.__version__,
                  "onnxruntime_web": next(iter(infos.values()), {}).get("ortVersion"),
                  "chromium": _chromium_version(), "rounds": rounds, "runs": runs, "warmup": warmup,
                  "models": [m.as_dict() for m in site.models]})
    return {"facts": facts, "rows": [asdict(r) for r in rows]}


def _chromium_version() -> str:
    import subprocess

    from .browser import chromium_path

    try:
        out = subprocess.run([chromium_path(), "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip()
    except Exception:  # noqa: BLE001 - only a label
        return "?"


def markdown(result: dict) -> str:
    lines = ["| runtime | provider | threads | model | p50 ms | p90 ms | min ms | calls | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        runtime = "Chromium, onnxruntime-web" if r["runtime"] == "browser" else "Python, onnxruntime"
        lines.append(f"| {runtime} | {r['provider']} | {r['threads'] or '-'} | {r['model']} ({r['precision']}) | "
                     f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['min_ms']:.2f} | {r['runs']} | {r['note']} |")
    f = result["facts"]
    lines.append("")
    lines.append(f"{f['cpu']}, {f['cores']} cores; load average {f['loadavg']} at the start, 1-min load "
                 f"{f['loadavg_during']} after each round; {f['chromium']}; onnxruntime-web {f['onnxruntime_web']}; "
                 f"onnxruntime {f['onnxruntime']}; image {f['image']}; {f['rounds']} rounds x {f['runs']} calls "
                 f"after {f['warmup']} warm-up calls; {f['time']}.")
    return "\n".join(lines)
