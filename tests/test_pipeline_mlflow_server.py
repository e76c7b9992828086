"""The pipeline's MLflow lineage against a real `mlflow server` (sqlite + SeaweedFS S3 artifacts, 127.0.0.1).

Calls the same step functions the Kubeflow components call (mouaadnet.pipeline.steps), on a random-weight
64 px model, so it checks the tracking/registry/artifact path without paying for training:
parent run + child runs, the ONNX models logged with mlflow.onnx.log_model landing in S3 under
mlflow/<exp>/models/<model_id>/artifacts/, a registry version with aliases candidate/champion and tags linking it
to the Triton version and sha256, and the exit handler ending the parent FAILED after a failing step.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("kfp")

from _serving_utils import copy_repo  # noqa: E402

from mouaadnet.tracking import PROJECT_ROOT  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    import torch

    from model import ModelConfig, build_model

    cfg = ModelConfig(scene_size=64, crop_size=32)
    from conftest import randomize_batchnorm

    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(cfg).eval())  # distinct scores: no ties in the top-K parity check
    path = tmp_path / "train" / "best.pt"
    path.parent.mkdir()
    torch.save({"model": model.state_dict(), "model_config": cfg.model_dump()}, path)
    return path


def test_lineage_registry_and_s3_artifacts(mlflow_server_uri, s3_service, tiny_checkpoint, tmp_path):
    from mlflow import MlflowClient

    from model.artifacts import sha256_file
    from mouaadnet.pipeline import champion, dvc_data, lineage, steps

    dvc_data.ensure_data(PROJECT_ROOT)
    data = PROJECT_ROOT / "data"
    exp = "pipeline-server-test"
    parent = lineage.start_pipeline_run(exp, {"epochs": 1, "config": "model: {}\n", "data_version": "x.dir"}, "kfp-1")
    fused = steps.reparameterize_step(tiny_checkpoint, data, tmp_path / "deploy", exp)
    exported = steps.export_step(tmp_path / "deploy" / "deploy.pt", data, tmp_path / "fp32", tmp_path / "int8",
                                 None, size=320, experiment=exp)
    adopted = lineage.adopt_runs(parent, {"reparameterize": fused["run_id"], "export_onnx": exported["run_id"]})
    from mlflow import MlflowClient as _C

    assert adopted == {"reparameterize": "child", "export_onnx": "child"}, (parent, _C().get_run(fused["run_id"]).data.tags)
    triton = copy_repo(tmp_path / "triton_repo")
    published = champion.publish_step(tmp_path / "fp32", triton, exported["fp32_model_id"], 0.25,
                                   registered_model="mouaadnet-server-test", parent_run_id=parent,
                                   kfp_run_id="kfp-1", experiment=exp)
    assert lineage.finish_pipeline_run(exp, "kfp-1", "SUCCEEDED") == parent

    client = MlflowClient(mlflow_server_uri)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.kfp_run_id"] == "kfp-1"
    assert run.data.params["epochs"] == "1" and run.data.tags["git_commit"]
    kids = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert {k.data.tags["pipeline.step"] for k in kids} == {"reparameterize", "export_onnx", "publish"}
    # the ONNX models went through the server's artifact proxy into SeaweedFS
    keys = s3_service.list_keys("mlflow/")
    model_id = exported["fp32_model_id"]
    assert any(k.endswith(f"models/{model_id}/artifacts/model.onnx") for k in keys), keys[:20]
    # registry: version + aliases + tags that link it to Triton
    version = client.get_model_version_by_alias("mouaadnet-server-test", "candidate")
    assert client.get_model_version_by_alias("mouaadnet-server-test", "champion").version == version.version
    onnx = triton / "detector" / str(published["triton_version"]) / "model.onnx"
    assert version.tags["sha256"] == sha256_file(onnx) == published["sha256"]
    assert version.tags["triton_version"] == str(published["triton_version"])

    # a second candidate with a worse primary metric stays candidate; champion does not move
    versions_before = sorted(p.name for p in (triton / "detector").iterdir())
    second = champion.publish_step(tmp_path / "fp32", triton, exported["fp32_model_id"], 0.1,
                                   registered_model="mouaadnet-server-test", experiment=exp)
    assert second["champion"] is False and "NOT promoted" in second["decision"]
    assert second["triton_version"] == -1  # Triton keeps serving the champion: no new version folder
    assert sorted(p.name for p in (triton / "detector").iterdir()) == versions_before
    assert client.get_model_version_by_alias("mouaadnet-server-test", "candidate").version == second["registry_version"]
    assert client.get_model_version_by_alias("mouaadnet-server-test", "champion").version == version.version

    # a failing step: its child run ends FAILED, and the exit handler ends the parent FAILED
    parent2 = lineage.start_pipeline_run(exp, {}, "kfp-2")
    with pytest.raises(steps.PipelineStepError):
        steps.prepare_data(tmp_path / "ds", PROJECT_ROOT, data_version="0" * 32 + ".dir", experiment=exp)
    assert lineage.finish_pipeline_run(exp, "kfp-2", "FAILED", "prepare-data: refused") == parent2
    failed = client.get_run(parent2)
    error = failed.data.tags["pipeline.error"]  # the failed step named first, then the exit handler's own text
    assert failed.info.status == "FAILED" and failed.data.tags["pipeline.failed_steps"] == "prepare_data"
    assert error.startswith("step prepare_data failed: PipelineStepError: data_version")
    assert error.endswith("(prepare-data: refused)")
    orphans = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent2}'")
    assert [o.info.status for o in orphans] == ["FAILED"]


def test_shipped_weights_are_the_first_champion_and_a_worse_candidate_is_not_promoted(
        mlflow_server_uri, s3_service, tiny_checkpoint, tmp_path):
    import json
    import shutil

    from mlflow import MlflowClient

    from model.artifacts import write_sidecar
    from mouaadnet.pipeline import champion, dvc_data, steps

    dvc_data.ensure_data(PROJECT_ROOT)
    exp = "pipeline-champion-test"
    steps.reparameterize_step(tiny_checkpoint, PROJECT_ROOT / "data", tmp_path / "deploy", exp)
    exported = steps.export_step(tmp_path / "deploy" / "deploy.pt", PROJECT_ROOT / "data", tmp_path / "fp32",
                                 tmp_path / "int8", None, size=320, experiment=exp)
    weights = tmp_path / "weights"  # a shipped-weights folder: manifest, checkpoint, scene/crop ONNX, sidecars
    weights.mkdir()
    shutil.copy(tmp_path / "fp32" / "model.onnx", weights / "scene.onnx")
    shutil.copy(tiny_checkpoint, weights / "ckpt.pt")
    for name in ("scene.onnx", "ckpt.pt"):
        write_sidecar(weights / name, "fp32")
    models = {"scene": {"fp32": "scene.onnx", "default": "fp32"}, "crop": {"fp32": "scene.onnx", "default": "fp32"}}
    (weights / "manifest.json").write_text(json.dumps({"checkpoint": "ckpt.pt", "models": models}))
    triton = copy_repo(tmp_path / "triton_repo")
    before = sorted(p.name for p in (triton / "detector").iterdir())
    real = str(PROJECT_ROOT / "examples" / "real")

    worse = champion.publish_step(tmp_path / "fp32", triton, exported["fp32_model_id"], -1.0,
                                  registered_model="mouaadnet-champion-test", experiment=exp, real_val=real,
                                  shipped=str(weights))
    client = MlflowClient(mlflow_server_uri)
    first = client.get_model_version_by_alias("mouaadnet-champion-test", "champion")
    assert first.tags["shipped"] == "true" and first.tags["triton_version"] == "1"
    assert 0.0 <= float(first.tags["real_AP50"]) <= 1.0  # measured on the real scenes, not copied from anywhere
    assert worse["champion"] is False and "NOT promoted" in worse["decision"] and worse["triton_version"] == -1
    assert sorted(p.name for p in (triton / "detector").iterdir()) == before

    better = champion.publish_step(tmp_path / "fp32", triton, exported["fp32_model_id"], 2.0,
                                   registered_model="mouaadnet-champion-test", experiment=exp, real_val=real,
                                   shipped=str(weights))
    assert better["champion"] is True and better["triton_version"] > 1
    assert client.get_model_version_by_alias("mouaadnet-champion-test", "champion").version == better["registry_version"]

    # a champion registered without the metric (before the rule existed) is measured on the real set from the file
    # Triton serves for it; it no longer loses to any candidate by default
    client.set_model_version_tag("mouaadnet-champion-test", better["registry_version"], "real_AP50", "nan")
    after = sorted(p.name for p in (triton / "detector").iterdir())
    unmeasured = champion.publish_step(tmp_path / "fp32", triton, exported["fp32_model_id"], -0.5,
                                       registered_model="mouaadnet-champion-test", experiment=exp, real_val=real,
                                       shipped=str(weights))
    assert unmeasured["champion"] is False and unmeasured["triton_version"] == -1
    measured = client.get_model_version("mouaadnet-champion-test", better["registry_version"]).tags["real_AP50"]
    assert 0.0 <= float(measured) <= 1.0
    assert sorted(p.name for p in (triton / "detector").iterdir()) == after

    # further real sets are measured in the step from both files; the champion's own file is no better there than
    # itself (a tie), so a candidate that only claims a better primary metric is not promoted
    tied = champion.publish_step(tmp_path / "fp32", triton, exported["fp32_model_id"], 3.0,
                                 registered_model="mouaadnet-champion-test", experiment=exp,
                                 real_val=f"{real},{real}", shipped=str(weights))
    assert tied["champion"] is False and tied["triton_version"] == -1, tied["decision"]
    assert "on each further real set" in tied["decision"] and "NOT promoted" in tied["decision"]
    assert sorted(p.name for p in (triton / "detector").iterdir()) == after
