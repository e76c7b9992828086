"""What rank 0 of a training run records in MLflow besides the epoch metrics: params, dataset inputs and the
resolved config at the start, the earlier epochs of a run resumed elsewhere, and plots, best.pt and summary tags
at the end (``mouaadnet.training.trainer.Trainer.fit`` calls these)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from mouaadnet.data.assembly import dataset_inputs
from mouaadnet.evaluation.evaluate import EvalResult
from mouaadnet.tracking import final_wait, log_dataset, log_params_safely, retry_until, tracking_uri
from mouaadnet.training.config import TrainConfig, flatten


def run_is_unknown(run_id: str | None) -> bool:
    """True when this tracking store has no run ``run_id``: a checkpoint resumed on another machine. An
    unreachable server is not another machine (False), nor is a new run (no id)."""
    if run_id is None:
        return False
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri()).get_run(run_id)
        return False
    except MlflowException as error:
        return error.error_code == "RESOURCE_DOES_NOT_EXIST"


def log_run_start(cfg: TrainConfig, out_dir: Path, datasets: list[tuple[str, str, str]] | None) -> None:
    """Params (the flattened config), the dataset inputs (default: one per training source) and config.yaml."""
    import mlflow

    log_params_safely(flatten(cfg.model_dump()))
    for name, digest, source in dataset_inputs(cfg.data) if datasets is None else datasets:
        log_dataset(name, digest, source)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    retry_until(lambda: mlflow.log_artifact(str(out_dir / "config.yaml")), 30.0,
                "logging config.yaml")  # an artifact store outage must not stop training


def log_resumed(moved_from: str, epoch: int, history: dict[str, list[float]]) -> None:
    """A new run continuing ``moved_from``'s checkpoint: tag where it came from, log its earlier epochs."""
    import mlflow

    mlflow.set_tags({"resumed_from_run": moved_from, "resumed_at_epoch": str(epoch)})
    for index, done in enumerate(history.get("epoch", [])):
        values = {k: v[index] for k, v in history.items() if k != "epoch" and index < len(v) and math.isfinite(v[index])}
        mlflow.log_metrics(values, step=int(done))


def log_plots(history: dict[str, list[float]], results: list[EvalResult]) -> None:
    """Training curves and, per validation set, the PR curve, confusion matrices and age errors it has data for."""
    import mlflow

    from mouaadnet.evaluation import plots

    mlflow.log_figure(plots.plot_training_curves(history), "plots/training_curves.png")
    for result in results:
        details, metrics = result.details, result.metrics
        if result.mode == "scene" and details.get("pr_curve"):
            pr = details["pr_curve"]
            mlflow.log_figure(plots.plot_pr_curve(pr["recall"], pr["precision"], metrics.get("AP50", float("nan"))),
                              f"plots/{result.name}_pr_curve.png")
        if metrics.get("gender_count"):
            mlflow.log_figure(plots.plot_gender_confusion(metrics["gender_confusion"]),
                              f"plots/{result.name}_gender_confusion.png")
        if details.get("true_age") and any(a >= 0 for a in details["true_age"]):
            mlflow.log_figure(plots.plot_age_errors(details["pred_age"], details["true_age"]),
                              f"plots/{result.name}_age_errors.png")
        if metrics.get("age_group_count"):
            mlflow.log_figure(plots.plot_age_group_confusion(metrics["age_group_confusion"]),
                              f"plots/{result.name}_age_group_confusion.png")


def log_run_outputs(out_dir: Path, history: dict[str, list[float]], results: list[EvalResult],
                    tags: dict[str, Any]) -> None:
    """Plots, best.pt and summary tags; a failure (e.g. the artifact store is down) is reported, not fatal:
    the checkpoints on disk are complete either way."""
    import mlflow

    best = out_dir / "best.pt"
    steps = [("plots", lambda: log_plots(history, results) if results else None),
             ("checkpoints/best.pt", lambda: mlflow.log_artifact(str(best), artifact_path="checkpoints")
              if best.is_file() else None),
             ("summary tags", lambda: mlflow.set_tags({k: str(v) for k, v in tags.items()}))]
    for what, call in steps:
        retry_until(call, min(final_wait(), 30.0), f"logging {what}")
