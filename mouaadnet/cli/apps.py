"""CLI wiring for the ways to try the model: `web` (the browser page) and `app` (Gradio)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def web(
    model: Annotated[list[Path] | None, typer.Option(
        "--model", help="Scene-mode ONNX to serve (repeatable: the page offers each; the first is the default). "
                        "Default: the shipped weights in weights/ (FP32 first: faster in WASM; INT8 offered).")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 8080,
    web_dir: Annotated[Path | None, typer.Option(help="The page folder (default: web/ of this checkout).")] = None,
    verbose: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Serve the browser page (web/) on 127.0.0.1: the model runs in the browser with onnxruntime-web.

    The page is cross-origin isolated (COOP/COEP headers), so WASM runs multi-threaded; WebGPU is used when the
    browser has it. Ctrl-C stops the server.
    """
    from mouaadnet.apps.models import DEFAULT_PRECISION, ModelError, default_model, shipped_model
    from mouaadnet.apps.web import WEB_DIR, WebServer, WebSetupError, WebSite

    try:
        models = list(model or [])
        if not models:  # the browser default first (docs/BENCHMARKS.md, "Browser"), the other precision offered
            models = [default_model("scene", app="web", echo=lambda m: typer.echo(m, err=True))]
            other = shipped_model("scene", "int8" if DEFAULT_PRECISION["web"] == "fp32" else "fp32")  # offered too
            if other is not None and other != models[0]:
                models.append(other)
        site = WebSite.build(models, web_dir or WEB_DIR)
        server = WebServer(site, port, quiet=not verbose)
    except (WebSetupError, ModelError) as error:
        _fail(str(error), 2)
    except OSError as error:
        _fail(f"cannot listen on 127.0.0.1:{port}: {error}", 2)
    for info in site.models:
        typer.echo(f"model {info.file} ({info.precision}, {info.version}) sha256 {info.sha256}")
    typer.echo(f"serving {site.web_dir} on {server.url}  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


def app_command(
    model: Annotated[Path | None, typer.Option("--model", help="Scene-mode ONNX (default: the shipped weights).")] = None,
    crop_model: Annotated[Path | None, typer.Option(help="Crop-mode ONNX (default: the shipped weights).")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 7860,
    threads: Annotated[int, typer.Option(help="Runtime threads per model call.")] = 1,
    runtime: Annotated[str, typer.Option(help="onnxruntime (default: the smallest process), openvino, or auto (the "
                                              "gated choice beside the model, e.g. weights/runtime_choice.json: "
                                              "faster, ~65 MiB more memory).")] = "onnxruntime",
    precision: Annotated[str | None, typer.Option(help="OpenVINO inference precision: f32 or bf16 (default: "
                                                       "OpenVINO's for this CPU).")] = None,
) -> None:
    """The Gradio demo on 127.0.0.1: scene tab (photo/webcam -> people) and crop tab (gender, age).

    The runtime (--runtime) runs in this process; models load on the first request. Ctrl-C stops it.
    """
    import tempfile

    from mouaadnet.apps.gradio_app import launch
    from mouaadnet.apps.models import ModelError, Predictor, default_model

    def warn(message: str) -> None:
        typer.echo(message, err=True)

    try:
        predictor = Predictor(model or default_model("scene", echo=warn), crop_model or default_model("crop", echo=warn),
                              threads=threads, runtime=runtime, precision=precision)
    except ModelError as error:
        _fail(str(error), 2)
    typer.echo(f"serving the app on http://127.0.0.1:{port}/  (Ctrl-C to stop)")
    examples = Path(tempfile.gettempdir()) / "mouaadnet-app-examples"
    launch(predictor, port, examples_dir=examples, block=True)


def register(app: typer.Typer) -> None:
    """Add web and app to the `mouaadnet` app (their benchmarks, bench-web and bench-app: mouaadnet.cli.bench)."""
    app.command()(web)
    app.command("app")(app_command)
