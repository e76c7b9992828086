"""`mouaadnet pipeline run | compile | submit`, `mouaadnet runs compare` and `mouaadnet demo` (wiring only: the
work is in ``mouaadnet.kubeflow.runner``, ``mouaadnet.pipeline.compare`` and ``mouaadnet.pipeline.demo``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

from mouaadnet.kubeflow.runner import (
    DEFAULT_CONFIG,
    PIPELINE_SPEC,
    compile_pipeline,
    format_result,
    pipeline_arguments,
    run_local,
    submit,
)
from mouaadnet.pipeline.compare import COMPARE_METRICS, compare_runs, format_table
from mouaadnet.tracking import PROJECT_ROOT

pipeline_app = typer.Typer(help="Run, compile or submit the Kubeflow pipeline.", no_args_is_help=True)
runs_app = typer.Typer(help="Inspect pipeline runs tracked in MLflow.", no_args_is_help=True)


@pipeline_app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Option(help="Training config YAML (data paths under data/ point into the "
                                              "versioned dataset).")] = DEFAULT_CONFIG,
    epochs: Annotated[int | None, typer.Option(help="Override the config's epochs.")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Override the config's steps per epoch.")] = None,
    qat_steps: Annotated[int | None, typer.Option(help="QAT fine-tuning steps.")] = None,
    min_ap50: Annotated[float | None, typer.Option(help="Gate: FP32 person AP50 at least this.")] = None,
    build_tensorrt: Annotated[bool, typer.Option(help="Also build a TensorRT engine (GPU + TensorRT).")] = False,
    target_backend: Annotated[str, typer.Option(help="Triton backend of the published model.")] = "python",
    serve_precision: Annotated[str, typer.Option(help="fp32 | int8: which ONNX is published.")] = "fp32",
    triton_repo: Annotated[Path, typer.Option(help="Triton repository to publish into.")] = PROJECT_ROOT / "triton_repo",
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "mouaadnet-pipeline",
    pipeline_root: Annotated[Path, typer.Option(help="Where kfp.local writes task artifacts.")] = Path("runs/pipeline"),
    cache: Annotated[bool, typer.Option(help="Reuse task outputs of earlier runs with the same inputs.")] = False,
    runner: Annotated[str, typer.Option(
        help="subprocess: every task in this venv; docker: every task in the image (--image) through kfp.local's "
             "DockerRunner, on DOCKER_HOST or podman's Docker API (README, \"In containers\").")] = "subprocess",
    image: Annotated[str | None, typer.Option(
        help="--runner docker: the image the tasks run (default: what `make image` builds).")] = None,
    nproc_per_node: Annotated[int | None, typer.Option(
        "--nproc-per-node", min=0, help="CPU training processes (torchrun, 1 thread each, when > 1; 0 = one per "
                                        "core when the machine is idle). Default 1.")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="Checkpoint training starts from: 'auto' (default: the shipped weights), '' (from scratch) or a "
             "path.")] = None,
    real_val: Annotated[str | None, typer.Option(
        help="Real scene sets the champion rule judges on, comma-separated (default examples/real): the first "
             "gives real_AP50; a candidate must also beat the champion on each further one, e.g. "
             "examples/real,../shared/data/pennfudan.")] = None,
    resume_from: Annotated[Path | None, typer.Option(
        help="A carried checkpoint (`mouaadnet pipeline carry`, e.g. weights/resume/real.pt) the train step "
             "continues when this machine's MLflow store has no unfinished run of the same inputs.")] = None,
) -> None:
    """Run the whole pipeline locally with kfp.local (subprocesses in this venv, or containers with --runner
    docker; no cluster).

    Re-run the same command after a kill (with --cache): finished steps are reused and the train step resumes
    its MLflow run from the checkpoint it copies to the run's artifact store every epoch."""
    args = pipeline_arguments(config, epochs=epochs, steps_per_epoch=steps_per_epoch, qat_steps=qat_steps,
                              min_ap50=min_ap50, build_tensorrt=build_tensorrt, target_backend=target_backend,
                              serve_precision=serve_precision, triton_repo=str(triton_repo.resolve()),
                              experiment=experiment, nproc_per_node=nproc_per_node, pretrained=pretrained,
                              resume_from=_existing(resume_from, "--resume-from"), real_val=real_val)
    if runner not in ("subprocess", "docker"):
        raise typer.BadParameter("subprocess or docker", param_hint="--runner")
    from mouaadnet.containers import ContainerError

    try:
        result = run_local(args, pipeline_root, cache, runner=runner, image=image)
    except ContainerError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(format_result(result))
    if result["state"] != "SUCCEEDED":
        raise typer.Exit(1)


def _existing(path: Path | None, option: str) -> str | None:
    """An absolute path for the tasks (they may run elsewhere than the CLI's folder); a missing file is refused."""
    if path is None:
        return None
    if not path.is_file():
        raise typer.BadParameter(f"no such file: {path}", param_hint=option)
    return str(path.resolve())


@pipeline_app.command("carry")
def carry_cmd(
    out: Annotated[Path, typer.Option(help="File to write (commit it).")] = Path("weights/resume/real.pt"),
    run_id: Annotated[str | None, typer.Option(
        "--run-id", help="The train run to carry (default: the newest unfinished train run of --experiment).")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the pipeline.")] = "mouaadnet-pipeline",
) -> None:
    """Save an unfinished pipeline training run as one checkpoint (<= 12 MiB) to commit before this machine goes
    away; on the next machine `pipeline run ... --resume-from FILE` continues it where it stopped."""
    from mouaadnet.training import durable

    run_id = run_id or durable.find_resumable(experiment, None)
    if not run_id:
        typer.echo(f"error: no unfinished train run with a checkpoint in experiment {experiment!r}", err=True)
        raise typer.Exit(1)
    try:
        durable.carry(run_id, out)
    except durable.CarryError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


@pipeline_app.command("compile")
def compile_cmd(out: Annotated[Path, typer.Option(help="Spec to write.")] = PIPELINE_SPEC) -> None:
    """Compile the pipeline to its YAML spec (committed as cluster/mouaadnet.yaml)."""
    typer.echo(f"wrote {compile_pipeline(out)}")


@pipeline_app.command("submit")
def submit_cmd(
    host: Annotated[str, typer.Option(help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080.")],
    experiment: Annotated[str | None, typer.Option(help="KFP experiment name.")] = None,
    config: Annotated[Path, typer.Option(help="Training config YAML sent as the `config` parameter.")] = DEFAULT_CONFIG,
    package: Annotated[Path, typer.Option(help="Compiled spec.")] = PIPELINE_SPEC,
    param: Annotated[list[str] | None, typer.Option(help="Extra pipeline parameter NAME=VALUE (repeatable, "
                                                         "value parsed as YAML).")] = None,
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace (multi-user Kubeflow).")] = None,
    token: Annotated[str | None, typer.Option(envvar="KFP_TOKEN", help="Bearer token (env KFP_TOKEN).")] = None,
) -> None:
    """Submit the compiled spec to a Kubeflow Pipelines endpoint (kfp.Client)."""
    extra = {}
    for item in param or []:
        name, _, value = item.partition("=")
        extra[name] = yaml.safe_load(value)
    args = pipeline_arguments(config, **extra)
    result = submit(host, args, experiment, package, namespace=namespace, existing_token=token)
    typer.echo(json.dumps(result))


@runs_app.command("compare")
def compare_cmd(
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: mouaadnet-pipeline).")] = None,
    last: Annotated[int, typer.Option(help="How many recent pipeline runs.")] = 5,
    plot: Annotated[Path, typer.Option(help="Comparison plot to write.")] = Path("runs/compare.png"),
) -> None:
    """Table of recent pipeline runs (params, metrics, size, latency, status) and a comparison plot."""
    from mouaadnet.evaluation.plots import plot_runs_comparison, save_figure

    rows = compare_runs(experiment, last)
    typer.echo(format_table(rows))
    if rows:
        typer.echo(f"wrote {save_figure(plot_runs_comparison(rows, list(COMPARE_METRICS)), plot)}")


@runs_app.command("curves")
def curves_cmd(
    runs: Annotated[list[str], typer.Argument(help="Training runs: MLflow run ids or unique run names.")],
    metric: Annotated[list[str] | None, typer.Option(
        help="Validation metric to compare (repeatable; default: AP75 and AP50:95 of the trained person sets).")] = None,
    every: Annotated[int, typer.Option(min=1, help="Table row every N epochs (each run's last epoch is always shown).")] = 5,
    plot: Annotated[Path, typer.Option(help="Learning-curve plot to write.")] = Path("runs/curves.png"),
) -> None:
    """Learning curves of training runs side by side, epoch by epoch (e.g. a long run still training against
    the one that shipped), with each run's best value; reads MLflow (MLFLOW_TRACKING_URI or ./mlflow.db)."""
    from mouaadnet.evaluation.plots import plot_learning_curves, save_figure
    from mouaadnet.training.curves import DEFAULT_CURVE_METRICS, format_curves, load_curves

    metrics = list(metric or DEFAULT_CURVE_METRICS)
    try:
        curves = load_curves(runs, metrics)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="RUNS / --metric") from None
    typer.echo("\n\n".join(format_curves(curves, name, every) for name in metrics))
    series = {name: {f"{run.name} ({run.run_id[:8]})": run.values[name] for run in curves} for name in metrics}
    typer.echo(f"wrote {save_figure(plot_learning_curves(series), plot)}")


def demo_cmd(
    config: Annotated[Path | None, typer.Option(help="Pipeline config (default configs/pipeline.yaml).")] = None,
    images: Annotated[int, typer.Option(help="Validation images sent through gRPC.")] = 4,
    threshold: Annotated[float, typer.Option(help="Minimum person score.")] = 0.3,
) -> None:
    """`make run`: data -> pipeline (kfp.local) -> publish -> Triton -> gRPC detections vs ground truth."""
    from mouaadnet.pipeline.demo import demo

    raise typer.Exit(demo(config, images, threshold))


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
    app.add_typer(runs_app, name="runs")
    app.command("demo")(demo_cmd)
