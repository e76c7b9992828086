"""Each plot function builds a figure that saves to a non-empty PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from mouaadnet.evaluation.plots import (
    plot_age_errors,
    plot_age_group_confusion,
    plot_gender_confusion,
    plot_pr_curve,
    plot_runs_comparison,
    plot_training_curves,
    save_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(fig: Figure, path: Path) -> None:
    assert isinstance(fig, Figure)
    saved = save_figure(fig, path)
    data = saved.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_training_curves_groups(tmp_path: Path) -> None:
    history = {
        "epoch": [1, 2, 3],
        "train_loss": [1.0, 0.8, 0.6],
        "val_loss": [1.1, 0.9, 0.8],
        "lr": [1e-3, 5e-4, 1e-4],
        "val_AP50": [0.2, 0.3, 0.4],
        "val_gender_accuracy": [0.6, 0.7, 0.75],
    }
    fig = plot_training_curves(history)
    assert len(fig.axes) == 3  # losses, learning rate, validation metrics
    _assert_png(fig, tmp_path / "nested" / "curves.png")


def test_training_curves_empty_history(tmp_path: Path) -> None:
    _assert_png(plot_training_curves({}), tmp_path / "empty.png")


@pytest.mark.parametrize(
    ("plot", "confusion"),
    [(plot_gender_confusion, [[5, 1], [2, 7]]), (plot_age_group_confusion, np.eye(5, dtype=int) * 3)],
)
def test_confusion_plots(tmp_path: Path, plot, confusion) -> None:
    _assert_png(plot(confusion), tmp_path / "confusion.png")


def test_age_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 90, 50).astype(float)
    true[:5] = -1  # unknown ages are dropped
    fig = plot_age_errors(true + rng.normal(0, 5, 50), true)
    assert len(fig.axes) == 2
    _assert_png(fig, tmp_path / "age.png")


def test_age_errors_empty(tmp_path: Path) -> None:
    _assert_png(plot_age_errors([], []), tmp_path / "age_empty.png")


def test_pr_curve(tmp_path: Path) -> None:
    recall = np.linspace(0, 1, 101)
    _assert_png(plot_pr_curve(recall, 1 - recall**2, 0.66), tmp_path / "pr.png")
    _assert_png(plot_pr_curve([], [], float("nan")), tmp_path / "pr_nan.png")


def test_runs_comparison(tmp_path: Path) -> None:
    rows = [
        {"run_name": "baseline", "AP50": 0.4, "gender_accuracy": 0.8, "age_mae": 7.0},
        {"run_name": "bigger", "AP50": 0.5, "gender_accuracy": 0.85},  # missing metric: no bar, no crash
    ]
    fig = plot_runs_comparison(rows, ["AP50", "gender_accuracy", "age_mae"])
    assert len(fig.axes[0].patches) == 6
    _assert_png(fig, tmp_path / "runs.png")
    _assert_png(plot_runs_comparison([], ["AP50"]), tmp_path / "runs_empty.png")
