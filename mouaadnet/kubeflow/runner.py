"""Run, compile and submit the Kubeflow pipeline (what `mouaadnet pipeline run | compile | submit` call).

- ``run_local``: the Kubeflow pipeline under ``kfp.local.SubprocessRunner`` (no Docker, no cluster): every
  component runs as a subprocess of this virtual environment, artifacts land under ``--pipeline-root``.
- ``compile_pipeline``: writes ``cluster/mouaadnet.yaml`` (the committed spec; ``sdkVersion`` is pinned so the
  golden file does not churn with patch releases of kfp).
- ``submit``: the same spec to a Kubeflow Pipelines endpoint through ``kfp.Client``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mouaadnet.pipeline.compare import COMPARE_METRICS
from mouaadnet.tracking import PROJECT_ROOT

PIPELINE_SPEC = PROJECT_ROOT / "cluster" / "mouaadnet.yaml"
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "pipeline.yaml"
SDK_VERSION_PIN = "kfp-2"  # written into the compiled spec instead of the exact kfp version


def _pipeline_func():
    from mouaadnet.kubeflow.pipeline import mouaadnet_pipeline

    return mouaadnet_pipeline


def pipeline_arguments(config: str | Path | None = None, repo_dir: str | Path | None = None,
                       **overrides: Any) -> dict[str, Any]:
    """The pipeline's arguments: the config file's *text* (so the cache key sees its content), the md5 that
    data.dvc pins as ``data_version`` (so caching is keyed by the data version), the text of the config's pins
    file (``configs/X.pins.yaml``, when it has one) as ``data_pins``, plus overrides."""
    from mouaadnet.pipeline.data_pins import pins_path
    from mouaadnet.pipeline.dvc_data import pinned_md5

    repo = Path(repo_dir or PROJECT_ROOT).resolve()
    config_path = Path(config or DEFAULT_CONFIG)
    pins = pins_path(config_path)
    args: dict[str, Any] = {"config": config_path.read_text(encoding="utf-8"), "data_version": pinned_md5(repo),
                            "data_pins": pins.read_text(encoding="utf-8") if pins.is_file() else ""}
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
              repo_dir: str | Path | None = None, runner: str = "subprocess",
              image: str | None = None) -> dict[str, Any]:
    """Run the pipeline with kfp.local; returns {"state", "parent_run_id", "status", "tags", "metrics", ...}.

    runner "subprocess": every task in this venv; "docker": every task in ``image`` (default: what `make image`
    builds) through kfp.local's DockerRunner (mouaadnet.kubeflow.in_containers).
    MLFLOW_TRACKING_URI is fixed for all tasks (default: sqlite ./mlflow.db of the current folder)."""
    from contextlib import ExitStack

    from kfp import local

    from mouaadnet.pipeline.lineage import DEFAULT_EXPERIMENT, STEP_TAG, _client
    from mouaadnet.tracking import tracking_uri

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()
    os.environ.setdefault("MPLBACKEND", "Agg")
    # kfp.local relays each task's output line by line; an unbuffered task prints its lines as they happen
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    repo = Path(repo_dir or PROJECT_ROOT).resolve()
    arguments = {"repo_dir": str(repo), **arguments}
    experiment = arguments.get("experiment", DEFAULT_EXPERIMENT)
    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    started_ms = int(time.time() * 1000)
    pipeline, state, error = _pipeline_func(), "SUCCEEDED", ""
    with ExitStack() as stack:
        if runner == "docker":
            from mouaadnet.kubeflow.in_containers import docker_runner, executors_image, task_containers

            image = stack.enter_context(task_containers(image))  # podman's Docker API when no Docker is there
            stack.enter_context(executors_image(pipeline, image))
            kfp_runner = docker_runner(arguments)
        elif runner == "subprocess":
            kfp_runner = local.SubprocessRunner(use_venv=False)
        else:
            raise ValueError(f"runner must be subprocess or docker, got {runner!r}")
        local.init(runner=kfp_runner, pipeline_root=str(pipeline_root), raise_on_error=False, enable_caching=cache)
        try:
            task = pipeline(**arguments)
            outputs = getattr(task, "outputs", {}) or {}
        except Exception as exc:  # noqa: BLE001 - kfp.local raises for some failures even with raise_on_error=False
            state, error, outputs = "FAILED", f"{type(exc).__name__}: {exc}", {}
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    result: dict[str, Any] = {"state": state, "error": error, "pipeline_root": str(pipeline_root),
                              "runner": runner if runner == "subprocess" else f"{runner} ({image})",
                              "tracking_uri": os.environ["MLFLOW_TRACKING_URI"], "experiment": experiment,
                              "outputs": {k: v for k, v in outputs.items() if isinstance(v, (str, int, float, bool))}}
    if exp is not None:
        result["experiment_id"] = exp.experiment_id
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
             f"in experiment {result['experiment']} (id {result.get('experiment_id', '?')}) "
             f"at {result['tracking_uri']}",
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
    if result.get("runner", "subprocess") != "subprocess":
        lines.append(f"  tasks ran in       {result['runner']}")
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
