"""Learning curves of training runs, read back from MLflow: one validation metric per epoch, runs side by side.

Issue 21 asks which candidate moves the slope of box precision, not just where a run ends; the trainer logs every
validation metric at step = epoch, so two runs of the same recipe read against each other epoch by epoch (a long
run against the shipped one while it is still training, a short ablation against its control).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# What `mouaadnet runs curves` shows when no --metric is given: box precision on the three trained person sets.
DEFAULT_CURVE_METRICS: tuple[str, ...] = (
    "val/street_person/AP75", "val/street_person/AP50_95", "val/coco_person/AP50_95", "val/cctv_clinic/AP50_95")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
LOWER_IS_BETTER = ("loss", "mae")  # name parts of metrics whose best is their minimum


@dataclass
class RunCurves:
    """One run's metric histories: metric -> {epoch: value}."""

    run_id: str
    name: str
    values: dict[str, dict[int, float]] = field(default_factory=dict)

    def last_epoch(self) -> int:
        return max((max(series) for series in self.values.values() if series), default=0)


def _client():
    from mlflow import MlflowClient

    from mouaadnet.tracking import tracking_uri

    return MlflowClient(tracking_uri())


def resolve_run(client, reference: str):
    """A run by its 32-hex id or its run name (which must then be unique across experiments)."""
    from mlflow.exceptions import MlflowException

    if RUN_ID.match(reference):
        try:
            return client.get_run(reference)
        except MlflowException as error:
            raise ValueError(f"run {reference}: no such run in the tracking store ({error.message})") from None
    experiments = [e.experiment_id for e in client.search_experiments()]
    matches = client.search_runs(experiments, f"attributes.run_name = '{reference}'", max_results=20)
    if not matches:
        raise ValueError(f"run {reference!r}: no run has this id or name in the tracking store")
    if len(matches) > 1:
        ids = ", ".join(run.info.run_id for run in matches)
        raise ValueError(f"run name {reference!r} is not unique ({ids}): pass one of the ids")
    return matches[0]


def load_curves(references: list[str], metrics: list[str] | tuple[str, ...]) -> list[RunCurves]:
    """Each run's history of each metric; a metric no run logged is an error naming what the runs do log."""
    if not references:
        raise ValueError("give at least one run (id or name)")
    client = _client()
    curves = []
    for reference in references:
        run = resolve_run(client, reference)
        values = {metric: {int(point.step): float(point.value)
                           for point in client.get_metric_history(run.info.run_id, metric)}
                  for metric in metrics}
        curves.append(RunCurves(run.info.run_id, run.info.run_name or run.info.run_id[:8], values))
    for metric in metrics:
        if not any(run.values[metric] for run in curves):
            logged = sorted({key for run in curves for key in client.get_run(run.run_id).data.metrics
                             if key.startswith("val/")})
            hint = ", ".join(logged[:12]) + (" ..." if len(logged) > 12 else "") if logged else "no val/ metrics"
            raise ValueError(f"metric {metric!r}: none of the runs logged it (they log {hint})")
    return curves


def table_epochs(curves: list[RunCurves], every: int) -> list[int]:
    """Every `every`-th epoch and each run's last one, so a run still training shows where it is now."""
    if every < 1:
        raise ValueError(f"every must be >= 1 epoch, got {every}")
    last = max(run.last_epoch() for run in curves)
    epochs = set(range(every, last + 1, every)) | {run.last_epoch() for run in curves if run.last_epoch()}
    return sorted(epochs)


def format_curves(curves: list[RunCurves], metric: str, every: int = 5) -> str:
    """A plain-text table: one row per epoch, one column per run, then each run's best value and its epoch."""
    names = [f"{run.name} ({run.run_id[:8]})" for run in curves]
    rows = [["epoch", *names]]
    for epoch in table_epochs(curves, every):
        rows.append([str(epoch), *[_cell(run.values[metric].get(epoch)) for run in curves]])
    rows.append(["best", *[_best(run.values[metric], lower_is_better(metric)) for run in curves]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(value.rjust(width) for value, width in zip(row, widths)) for row in rows]
    return f"{metric}\n" + "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def lower_is_better(metric: str) -> bool:
    return any(part in metric.lower() for part in LOWER_IS_BETTER)


def _best(series: dict[int, float], lower: bool) -> str:
    finite = {epoch: value for epoch, value in series.items() if not math.isnan(value)}
    if not finite:
        return "-"
    sign = -1.0 if lower else 1.0
    epoch = max(finite, key=lambda e: (sign * finite[e], -e))  # the earliest epoch among equal bests
    return f"{finite[epoch]:.4f} @{epoch}"
