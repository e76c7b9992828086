"""`bench-serve` on a tiny setting against a real tritonserver: it runs, counts no failures, and its floor rows
(a model that does no work) come out below the real model step."""

from __future__ import annotations

import json
import re

import pytest
from _serving_utils import REPO_SRC

from mouaadnet.serving.triton_install import ServerError, find_triton

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

try:
    find_triton()
except ServerError as _error:
    pytest.skip(f"serving venv missing ({_error}); `make serve-venv` builds it", allow_module_level=True)
pytest.importorskip("tritonclient.grpc")


def _instances() -> int:
    """Stub processes the repository starts: the sum of instance_group counts of its Python models."""
    return sum(int(n) for config in REPO_SRC.glob("*/config.pbtxt")
               for n in re.findall(r"count:\s*(\d+)", config.read_text()))


def test_bench_serve_tiny_setting(tmp_path):
    from mouaadnet.bench.serving import main

    report = tmp_path / "BENCH.md"
    report.write_text("# Benchmarks\n\n## Serving\nold\n\n## Other\nkept\n")
    results = main(seconds=1.0, levels=[1], rounds=1, paired_rounds=20, out=report, json_out=tmp_path / "r.json",
                   echo=lambda message: None)
    for path in ("ensemble", "detector", "detector_shm", "ort_model", "ort_pipeline"):
        assert results[path][1]["requests"] > 0 and results[path][1]["errors"] == 0, (path, results[path])
    paired = results["paired"]
    assert paired["floor_shm"]["p50_ms"] < paired["triton_shm"]["p50_ms"]  # the floor does no inference
    assert paired["grpc_ping"]["p50_ms"] < paired["floor_grpc"]["p50_ms"]
    assert results["rss_idle"]["stub_processes"] == _instances()  # the floor model's stubs are left out
    text = report.read_text()
    assert "old" not in text and "## Other\nkept" in text and "Floor, same rounds" in text
    assert json.loads((tmp_path / "r.json").read_text())["paired"]["floor_shm"]["p50_ms"] > 0
