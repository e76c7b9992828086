"""`mouaadnet pipeline run | compile | submit` and `mouaadnet runs compare`.

- ``run_local``: the Kubeflow pipeline under ``kfp.local.SubprocessRunner`` (no Docker, no cluster): every
  component runs as a subprocess of this virtual environment, artifacts land under ``--pipeline-root``.
- ``compile_pipeline``: writes ``pipelines/mouaadnet.yaml`` (the committed spec; ``sdkVersion`` is pinned so the
  golden file does not churn with patch releases of kfp).
- ``submit``: the same spec to a Kubeflow Pipelines endpoint through ``kfp.Client``.
- ``compare_runs``: a table of recent pipeline (parent) runs and a comparison plot.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from mouaadnet.tracking import PROJECT_ROOT

PIPELINE_SPEC = PROJECT_ROOT / "pipelines" / "mouaadnet.yaml"
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "pipeline.yaml"
SDK_VERSION_PIN = "kfp-2"  # written into the compiled spec instead of the exact kfp version
COMPARE_METRICS = ("fp32_AP50", "int8_qat_AP50", "int8_ptq_AP50", "served_mb", "latency_ms")

pipeline_app = typer.Typer(help="Run, compile or submit the Kubeflow pipeline.", no_args_is_help=True)
runs_app = typer.Typer(help="Inspect pipeline runs tracked in MLflow.", no_args_is_help=True)


def _pipeline_func():
    if str(PROJECT_ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
        sys.path.insert(0, str(PROJECT_ROOT))
    from pipelines.mouaadnet import mouaadnet_pipeline

    return mouaadnet_pipeline


def pipeline_arguments(config: str | Path | None = None, repo_dir: str | Path | None = None,
                       **overrides: Any) -> dict[str, Any]:
    """The pipeline's arguments: the config file's *text* (so the cache key sees its content), the md5 that
    data.dvc pins as ``data_version`` (so caching is keyed by the data version), plus overrides."""
    from mouaadnet.dvc_data import pinned_md5

    repo = Path(repo_dir or PROJECT_ROOT).resolve()
    config_path = Path(config or DEFAULT_CONFIG)
    args: dict[str, Any] = {"config": config_path.read_text(encoding="utf-8"), "data_version": pinned_md5(repo)}
    args.update({k: v for k, v in overrides.items() if v is not None})
    return args


# ---------------------------------------------------------------------------------------------- compile


def compile_pipeline(out: str | Path = PIPELINE_SPEC) -> Path:
    """Compile the pipeline to YAML, deterministically (sdkVersion pinned, no environment-dependent values)."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(_pipeline_func(), str(out))
    text = out.read_text(encoding="utf-8")
    lines = [f"sdkVersion: {SDK_VERSION_PIN}" if line.startswith("sdkVersion: ") else line
             for line in text.splitlines()]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------- run locally


def run_local(arguments: dict[str, Any], pipeline_root: str | Path = "runs/pipeline", cache: bool = False,
              repo_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the pipeline with kfp.local; returns {"state", "parent_run_id", "status", "tags", "metrics", ...}.

    MLFLOW_TRACKING_URI is fixed for all tasks (default: sqlite ./mlflow.db of the current folder)."""
    from kfp import local

    from mouaadnet.pipeline_steps import DEFAULT_EXPERIMENT, STEP_TAG, _client
    from mouaadnet.tracking import tracking_uri

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()
    os.environ.setdefault("MPLBACKEND", "Agg")
    repo = Path(repo_dir or PROJECT_ROOT).resolve()
    arguments = {"repo_dir": str(repo), **arguments}
    experiment = arguments.get("experiment", DEFAULT_EXPERIMENT)
    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    started_ms = int(time.time() * 1000)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=False, enable_caching=cache)
    state, error = "SUCCEEDED", ""
    try:
        task = _pipeline_func()(**arguments)
        outputs = getattr(task, "outputs", {}) or {}
    except Exception as exc:  # noqa: BLE001 - kfp.local raises for some failures even with raise_on_error=False
        state, error, outputs = "FAILED", f"{type(exc).__name__}: {exc}", {}
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    result: dict[str, Any] = {"state": state, "error": error, "pipeline_root": str(pipeline_root),
                              "tracking_uri": os.environ["MLFLOW_TRACKING_URI"], "experiment": experiment,
                              "outputs": {k: v for k, v in outputs.items() if isinstance(v, (str, int, float, bool))}}
    if exp is not None:
        runs = client.search_runs([exp.experiment_id], f"tags.`{STEP_TAG}` = 'pipeline' and "
                                  f"attributes.start_time >= {started_ms}", order_by=["attributes.start_time DESC"],
                                  max_results=1)
        if runs:
            parent = runs[0]
            result.update(parent_run_id=parent.info.run_id, status=parent.info.status, tags=parent.data.tags,
                          metrics=parent.data.metrics)
            if parent.info.status != "FINISHED":
                result["state"] = "FAILED"
                result["error"] = result["error"] or parent.data.tags.get("pipeline.error", "")
    return result


def format_result(result: dict[str, Any]) -> str:
    tags, metrics = result.get("tags", {}), result.get("metrics", {})
    lines = [f"pipeline {result['state']}" + (f": {result['error']}" if result.get("error") else ""),
             f"  MLflow parent run  {result.get('parent_run_id', '?')} ({result.get('status', '?')}) "
             f"in experiment {result['experiment']} at {result['tracking_uri']}",
             f"  data version       {tags.get('data_fingerprint') or '-'}",
             f"  gates passed       {tags.get('gates_passed', '-')}"]
    for key in COMPARE_METRICS:
        if key in metrics:
            lines.append(f"  {key:<18} {metrics[key]:.4f}")
    if tags.get("registry_version"):
        lines.append(f"  registry version   {tags['registry_version']}   Triton version {tags.get('triton_version')}")
    else:
        lines.append("  nothing published")
    lines.append(f"  artifacts          {result['pipeline_root']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- submit


def submit(host: str, arguments: dict[str, Any], experiment: str | None = None, package: str | Path = PIPELINE_SPEC,
           run_name: str | None = None, namespace: str | None = None, enable_caching: bool | None = None,
           existing_token: str | None = None) -> dict[str, str]:
    """Submit the compiled spec to a Kubeflow Pipelines endpoint; returns {"run_id", "url"}.

    Credentials for the tasks are not sent: the cluster's Secret `mouaadnet-credentials` provides them."""
    import kfp

    client = kfp.Client(host=host, namespace=namespace, existing_token=existing_token)
    run = client.create_run_from_pipeline_package(
        str(package), arguments=arguments, run_name=run_name or f"mouaadnet-{time.strftime('%Y%m%d-%H%M%S')}",
        experiment_name=experiment, namespace=namespace, enable_caching=enable_caching)
    return {"run_id": run.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}


# ---------------------------------------------------------------------------------------------- compare


def compare_runs(experiment: str | None = None, last: int = 5) -> list[dict[str, Any]]:
    """Rows (newest first) of the last pipeline parent runs: key params, metrics, size, latency, status."""
    from mouaadnet.pipeline_steps import DEFAULT_EXPERIMENT, STEP_TAG, _client

    client = _client()
    exp = client.get_experiment_by_name(experiment or DEFAULT_EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], f"tags.`{STEP_TAG}` = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=last)
    rows = []
    for run in runs:
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        rows.append({
            "run": run.info.run_name or run.info.run_id[:8], "run_id": run.info.run_id, "status": run.info.status,
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)),
            "epochs": p.get("epochs", ""), "qat_steps": p.get("qat_steps", ""), "config": p.get("config_sha", ""),
            "data": (p.get("data_version") or "")[:10], "gates": t.get("gates_passed", "-"),
            "registry": t.get("registry_version", "-"), **{k: m.get(k) for k in COMPARE_METRICS}})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no pipeline runs found"
    columns = ["run", "status", "started", "epochs", "qat_steps", "data", "config", "gates", "registry",
               *COMPARE_METRICS]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.4f}"
        return "-" if value in (None, "") else str(value)

    table = [columns] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in table)


# ---------------------------------------------------------------------------------------------- CLI


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
) -> None:
    """Run the whole pipeline locally with kfp.local (subprocesses in this venv; no Docker, no cluster)."""
    args = pipeline_arguments(config, epochs=epochs, steps_per_epoch=steps_per_epoch, qat_steps=qat_steps,
                              min_ap50=min_ap50, build_tensorrt=build_tensorrt, target_backend=target_backend,
                              serve_precision=serve_precision, triton_repo=str(triton_repo.resolve()),
                              experiment=experiment)
    result = run_local(args, pipeline_root, cache)
    typer.echo(format_result(result))
    if result["state"] != "SUCCEEDED":
        raise typer.Exit(1)


@pipeline_app.command("compile")
def compile_cmd(out: Annotated[Path, typer.Option(help="Spec to write.")] = PIPELINE_SPEC) -> None:
    """Compile the pipeline to its YAML spec (committed as pipelines/mouaadnet.yaml)."""
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
    from mouaadnet.plots import plot_runs_comparison, save_figure

    rows = compare_runs(experiment, last)
    typer.echo(format_table(rows))
    if rows:
        typer.echo(f"wrote {save_figure(plot_runs_comparison(rows, list(COMPARE_METRICS)), plot)}")


def demo_cmd(
    config: Annotated[Path | None, typer.Option(help="Pipeline config (default configs/pipeline.yaml).")] = None,
    images: Annotated[int, typer.Option(help="Validation images sent through gRPC.")] = 4,
    threshold: Annotated[float, typer.Option(help="Minimum person score.")] = 0.3,
) -> None:
    """`make run`: data -> pipeline (kfp.local) -> publish -> Triton -> gRPC detections vs ground truth."""
    from mouaadnet.demo import demo

    raise typer.Exit(demo(config, images, threshold))


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
    app.add_typer(runs_app, name="runs")
    app.command("demo")(demo_cmd)
