"""Figures for training runs, evaluation reports and run comparisons.

Figures are built with the object-oriented API on an Agg canvas, not pyplot: nothing touches the global
backend or pyplot's figure registry, so this works headless and inside long-running servers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mouaadnet.data.types import AGE_GROUPS, MAX_AGE, UNKNOWN

GENDER_LABELS: tuple[str, ...] = ("male", "female")
RUN_LABEL_KEYS: tuple[str, ...] = ("run_name", "name", "run_id", "run")


def _new_figure(width: float, height: float) -> Figure:
    """Create a figure attached to an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save a figure as an image (parent folders created) and release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    fig.clear()  # no pyplot registry to close it from; clearing drops the artists and their data
    return path


def _placeholder(fig: Figure, text: str) -> Figure:
    """A figure that says why it has nothing to plot."""
    axis = fig.add_subplot(1, 1, 1)
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes)
    return fig


def _as_array(values: Any) -> np.ndarray:
    """Flatten a list / numpy array / torch tensor into a 1-D float array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


# ----------------------------------------------------------------------------------------------- training


# The validation series worth a curve (fractions, higher is better); the rest (counts, per-class precision, ...)
# stay in MLflow's metric table, where a run logs some 150 of them.
HEADLINE_METRICS = ("AP50", "gender_accuracy", "age_acc_within_5", "age_group_accuracy", "age_bin_accuracy", "score")


def _metric_group(name: str) -> str | None:
    """Which subplot a history series belongs to: losses, learning rate, validation metrics, or None (not plotted)."""
    lowered = name.lower()
    if "loss" in lowered:
        return "loss"
    if lowered == "lr" or lowered.startswith("lr") or "learning_rate" in lowered:
        return "learning rate"
    if name.startswith("val/") and name.rsplit("/", 1)[-1] not in HEADLINE_METRICS:
        return None
    if name in ("images_per_second", "bad_samples", "threads"):
        return None
    return "validation metrics"


def plot_training_curves(history: dict[str, list[float]]) -> Figure:
    """Plot per-epoch history, one subplot per group (losses, learning rate, validation metrics)."""
    groups: dict[str, list[str]] = {"loss": [], "learning rate": [], "validation metrics": []}
    for name, values in history.items():
        group = _metric_group(name)
        if name == "epoch" or len(values) == 0 or group is None:
            continue
        groups[group].append(name)
    groups = {title: names for title, names in groups.items() if names}

    fig = _new_figure(5.0 * max(len(groups), 1), 4.0)
    if not groups:
        return _placeholder(fig, "no history recorded")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for axis, (title, names) in zip(axes, groups.items(), strict=True):
        for name in names:
            values = _as_array(history[name])
            epochs = _epochs_for(history, len(values))
            axis.plot(epochs, values, marker="o", markersize=3, label=name)
        if title == "learning rate":
            axis.set_yscale("log")  # schedules span orders of magnitude
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.25" ticks
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    return fig


def _epochs_for(history: dict[str, list[float]], length: int) -> np.ndarray:
    """Use the history's own "epoch" column when it matches the series length, else 1..length."""
    epochs = history.get("epoch")
    if epochs is not None and len(epochs) == length:
        return _as_array(epochs)
    return np.arange(1, length + 1)


# ----------------------------------------------------------------------------------------------- evaluation


def _plot_confusion(confusion: Any, labels: Sequence[str], title: str, width: float) -> Figure:
    """Draw a confusion matrix (rows true, cols predicted) with counts and row percentages."""
    matrix = np.asarray(confusion, dtype=np.int64)
    row_totals = matrix.sum(axis=1, keepdims=True)
    row_share = np.divide(matrix, row_totals, out=np.zeros(matrix.shape), where=row_totals > 0)

    fig = _new_figure(width, width * 0.85)
    axis = fig.add_subplot(1, 1, 1)
    image = axis.imshow(row_share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=axis, label="share of true class")
    for row in range(matrix.shape[0]):
        for col in range(matrix.shape[1]):
            colour = "white" if row_share[row, col] > 0.5 else "black"
            text = f"{matrix[row, col]}\n{row_share[row, col]:.0%}"
            axis.text(col, row, text, ha="center", va="center", color=colour, fontsize="small")
    axis.set_xticks(range(len(labels)), labels)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    return fig


def plot_gender_confusion(confusion: Any) -> Figure:
    """Plot the 2x2 gender confusion matrix (rows true male/female, cols predicted)."""
    return _plot_confusion(confusion, GENDER_LABELS, "gender confusion", 4.5)


def plot_age_group_confusion(confusion: Any) -> Figure:
    """Plot the 5x5 PETA age-group confusion matrix (rows true, cols predicted)."""
    return _plot_confusion(confusion, AGE_GROUPS, "age-group confusion", 6.5)


def plot_age_errors(pred_age: Any, true_age: Any) -> Figure:
    """Plot a histogram of age errors and predicted-vs-true ages with the y=x line (unknown ages dropped)."""
    pred = _as_array(pred_age)
    truth = _as_array(true_age)
    known = truth != UNKNOWN
    pred, truth = pred[known], truth[known]
    errors = pred - truth

    fig = _new_figure(10.0, 4.0)
    hist_axis, scatter_axis = fig.subplots(1, 2)
    if errors.size:
        hist_axis.hist(errors, bins=41, color="tab:blue", alpha=0.8)
        hist_axis.axvline(0.0, color="black", linewidth=1)
        hist_axis.set_title(f"age error (MAE {np.mean(np.abs(errors)):.2f} y, n={errors.size})")
    else:
        hist_axis.set_title("age error (no labelled ages)")
    hist_axis.set_xlabel("predicted - true (years)")
    hist_axis.set_ylabel("people")

    scatter_axis.scatter(truth, pred, s=8, alpha=0.5)
    scatter_axis.plot([0, MAX_AGE], [0, MAX_AGE], color="black", linewidth=1, label="y = x")
    scatter_axis.set_xlim(0, MAX_AGE)
    scatter_axis.set_ylim(0, MAX_AGE)
    scatter_axis.set_aspect("equal")
    scatter_axis.set_xlabel("true age (years)")
    scatter_axis.set_ylabel("predicted age (years)")
    scatter_axis.set_title("predicted vs true")
    scatter_axis.legend(loc="upper left")
    return fig


def plot_pr_curve(recall: Sequence[float], precision: Sequence[float], ap50: float) -> Figure:
    """Plot the person-detection precision-recall curve at IoU 0.5."""
    fig = _new_figure(5.0, 4.5)
    axis = fig.add_subplot(1, 1, 1)
    axis.plot(_as_array(recall), _as_array(precision), color="tab:blue")
    ap_text = "n/a" if ap50 is None or math.isnan(ap50) else f"{ap50:.3f}"
    axis.set_title(f"person PR curve @ IoU 0.5 (AP50 {ap_text})")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0.0, 1.0)
    axis.set_ylim(0.0, 1.05)
    axis.grid(True, alpha=0.3)
    return fig


# ----------------------------------------------------------------------------------------------- runs


def _run_label(row: dict, index: int) -> str:
    """Name a run by the first label-like key it has, else by its position."""
    for key in RUN_LABEL_KEYS:
        if row.get(key):
            return str(row[key])
    return f"run {index + 1}"


def plot_runs_comparison(rows: list[dict], metrics: list[str]) -> Figure:
    """Grouped bar chart: one group per metric, one bar per run (missing values left blank)."""
    fig = _new_figure(max(6.0, 1.0 + 0.5 * len(metrics) * max(len(rows), 1)), 4.5)  # widen with bar count
    axis = fig.add_subplot(1, 1, 1)
    if not rows or not metrics:
        axis.text(0.5, 0.5, "nothing to compare", ha="center", va="center", transform=axis.transAxes)
        return fig
    positions = np.arange(len(metrics))
    width = 0.8 / len(rows)
    for index, row in enumerate(rows):
        values = [_metric_value(row.get(metric)) for metric in metrics]
        offsets = positions - 0.4 + width * (index + 0.5)
        axis.bar(offsets, values, width=width, label=_run_label(row, index))
    axis.set_xticks(positions, metrics, rotation=20, ha="right")
    axis.set_ylabel("value")
    axis.set_title("run comparison")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize="small")
    return fig


def plot_learning_curves(series: dict[str, dict[str, dict[int, float]]]) -> Figure:
    """One subplot per metric, one line per run: ``series[metric][run label] = {epoch: value}``."""
    fig = _new_figure(4.5 * max(len(series), 1), 3.8)
    if not series:
        return _placeholder(fig, "no metrics")
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    for axis, (metric, runs) in zip(axes, series.items(), strict=True):
        for label, points in runs.items():
            epochs = sorted(points)
            axis.plot(epochs, [points[e] for e in epochs], marker="o", markersize=2, label=label)
        axis.set_title(metric, fontsize="small")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="x-small")
    return fig


def _metric_value(value: Any) -> float:
    """Turn a metric cell into a float, NaN (no bar) when missing or not numeric."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
