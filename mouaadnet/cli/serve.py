"""Serving commands: `serve`, `detect`, `publish`, `repo check` (`bench-serve`: mouaadnet.cli.bench). Registered by
mouaadnet.cli."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    repo_app = typer.Typer(help="Triton model repository tools.", no_args_is_help=True)
    app.add_typer(repo_app, name="repo")

    @app.command()
    def serve(
        repo: Annotated[Path, typer.Option(help="Triton model repository.")] = Path("triton_repo"),
        grpc_port: Annotated[int, typer.Option(help="gRPC port (bound to 127.0.0.1).")] = 8001,
        http_port: Annotated[int, typer.Option(help="HTTP port (bound to 127.0.0.1).")] = 8000,
        metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (bound to 127.0.0.1).")] = 8002,
        model_control_mode: Annotated[str, typer.Option(
            help="none (load all at start), explicit (load/unload via the API, e.g. after `publish --load`) "
                 "or poll.")] = "none",
        load_model: Annotated[list[str] | None, typer.Option(
            help="explicit mode: model to load at start (repeatable; default all).")] = None,
        log_file: Annotated[Path | None, typer.Option(help="Write Triton's log here instead of the terminal.")] = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 180.0,
        recover: Annotated[bool, typer.Option(
            help="When a Python-backend stub dies: reload its model, the server keeps running (none/explicit), "
                 "or restart the server (poll), at most 3 times in 10 minutes. --no-recover exits 1 instead "
                 "(for a supervisor).")] = True,
    ) -> None:
        """Run the real tritonserver (from the serving venv) on 127.0.0.1 until Ctrl-C / SIGTERM.

        Exits 1 with Triton's own reason when a model fails to load. Watches the Python-backend stubs: Triton
        does not notice one that died (it stays READY and fails the requests routed to it), so serve reloads
        that model (the request guard sends the failed requests again meanwhile) and says so.
        """
        from mouaadnet.serving.supervise import serve as run
        from mouaadnet.serving.triton_install import ServerConfig, ServerError

        cfg = ServerConfig(repo=repo, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                           control_mode=model_control_mode, load_models=list(load_model or []))
        try:
            code = run(cfg, echo=typer.echo, timeout=timeout, log_path=log_file, recover=recover)
        except ServerError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        raise typer.Exit(code)

    @app.command()
    def detect(
        images: Annotated[list[Path], typer.Argument(
            help="Image files (JPEG/PNG/...), or folders: every image file directly in a folder.")],
        url: Annotated[str | None, typer.Option(
            help="Ask a Triton server at this gRPC endpoint (e.g. 127.0.0.1:8001) instead of running in-process.")] = None,
        model: Annotated[Path | None, typer.Option(
            "--model", help="Model to run in-process (default: the shipped weights, weights/); see --runtime.")] = None,
        runtime: Annotated[str, typer.Option(
            help="In-process runtime: auto (default: the fastest runtime that passed the gates, recorded by "
                 "`gates --choose` beside the model, e.g. weights/runtime_choice.json; else onnxruntime), "
                 "onnxruntime, or openvino (.onnx or IR .xml).")
        ] = "auto",
        precision: Annotated[str | None, typer.Option(
            help="OpenVINO inference precision: f32 or bf16 (default: OpenVINO's on this CPU, bf16 with AMX; "
                 "printed). ONNX Runtime runs the graph's own precision.")] = None,
        threshold: Annotated[float, typer.Option(help="Minimum person score.")] = 0.3,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        draw: Annotated[Path | None, typer.Option(
            help="Write the image with boxes and labels here (with several images: OUT_<i>.ext).")] = None,
        sheet: Annotated[Path | None, typer.Option(
            help="Write one contact sheet of every image (3 per row, a caption under each) here.")] = None,
        labels: Annotated[Path | None, typer.Option(
            help="With --sheet: YOLO label folder (<stem>.txt per image); labelled people are drawn in yellow "
                 "and each caption counts those found at IoU 0.5.")] = None,
    ) -> None:
        """Find people (box, score, gender, age) in images: in-process with the shipped weights by default, or
        through a Triton server (--url)."""
        from mouaadnet.serving.client import (
            ClientError,
            LocalDetector,
            TritonDetector,
            expand_paths,
            format_people,
            read_images,
        )
        from mouaadnet.serving.client import as_json as to_json
        from mouaadnet.serving.client import draw as draw_image
        from mouaadnet.serving.gallery import contact_sheet
        from mouaadnet.weights import WeightsError, default_model

        if labels is not None and (sheet is None or not labels.is_dir()):
            typer.echo(f"error: --labels {labels}: needs --sheet and an existing folder of YOLO label files", err=True)
            raise typer.Exit(2)
        if url is not None and (model is not None or runtime != "auto" or precision is not None):
            typer.echo("error: --model/--runtime/--precision choose what runs in-process; with --url the server "
                       "runs its own model (the detector's `runtime` parameter)", err=True)
            raise typer.Exit(2)
        try:
            images, notes = expand_paths(images)
            for note in notes:
                typer.echo(note, err=True)
            blobs = read_images(images)
            if url is not None:
                detector = TritonDetector(url)
            else:
                path = model if model is not None else default_model("scene")
                detector = LocalDetector(path, runtime=runtime, precision=precision)
                typer.echo(f"model: {detector.describe()}", err=True)
            people = detector.detect(blobs, threshold)
        except (ClientError, ValueError, WeightsError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        if as_json:
            typer.echo(to_json(images, people))
        else:
            for path, found in zip(images, people):
                typer.echo("\n".join(format_people(str(path), found)))
        if draw is not None:
            for i, (blob, found) in enumerate(zip(blobs, people)):
                out = draw if len(blobs) == 1 else draw.with_name(f"{draw.stem}_{i}{draw.suffix}")
                typer.echo(f"wrote {draw_image(blob, found, out)}", err=as_json)
        if sheet is not None:
            try:
                typer.echo(f"wrote {contact_sheet(images, blobs, people, sheet, labels)}", err=as_json)
            except ValueError as error:  # a malformed label file: say which line
                typer.echo(f"error: {error}", err=True)
                raise typer.Exit(1) from None

    @app.command()
    def publish(
        artifact: Annotated[Path, typer.Argument(help="model.onnx (python/onnxruntime) or model.plan (tensorrt).")],
        repo: Annotated[Path, typer.Option(help="Triton model repository.")] = Path("triton_repo"),
        backend: Annotated[str, typer.Option(help="python | onnxruntime | tensorrt")] = "python",
        model: Annotated[str, typer.Option(help="Model folder to publish into.")] = "detector",
        keep: Annotated[int, typer.Option(help="Keep the newest K versions.")] = 3,
        load: Annotated[str | None, typer.Option(
            help="gRPC URL of a server in explicit model-control mode: load the new version there.")] = None,
    ) -> None:
        """Publish ARTIFACT as the next version (atomic rename; sha256 checked against its sidecar)."""
        from mouaadnet.serving.publish import PublishError, load_on_server
        from mouaadnet.serving.publish import publish as do_publish

        try:
            result = do_publish(artifact, repo, model=model, backend=backend, keep=keep)
        except PublishError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"published {result.model} version {result.version} ({result.backend}) at {result.path} "
                   f"sha256 {result.sha256[:12]}" + (f"; removed versions {result.removed}" if result.removed else ""))
        if load:
            try:
                load_on_server(load, model, repo=repo)
            except Exception as error:  # noqa: BLE001 - report Triton's reason
                typer.echo(f"error: loading {model} on {load} failed: {error}", err=True)
                raise typer.Exit(1) from None
            typer.echo(f"loaded {model} version {result.version} on {load}")

    @repo_app.command("check")
    def check(repo: Annotated[Path, typer.Argument(help="Triton model repository.")] = Path("triton_repo")) -> None:
        """Parse every config.pbtxt and check names, dtypes, dims, ONNX files and the ensemble wiring."""
        from mouaadnet.serving.repo_check import check_repo

        report = check_repo(repo)
        for warning in report.warnings:
            typer.echo(f"warning: {warning}")
        for error in report.errors:
            typer.echo(f"error: {error}", err=True)
        if not report.ok:
            typer.echo(f"{repo}: {len(report.errors)} problem(s)", err=True)
            raise typer.Exit(1)
        typer.echo(f"{repo}: OK ({', '.join(report.models)})")
