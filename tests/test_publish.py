"""`mouaadnet publish`: next numeric version, atomic rename, keep-last-K, sha256 sidecar checks."""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest
from _serving_utils import copy_repo, tiny_onnx
from typer.testing import CliRunner

from mouaadnet.cli.main import app
from mouaadnet.serving.publish import PublishError, numeric_versions, publish, sha256_file


@pytest.fixture
def repo(tmp_path):
    return copy_repo(tmp_path / "repo")


@pytest.fixture
def artifact(tmp_path):
    return tiny_onnx(tmp_path / "art" / "model.onnx")


def test_publish_next_version_with_sidecar_and_model_py(repo, artifact):
    result = publish(artifact, repo, keep=5)
    assert result.version == 2 and result.path == repo / "detector" / "2"
    files = sorted(p.name for p in result.path.iterdir())
    assert files == ["model.onnx", "model.onnx.json", "model.py"]
    meta = json.loads((result.path / "model.onnx.json").read_text())
    assert meta["sha256"] == sha256_file(artifact) == sha256_file(result.path / "model.onnx")
    assert meta["published"]["version"] == 2 and meta["published"]["backend"] == "python"
    assert (result.path / "model.py").read_bytes() == (repo / "detector" / "1" / "model.py").read_bytes()
    assert publish(artifact, repo, keep=5).version == 3
    assert not [p for p in (repo / "detector").iterdir() if p.name.startswith(".publish-")]


def test_keep_last_k(repo, artifact):
    for _ in range(4):
        last = publish(artifact, repo, keep=2)
    assert numeric_versions(repo / "detector") == [1, 4, 5]  # the seed 1/ (model.py, no binary) stays
    assert last.removed == [3]
    assert (repo / "detector" / "5" / "model.py").is_file()


def test_published_version_1_is_pruned_like_any_other(tmp_path, artifact):
    repo = copy_repo(tmp_path / "r")
    (repo / "detector" / "1" / "model.py").rename(tmp_path / "model.py")
    shutil.rmtree(repo / "detector" / "1")
    (repo / "detector" / "1").mkdir()
    shutil.copy(tmp_path / "model.py", repo / "detector" / "1" / "model.py")
    publish(artifact, repo, keep=1)  # 2
    shutil.copy(artifact, repo / "detector" / "1" / "model.onnx")  # 1 now holds a real model
    publish(artifact, repo, keep=1)
    assert numeric_versions(repo / "detector") == [3]


def test_model_py_comes_from_the_seed(repo, artifact):
    publish(artifact, repo)
    (repo / "detector" / "1" / "model.py").write_text("# edited seed\n")
    result = publish(artifact, repo)
    assert (result.path / "model.py").read_text() == "# edited seed\n"


def test_refuses_sidecar_mismatch(repo, artifact):
    (artifact.parent / "model.onnx.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(PublishError, match="does not match"):
        publish(artifact, repo)
    assert numeric_versions(repo / "detector") == [1]


def test_accepts_matching_sidecar_and_keeps_its_fields(repo, artifact):
    (artifact.parent / "model.onnx.json").write_text(json.dumps({"sha256": sha256_file(artifact), "precision": "fp32"}))
    result = publish(artifact, repo)
    meta = json.loads((result.path / "model.onnx.json").read_text())
    assert meta["precision"] == "fp32"


def test_refuses_broken_sidecar_and_missing_artifact(repo, artifact, tmp_path):
    (artifact.parent / "model.onnx.json").write_text("{not json")
    with pytest.raises(PublishError, match="not readable JSON"):
        publish(artifact, repo)
    with pytest.raises(PublishError, match="does not exist"):
        publish(tmp_path / "nope.onnx", repo)


def test_refuses_onnx_with_the_wrong_signature(repo, tmp_path):
    bad = tiny_onnx(tmp_path / "bad" / "model.onnx", size=416)
    with pytest.raises(PublishError, match="dims"):
        publish(bad, repo)


def test_backend_choice_switches_config(repo, artifact, tmp_path):
    result = publish(artifact, repo, backend="onnxruntime")
    assert 'backend: "onnxruntime"' in (repo / "detector" / "config.pbtxt").read_text()
    assert not (result.path / "model.py").exists()
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    result = publish(plan, repo, backend="tensorrt")
    assert (result.path / "model.plan").is_file()
    assert 'platform: "tensorrt_plan"' in (repo / "detector" / "config.pbtxt").read_text()
    with pytest.raises(PublishError, match="must be one of"):
        publish(artifact, repo, backend="tflite")
    with pytest.raises(PublishError, match="not an ONNX"):
        publish(artifact, repo, backend="tensorrt")
    publish(artifact, repo, backend="python")
    assert 'backend: "python"' in (repo / "detector" / "config.pbtxt").read_text()


def test_concurrent_publishes_get_distinct_versions(repo, artifact):
    results, errors = [], []

    def run():
        try:
            results.append(publish(artifact, repo, keep=10).version)
        except Exception as error:  # pragma: no cover
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(results) == [2, 3, 4, 5]


def test_failure_leaves_no_half_written_version(repo, artifact, monkeypatch):
    import mouaadnet.serving.publish as pub

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(pub, "_copy_synced", boom)
    with pytest.raises(OSError):
        publish(artifact, repo)
    names = os.listdir(repo / "detector")
    assert "2" not in names and not [n for n in names if n.startswith(".publish-")]


def test_cli_publish_and_check(repo, artifact):
    runner = CliRunner()
    result = runner.invoke(app, ["publish", str(artifact), "--repo", str(repo), "--keep", "2"])
    assert result.exit_code == 0, result.output
    assert "published detector version 2" in result.output
    (artifact.parent / "model.onnx.json").write_text(json.dumps({"sha256": "f" * 64}))
    result = runner.invoke(app, ["publish", str(artifact), "--repo", str(repo)])
    assert result.exit_code == 1 and "does not match" in result.output
