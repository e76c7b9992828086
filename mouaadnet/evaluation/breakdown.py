"""Per-gender and per-age-band breakdowns of crop results (the model card's fairness tables)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mouaadnet.evaluation.metrics import age_metrics, gender_metrics

AGE_BANDS: tuple[tuple[int, int], ...] = ((0, 15), (16, 30), (31, 45), (46, 60), (61, 100))


def breakdown(details: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows {group, count, gender_accuracy, age_mae, age_within_5} by true gender and, where exact ages are
    known, by true age band; from `evaluate_crop`'s details."""
    p_female = np.asarray(details["p_female"], np.float64)
    gender = np.asarray(details["true_gender"], np.float64)
    pred_age = np.asarray(details["pred_age"], np.float64)
    true_age = np.asarray(details["true_age"], np.float64)
    groups = [("male", gender == 0), ("female", gender == 1)]
    groups += [(f"age {low}-{high}", (true_age >= low) & (true_age <= high)) for low, high in AGE_BANDS]
    rows = []
    for name, mask in groups:
        if not mask.any():
            continue
        g = gender_metrics(p_female[mask], gender[mask])
        a = age_metrics(pred_age[mask], true_age[mask])
        rows.append({"group": name, "count": int(mask.sum()), "gender_accuracy": g["accuracy"],
                     "age_mae": a["mae"], "age_within_5": a["acc_within_5"]})
    return rows


def format_breakdown(name: str, rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``breakdown`` rows."""
    def cell(value: float, pct: bool) -> str:
        return "–" if not np.isfinite(value) else (f"{100 * value:.1f} %" if pct else f"{value:.2f}")

    lines = [f"| {name} | n | gender acc | age MAE (y) | ±5 y |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['group']} | {r['count']} | {cell(r['gender_accuracy'], True)} | {cell(r['age_mae'], False)} | "
              f"{cell(r['age_within_5'], True)} |" for r in rows]
    return "\n".join(lines)
