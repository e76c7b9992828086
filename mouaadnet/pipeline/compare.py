"""`mouaadnet runs compare`: recent pipeline (parent) runs from MLflow as rows, and their table."""

from __future__ import annotations

import math
import time
from typing import Any

COMPARE_METRICS = ("fp32_AP50", "int8_qat_AP50", "int8_ptq_AP50", "served_mb", "latency_ms")


def compare_runs(experiment: str | None = None, last: int = 5) -> list[dict[str, Any]]:
    """Rows (newest first) of the last pipeline parent runs: key params, metrics, size, latency, status."""
    from mouaadnet.pipeline.lineage import DEFAULT_EXPERIMENT, STEP_TAG, _client

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
