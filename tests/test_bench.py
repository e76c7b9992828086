"""`mouaadnet bench --quick` runs and reports sane numbers."""

from __future__ import annotations

from typer.testing import CliRunner


def test_bench_quick(tmp_path):
    from mouaadnet.bench import run_bench
    from mouaadnet.cli import app

    result = run_bench(sizes={"scene": 64}, batches=(1,), threads=(1,), runs=5, warmup=1)
    rows = result["rows"]
    assert {r["backend"] for r in rows} == {"torch-train", "torch-deploy", "ort-fp32", "ort-int8"}
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p90_ms"] < 10_000 and r["images_per_s"] > 0
    assert 10 < result["rss_mb"] < 2_000
    assert result["files_mb"]["scene int8"] < result["files_mb"]["scene fp32"]
    res = CliRunner().invoke(app, ["bench", "--quick", "--out", str(tmp_path / "b.md")])
    assert res.exit_code == 0, res.output
    assert "| ort-int8 | crop |" in res.output and (tmp_path / "b.md").is_file()
