"""The pipeline's steps as plain functions: what each Kubeflow component in `mouaadnet/kubeflow/components/` calls.

Every step takes paths and small values and returns a dict of small values, so it runs the same under
`kfp.local`, on a Kubeflow cluster and in a unit test. The work itself is done by the library (`dvc_data`,
`data.check`, `training`, `evaluation.gates`, `model.export`, `serving.publish`); each step records what it did as
an MLflow child run of the pipeline run (`lineage`). One function per component, in pipeline order: the
module is the pipeline as the components see it, which is why it stays one file past 300 lines.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from mouaadnet.pipeline.champion import onnx_input_size, real_ap50
from mouaadnet.pipeline.lineage import (
    DATASET_NAME,
    DEFAULT_EXPERIMENT,
    PRIMARY_METRIC,
    STEP_TAG,
    _client,
    _finite,
    _mlflow,
    adopt_runs,
    log_onnx_model,
    records_failure,
    step_run,
)
from mouaadnet.pipeline.params import PipelineStepError, config_digest, train_config, val_specs
from mouaadnet.pipeline.trainjob import SHARED_DIR
from mouaadnet.tracking import log_dataset

PROGRESS_EVERY_S = 10.0  # the train task prints a progress line this often (kfp.local relays it live)


@records_failure("prepare_data")
def prepare_data(out_dir: str | os.PathLike, repo_dir: str | os.PathLike = ".", data_version: str = "",
                 experiment: str = DEFAULT_EXPERIMENT, use_remote: bool | None = None) -> dict[str, Any]:
    """Pull (when a DVC remote is configured) or build the pinned dataset, verify it (DVC md5 of every file +
    `mouaadnet data check`), refuse a dirty/unverifiable one, and copy it to ``out_dir``.

    Returns {"fingerprint": pinned md5, "files": n, "run_id": ...}."""
    from mouaadnet.data.check import check_sources, format_report
    from mouaadnet.pipeline import dvc_data

    repo = Path(repo_dir).resolve()
    with step_run("prepare_data", experiment=experiment) as run:
        mlflow = _mlflow()
        pinned = dvc_data.pinned_md5(repo)
        if data_version and data_version not in (pinned, pinned.removesuffix(".dir")):
            raise PipelineStepError(f"data_version {data_version} asked for, but {repo / dvc_data.DVC_FILE} pins "
                                    f"{pinned}: check out the commit that pins it")
        env_remote = bool(os.environ.get("AWS_ACCESS_KEY_ID")) or (repo / ".dvc" / "config.local").is_file()
        remote = env_remote if use_remote is None else use_remote
        if remote:
            fingerprint = dvc_data.pull(repo)  # dvc pull, then verify_data
            how = "dvc pull"
        else:
            fingerprint = dvc_data.ensure_data(repo, use_remote=False)  # rebuild the embedded default if missing
            how = "local"
        fingerprint = dvc_data.verify_data(repo)  # dvc status clean and every file's md5 == the pinned manifest
        data = repo / dvc_data.DATA_DIR
        specs = sorted(str(p) for p in data.glob("*/annotations.json"))
        if not specs:
            raise PipelineStepError(f"{data} has no <split>/annotations.json")
        report = check_sources(specs)
        if not report.ok:
            raise PipelineStepError(f"`mouaadnet data check` found problems in {data}:\n{format_report(report)}")
        out = Path(out_dir)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(data, out)
        files = sum(1 for p in out.rglob("*") if p.is_file())
        mlflow.log_params({"data_version": fingerprint, "source": how, "repo": str(repo)})
        mlflow.log_metrics({"files": files, **{f"{Path(s.spec).parent.name}_{k}": getattr(s, k)
                                               for s in report.sources for k in ("samples", "persons")}})
        mlflow.log_dict(report.to_dict(), "data_check.json")
        mlflow.set_tag("data_fingerprint", fingerprint)
        log_dataset(DATASET_NAME, fingerprint, str(data))
        return {"fingerprint": fingerprint, "files": files, "run_id": run.info.run_id}


def _resolve_pretrained(pretrained: str) -> str:
    """"auto" -> the shipped checkpoint if there is one (else ""); a path must exist."""
    from mouaadnet.weights import WeightsError
    from mouaadnet.weights.shipped import shipped_checkpoint

    if pretrained == "auto":
        try:
            pretrained = str(shipped_checkpoint())
        except WeightsError as error:
            print(f"train: no shipped weights to start from, training from scratch ({error})", flush=True)
            return ""
    if pretrained and not Path(pretrained).is_file():
        raise PipelineStepError(f"pretrained checkpoint {pretrained} not found (pass pretrained='' to train from "
                                "scratch)")
    if pretrained:
        print(f"train: starting from {pretrained}", flush=True)
    return pretrained


def _dataset_inputs(config: str, data_pins: str, dataset_dir: str | os.PathLike,
                    data_fingerprint: str) -> list[tuple[str, str, str]] | None:
    """The train run's MLflow dataset inputs: data.dvc's md5 when the config reads data/, and every pinned folder
    (re-hashed, refused when changed); None = the trainer's default (one per source)."""
    from mouaadnet.pipeline.data_pins import verify_sources
    from mouaadnet.pipeline.params import DATA_PREFIX

    raw = train_config(config)  # source paths as written: data/ ones are data.dvc's, verified by prepare_data
    inputs = verify_sources(raw, data_pins)
    sources = [*raw.data.scene, *raw.data.crop]
    if data_fingerprint and any((spec or "").startswith(DATA_PREFIX) for s in sources for spec in (s.path, s.val)):
        inputs.insert(0, (DATASET_NAME, data_fingerprint, str(Path(dataset_dir).resolve())))
    return inputs or None


@records_failure("train")
def train_step(dataset_dir: str | os.PathLike, config: str, out_dir: str | os.PathLike, epochs: int = 0,
               steps_per_epoch: int = 0, data_fingerprint: str = "", experiment: str = DEFAULT_EXPERIMENT,
               progress: bool = False, pretrained: str = "", num_nodes: int = 1, gpus_per_node: int = 0,
               image: str = "", train_volume: str = "", trainer_runtime: str = "", namespace: str = "",
               shared_dir: str | os.PathLike = SHARED_DIR, kube: tuple[Any, Any] | None = None, data_pins: str = "",
               nproc_per_node: int = 1, resume_from: str = "") -> dict[str, Any]:
    """Train on the dataset artifact; ``out_dir`` gets best.pt and config.yaml. Returns the summary values.

    Data: every folder the config reads outside data/ is re-hashed against ``data_pins`` (the text of the pins
    file next to the config, ``mouaadnet.pipeline.data_pins``) and refused when it changed; the train run records
    each digest (and data.dvc's md5 when the config reads data/) as an MLflow dataset input.
    Preemption: on one node the run copies its checkpoints to its MLflow artifact store after every epoch, tagged
    with a digest of what it trains (``launch.resume_key``); this step, re-run with the same inputs after a kill,
    resumes that run where its last copy stopped, in the same MLflow run. On another machine (whose store never
    saw that run) ``resume_from`` names the run's carried checkpoint (``mouaadnet pipeline carry``, committed under
    weights/): the step continues it when its resume key matches, in a new MLflow run.

    ``pretrained``: "auto" = the shipped weights (weights/mouaadnet.pt) when they exist, else from scratch;
    "" = from scratch; a path = that checkpoint. Where it trains:
    - ``num_nodes`` 1, ``gpus_per_node`` 0: ``nproc_per_node`` CPU processes in this task (kfp.local, a CPU pod):
      one in this process, several under torchrun (gloo, one thread each); 0 = one per core when it is idle;
    - ``num_nodes`` 1, ``gpus_per_node`` G: torchrun with G processes (DDP, nccl) in this task's pod, which
      requests the G GPUs;
    - ``num_nodes`` N > 1: a Kubeflow Trainer TrainJob of N pods x G GPUs running the same entry point
      (``mouaadnet.pipeline.trainjob``, the ``image``, ``trainer_runtime``), the dataset and the checkpoint passing
      through the ReadWriteMany PVC ``train_volume`` mounted at ``shared_dir``; ``kube``: (CustomObjectsApi,
      CoreV1Api), default: the pod's service account.
    """
    if num_nodes < 1 or gpus_per_node < 0 or nproc_per_node < 0:
        raise PipelineStepError(f"num_nodes must be >= 1, gpus_per_node and nproc_per_node >= 0, got {num_nodes}, "
                                f"{gpus_per_node} and {nproc_per_node}")
    from mouaadnet.pipeline import launch

    pretrained = _resolve_pretrained(pretrained)
    datasets = _dataset_inputs(config, data_pins, dataset_dir, data_fingerprint)
    work = Path(out_dir).parent / (Path(out_dir).name + ".work")
    scratch = work
    if num_nodes > 1:
        work, scratch = launch.train_on_nodes(dataset_dir, config, epochs, steps_per_epoch, experiment, num_nodes,
                                              gpus_per_node, image, train_volume, trainer_runtime, namespace,
                                              shared_dir, kube, pretrained)
        summary = launch.summary_from_checkpoint(work)
    else:
        cfg = train_config(config, dataset_dir, epochs, steps_per_epoch)
        cfg.experiment, cfg.pretrained = experiment, pretrained or None
        key = launch.resume_key(config, epochs, steps_per_epoch, experiment, pretrained, datasets or [])
        nproc = gpus_per_node or launch.processes(nproc_per_node, cfg)
        summary = launch.train_on_this_node(cfg, work, key, nproc, datasets, progress, PROGRESS_EVERY_S,
                                            resume_from=resume_from)
    client = _client()
    client.set_tag(summary["run_id"], STEP_TAG, "train")
    client.set_tag(summary["run_id"], "pipeline.data_version", data_fingerprint)
    client.set_tag(summary["run_id"], "config_sha", config_digest(config))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    best = work / "best.pt"
    if not best.is_file():
        raise PipelineStepError(f"training wrote no best.pt in {work}")
    shutil.copyfile(best, out / "best.pt")
    shutil.copyfile(work / "config.yaml", out / "config.yaml")
    shutil.rmtree(scratch, ignore_errors=True)
    best_score = summary["best_score"]
    return {"run_id": summary["run_id"], "best_score": best_score if math.isfinite(best_score) else -1.0,
            "best_epoch": summary["best_epoch"], "metrics": _finite(summary["metrics"])}


@records_failure("reparameterize")
def reparameterize_step(checkpoint: str | os.PathLike, dataset_dir: str | os.PathLike, out_dir: str | os.PathLike,
                        experiment: str = DEFAULT_EXPERIMENT) -> dict[str, Any]:
    """Fuse RepVGG branches and Conv+BN; check fused == training form on 4 validation images per mode
    (``mouaadnet.export.exporter.REPARAM_TOLERANCE``); out_dir/deploy.pt."""
    from mouaadnet.export.exporter import REPARAM_TOLERANCE, Exporter, ReparamError
    from mouaadnet.export.images import DatasetImages

    with step_run("reparameterize", experiment=experiment) as run:
        mlflow = _mlflow()
        exporter = Exporter.from_checkpoint(checkpoint)
        try:
            result = exporter.reparameterize(Path(out_dir) / "deploy.pt", DatasetImages(dataset_dir), count=4)
        except ReparamError as error:
            mlflow.log_metrics({f"max_abs_diff_{m}": v for m, v in error.diffs.items()})
            raise PipelineStepError(f"reparameterization changed the outputs: {error.diffs} > {REPARAM_TOLERANCE}"
                                    ) from None
        mlflow.log_metrics({f"max_abs_diff_{m}": v for m, v in result.diffs.items()})
        mlflow.log_metric("params_deploy", result.params)
        return {"run_id": run.info.run_id, "params": result.params, "max_abs_diff": max(result.diffs.values())}


@records_failure("qat")
def qat_step(checkpoint: str | os.PathLike, dataset_dir: str | os.PathLike, config: str, out_dir: str | os.PathLike,
             steps: int = 50, experiment: str = DEFAULT_EXPERIMENT) -> dict[str, Any]:
    """Quantization-aware fine-tune (``mouaadnet.training.qat.run_qat``) of the trained checkpoint: out_dir/qat.pt."""
    from mouaadnet.training.qat import run_qat

    cfg = train_config(config, dataset_dir)
    with step_run("qat", experiment=experiment) as run:
        mlflow = _mlflow()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        mlflow.log_params({"steps": steps})
        summary = run_qat(checkpoint, cfg, out / "qat.pt", steps=max(1, int(steps)), progress=False)
        mlflow.log_metrics({f"before/{k}": v for k, v in _finite(summary.before).items()})
        mlflow.log_metrics({f"after/{k}": v for k, v in _finite(summary.after).items()})
        mlflow.log_metric("seconds", summary.seconds)
        return {"run_id": run.info.run_id, "seconds": summary.seconds}


@records_failure("export_onnx")
def export_step(deploy_checkpoint: str | os.PathLike, dataset_dir: str | os.PathLike, fp32_dir: str | os.PathLike,
                int8_dir: str | os.PathLike, qat_checkpoint: str | os.PathLike | None = None, size: int = 320,
                experiment: str = DEFAULT_EXPERIMENT, log_models: bool = True) -> dict[str, Any]:
    """FP32 ONNX (validated, parity with PyTorch) and INT8 QDQ ONNX (QAT ranges when a QAT checkpoint is given,
    else PTQ calibration on validation images), each with its sha256 sidecar (``mouaadnet.export.exporter``); both
    logged with ``mlflow.onnx.log_model`` (signature + input example). Files: fp32_dir/model.onnx,
    int8_dir/model.onnx."""
    from mouaadnet.export.exporter import Exporter, qat_ranges
    from mouaadnet.export.images import DatasetImages

    with step_run("export_onnx", experiment=experiment) as run:
        mlflow = _mlflow()
        exporter, images = Exporter.from_checkpoint(deploy_checkpoint), DatasetImages(dataset_dir)
        fp32 = exporter.export_fp32(Path(fp32_dir) / "model.onnx", "scene", images, size)
        qat = qat_ranges(qat_checkpoint) if qat_checkpoint else None
        int8 = exporter.export_int8(fp32, Path(int8_dir) / "model.onnx", images, 32, "u8", qat)
        mlflow.log_params({"size": size, "int8_variant": int8.variant, "parity_images": fp32.real_images})
        mlflow.log_metrics({"fp32_mb": fp32.path.stat().st_size / 1e6, "int8_mb": int8.path.stat().st_size / 1e6,
                            **{f"parity_{k}": v for k, v in _finite(fp32.parity).items()},
                            **{f"int8_vs_fp32_{k}": v for k, v in _finite(int8.agreement).items()}})
        model_ids = {}
        if log_models:
            model_ids = {name: log_onnx_model(path, name, fp32.check[:1].numpy())
                         for name, path in (("onnx_fp32", fp32.path), ("onnx_int8", int8.path))}
        return {"run_id": run.info.run_id, "int8_variant": int8.variant,
                "fp32_model_id": model_ids.get("onnx_fp32", ""), "int8_model_id": model_ids.get("onnx_int8", ""),
                "fp32_mb": fp32.path.stat().st_size / 1e6, "int8_mb": int8.path.stat().st_size / 1e6}


@records_failure("compile_tensorrt")
def compile_tensorrt_step(onnx_dir: str | os.PathLike, out_dir: str | os.PathLike, precision: str = "fp16",
                          parent_run_id: str = "", experiment: str = DEFAULT_EXPERIMENT) -> dict[str, Any]:
    """Build a TensorRT engine (needs TensorRT + an NVIDIA GPU; raises TensorRTUnavailable otherwise)."""
    from model.artifacts import write_sidecar
    from model.tensorrt import compile_trt, engine_io

    with step_run("compile_tensorrt", parent_run_id, experiment) as run:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plan = compile_trt(Path(onnx_dir) / "model.onnx", out / "model.plan", precision)
        write_sidecar(plan, precision, source=Path(onnx_dir) / "model.onnx", io=engine_io(plan))
        _mlflow().log_metric("plan_mb", plan.stat().st_size / 1e6)
        return {"run_id": run.info.run_id}


def _latency_ms(onnx_path: Path, size: int, runs: int = 20) -> float:
    """p50 ms of one 1-thread ONNX Runtime call at batch 1 (the latency gate)."""
    import numpy as np

    from mouaadnet.runtime.session import ort_session
    from mouaadnet.runtime.timing import time_interleaved

    session = ort_session(onnx_path, threads=1)
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    return time_interleaved({"model": lambda: session.run(None, {"images": x})}, runs, warmup=1, rounds=1)["model"][0]


@records_failure("evaluate")
def evaluate_step(checkpoint: str | os.PathLike, fp32_dir: str | os.PathLike, int8_dir: str | os.PathLike,
                  dataset_dir: str | os.PathLike, config: str, int8_variant: str = "int8_qat", min_ap50: float = 0.0,
                  max_model_mb: float = 5.0, max_latency_ms: float = 250.0, serve_precision: str = "fp32",
                  val_limit: int = 0, parent_run_id: str = "", step_runs: dict[str, str] | None = None,
                  experiment: str = DEFAULT_EXPERIMENT, report_path: str | os.PathLike | None = None,
                  real_val: str = "") -> dict[str, Any]:
    """Quality gates: ``mouaadnet.evaluation.gates.run_gates`` (FP32 ONNX == PyTorch, INT8 drops within limits, INT8 size;
    the INT8 ones are enforced only when serving INT8) plus the pipeline's own: FP32 AP50 >= ``min_ap50``, served file <= ``max_model_mb``, ORT batch-1 latency of
    the served file <= ``max_latency_ms``. Returns {"passed", "primary_metric", "metrics", "failed"}."""
    from model.artifacts import load_model_checkpoint
    from mouaadnet.evaluation.gates import Gate, load_eval_sets, run_gates

    adopted = adopt_runs(parent_run_id, step_runs or {})
    cfg = train_config(config, dataset_dir)
    with step_run("evaluate", parent_run_id, experiment) as run:
        mlflow = _mlflow()
        model, mcfg = load_model_checkpoint(checkpoint)
        fp32, int8 = Path(fp32_dir) / "model.onnx", Path(int8_dir) / "model.onnx"
        caps = [s.max_val for s in [*cfg.data.scene, *cfg.data.crop] if s.max_val]
        sets = load_eval_sets(val_specs(cfg), val_limit or (max(caps) if caps else None))
        report = run_gates(sets, model, [fp32], {int8_variant: [int8]}, mcfg.scene_size, mcfg.crop_size,
                           threshold=cfg.score_threshold, gated=int8_variant)
        if serve_precision == "fp32":
            # INT8 gates judge the INT8 artifact: serving FP32 they are reported (MLflow, gates.txt, "over")
            # but do not block the model that actually ships.
            for gate in report.gates:
                gate.enforced = gate.enforced and not gate.name.startswith("int8_")
        scene_sets = [n for n, m in report.modes.items() if m == "scene"]
        ap50 = min((float(report.metrics["fp32"][n].get("AP50", float("nan"))) for n in scene_sets), default=float("nan"))
        served = int8 if serve_precision == "int8" else fp32
        size_mb = served.stat().st_size / 1e6
        latency = _latency_ms(served, int(onnx_input_size(served)))
        report.gates += [
            Gate("fp32_ap50_min", math.isfinite(ap50) and ap50 >= min_ap50, ap50, min_ap50, "FP32 ONNX person AP50"),
            Gate("served_file_mb", size_mb <= max_model_mb, size_mb, max_model_mb, served.parent.name),
            Gate("served_latency_ms", latency <= max_latency_ms, latency, max_latency_ms, "ORT batch 1, 1 thread, p50"),
        ]
        flat = {f"{variant}_{key}": float(value)
                for variant, by_set in report.metrics.items() for name, metrics in by_set.items()
                for key, value in metrics.items() if name in scene_sets and key in ("AP50", "AP50_95", "gender_accuracy",
                                                                                    "age_mae")
                and isinstance(value, (int, float)) and math.isfinite(value)}
        flat.update({"served_mb": size_mb, "latency_ms": latency, "gates_passed": float(report.passed)})
        if real_val:  # the champion rule's metric: the served file on real photos (see pipeline/champion.py)
            flat[PRIMARY_METRIC] = real_ap50(served, real_val)
        mlflow.log_metrics(flat)
        mlflow.log_dict(report.to_dict(), "gates.json")
        mlflow.set_tags({"gates_passed": str(report.passed).lower(), "adopted": json.dumps(adopted)})
        text = report.format()
        mlflow.log_text(text, "gates.txt")
        if report_path:
            Path(report_path).write_text(text + "\n")
        print(text, flush=True)
        primary = flat.get(PRIMARY_METRIC, ap50 if math.isfinite(ap50) else -1.0)
        print(f"{PRIMARY_METRIC if real_val else 'fp32 AP50'} of the served file: {primary:.4f}", flush=True)
        if parent_run_id:
            client = _client()
            for key in ("fp32_AP50", "int8_qat_AP50", "int8_ptq_AP50", "served_mb", "latency_ms", "gates_passed",
                        PRIMARY_METRIC):
                if key in flat:
                    client.log_metric(parent_run_id, key, flat[key])
            client.set_tag(parent_run_id, "gates_passed", str(report.passed).lower())
        return {"passed": report.passed, "primary_metric": float(primary), "metrics": flat,
                "failed": [g.name for g in report.failed], "run_id": run.info.run_id}
