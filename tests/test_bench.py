"""`mouaadnet bench --quick` runs and reports sane numbers, with OpenVINO rows, the best runtime per model and RSS."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner


def _openvino() -> bool:
    from mouaadnet.runtime import openvino_available

    return openvino_available()


def test_bench_quick(tmp_path):
    import json

    from mouaadnet.cli.main import app

    res = CliRunner().invoke(app, ["bench", "--quick", "--out", str(tmp_path / "b.md"), "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "b.json").read_text())
    rows = [r for r in result["rows"] if r["mode"] == "scene"]
    ours = {"torch-train", "torch-deploy", "ort-fp32", "ort-int8"}
    peer = {"peer-yolov8n-ort-fp32", "peer-yolov8n-ort-int8"}
    if _openvino():
        ours |= {"ov-f32", "ov-bf16", "ov-int8"}
        peer |= {"peer-yolov8n-ov-f32", "peer-yolov8n-ov-bf16", "peer-yolov8n-ov-int8"}
    assert {r["backend"] for r in rows} == ours | peer
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p90_ms"] < 10_000 and r["images_per_s"] > 0
        assert r["precision"] in ("fp32", "int8", "f32", "bf16", "int8/f32", "int8/bf16")
    precisions = {r["backend"]: r["precision"] for r in rows}
    assert precisions["ort-int8"] == "int8" and precisions.get("ov-f32", "f32") == "f32"
    assert set(result["rss_mb"]) == {b for b in ours | peer if "torch" not in b}
    assert all(10 < v < 2_000 for v in result["rss_mb"].values())
    assert result["files_mb"]["scene int8"] < result["files_mb"]["scene fp32"]
    # the peer is the 3.2 M-parameter YOLOv8n: its INT8 file is ~4x ours
    assert result["files_mb"]["peer yolov8n int8"] > 2 * result["files_mb"]["scene int8"]
    best = result["best"]
    assert set(best["models"]) == {"ours scene", "ours crop", "peer scene"}
    for key, row in best["models"].items():
        same = [r["p50_ms"] for r in result["rows"] if r["batch"] == 1 and r["threads"] == 1
                and "torch" not in r["backend"] and r["mode"] == key.split()[1]
                and r["backend"].startswith("peer") == key.startswith("peer")]
        assert row["p50_ms"] == min(same)
    assert best["ours_over_peer"] == pytest.approx(best["models"]["ours scene"]["p50_ms"]
                                                   / best["models"]["peer scene"]["p50_ms"])
    assert "| ort-int8 | crop |" in res.output and (tmp_path / "b.md").is_file()
    assert "| peer-yolov8n-ort-int8 | scene |" in res.output and "ours / peer at each side's best" in res.output
    assert "load average" in res.output and "Peak RSS" in res.output
    if _openvino():
        assert "| ov-bf16 | crop |" in res.output and "| peer-yolov8n-ov-int8 | scene |" in res.output


def test_interleaved_timing_times_every_function_equally():
    from mouaadnet.runtime.timing import time_interleaved

    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1
        return fn

    out = time_interleaved({"a": make("a"), "b": make("b")}, runs=23, warmup=2, rounds=5)
    assert calls == {"a": 25, "b": 25} and set(out) == {"a", "b"}
    assert all(0 <= p50 <= p90 for p50, p90, _ in out.values())


def test_peer_has_the_yolov8n_parameter_count():
    from mouaadnet.bench.peers import build_yolov8n_like

    # published YOLOv8n: 3,157,200 parameters; the 16 missing are the fixed DFL projection, a buffer here
    assert sum(p.numel() for p in build_yolov8n_like().parameters()) == 3_157_184
