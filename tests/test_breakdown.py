"""Per-gender and per-age-band breakdown of crop results (model card tables)."""

from __future__ import annotations

import pytest

from mouaadnet.evaluation.breakdown import breakdown, format_breakdown


def test_breakdown_splits_by_true_gender_and_age_band() -> None:
    details = {"p_female": [0.9, 0.8, 0.1, 0.7], "true_gender": [1, 1, 0, 0],
               "pred_age": [20.0, 70.0, 40.0, 33.0], "true_age": [22.0, 62.0, 41.0, -1.0]}
    rows = {r["group"]: r for r in breakdown(details)}
    assert rows["female"]["count"] == 2 and rows["female"]["gender_accuracy"] == 1.0
    assert rows["male"]["count"] == 2 and rows["male"]["gender_accuracy"] == pytest.approx(0.5)
    assert rows["age 16-30"]["age_mae"] == pytest.approx(2.0) and rows["age 61-100"]["age_within_5"] == 0.0
    assert "age 0-15" not in rows  # empty bands are left out
    assert "| female | 2 | 100.0 % |" in format_breakdown("utkface", list(rows.values()))
