"""`mouaadnet bench --quick` runs and reports sane numbers."""

from __future__ import annotations

from typer.testing import CliRunner


def test_bench_quick(tmp_path):
    from mouaadnet.bench.inference import run_bench
    from mouaadnet.cli.main import app

    result = run_bench(sizes={"scene": 64}, batches=(1,), threads=(1,), runs=5, warmup=1)
    rows = result["rows"]
    assert {r["backend"] for r in rows} == {"torch-train", "torch-deploy", "ort-fp32", "ort-int8",
                                            "peer-yolov8n-ort-fp32", "peer-yolov8n-ort-int8"}
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p90_ms"] < 10_000 and r["images_per_s"] > 0
    assert 10 < result["rss_mb"] < 2_000
    assert result["files_mb"]["scene int8"] < result["files_mb"]["scene fp32"]
    # the peer is the 3.2 M-parameter YOLOv8n: its INT8 file is ~4x ours
    assert result["files_mb"]["peer yolov8n int8"] > 2 * result["files_mb"]["scene int8"]
    assert 10 < result["peer_rss_mb"] < 2_000
    res = CliRunner().invoke(app, ["bench", "--quick", "--out", str(tmp_path / "b.md")])
    assert res.exit_code == 0, res.output
    assert "| ort-int8 | crop |" in res.output and (tmp_path / "b.md").is_file()
    assert "| peer-yolov8n-ort-int8 | scene |" in res.output and "Same for the peer" in res.output


def test_peer_has_the_yolov8n_parameter_count():
    from mouaadnet.bench.peers import build_yolov8n_like

    # published YOLOv8n: 3,157,200 parameters; the 16 missing are the fixed DFL projection, a buffer here
    assert sum(p.numel() for p in build_yolov8n_like().parameters()) == 3_157_184
