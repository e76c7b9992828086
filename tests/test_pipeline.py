"""The whole pipeline under kfp.local (SubprocessRunner) on a tiny configuration.

Three runs share one pipeline root with caching on, so the second and third reuse the data/train/export tasks
of the first (which also checks that the cache keys on the data version and config):
1. success: MLflow parent + one child per step, training started from the `pretrained` checkpoint, ONNX logged,
   registry version with aliases, Triton version (no shipped weights given: the first candidate is champion;
   the champion rule itself: tests/test_champion.py and tests/test_pipeline_mlflow_server.py);
2. gate fail (min_ap50 above 1): the pipeline succeeds, nothing is published, the parent says gates_passed false;
3. a step raises (invalid config -> train fails): the run fails, the parent run is FAILED, nothing published.
"""

from __future__ import annotations

import pytest
from _serving_utils import copy_repo

pytest.importorskip("kfp")

from mouaadnet.tracking import PROJECT_ROOT  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

TINY = """\
experiment: mouaadnet-pipeline-test
seed: 0
model: {scene_size: 96, crop_size: 32}
data:
  scene:
    - path: data/train/annotations.json
      val: data/val/annotations.json
      max_val: 4
  crop: []
  scene_batch_size: 4
  augment: false
optim: {lr: 0.004, epochs: 1, steps_per_epoch: 20}
"""
EXPERIMENT = "pipeline-test"
STEPS = {"prepare_data", "train", "reparameterize", "qat", "export_onnx", "evaluate", "publish"}


@pytest.fixture(scope="module")
def pipeline_env(tmp_path_factory):
    from mouaadnet.pipeline import dvc_data

    dvc_data.ensure_data(PROJECT_ROOT)
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MPLBACKEND", "Agg")
        mp.delenv("AWS_ACCESS_KEY_ID", raising=False)
        triton = copy_repo(root / "triton_repo")
        for config in triton.rglob("*.pbtxt"):  # served at 96 px: the smallest size whose 12x12 map holds the top-100 rows
            config.write_text(config.read_text().replace("3, 320, 320", "3, 96, 96")
                              .replace('string_value: "320"', 'string_value: "96"'))
        import torch

        from model import ModelConfig, build_model

        torch.manual_seed(0)
        pretrained = root / "pretrained.pt"
        torch.save({"model": build_model(ModelConfig(scene_size=96, crop_size=32)).state_dict()}, pretrained)
        yield {"root": root, "triton": triton, "pretrained": pretrained}


def run(env, **overrides):
    from mouaadnet.kubeflow.runner import pipeline_arguments, run_local

    config = env["root"] / "tiny.yaml"
    config.write_text(overrides.pop("config_text", TINY))
    args = pipeline_arguments(config, qat_steps=2, export_size=96, triton_repo=str(env["triton"]), experiment=EXPERIMENT,
                              registered_model="mouaadnet-test", pretrained=str(env["pretrained"]), shipped="",
                              **overrides)
    return run_local(args, env["root"] / "kfp", cache=True)


def children(parent_id: str):
    from mlflow import MlflowClient

    client = MlflowClient()
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags["pipeline.step"]: r for r in runs}


def versions(env) -> list[int]:
    from mouaadnet.serving.publish import numeric_versions

    return numeric_versions(env["triton"] / "detector")


@pytest.fixture(scope="module")
def first_run(pipeline_env):
    before = versions(pipeline_env)
    return run(pipeline_env), before


def test_pipeline_runs_end_to_end_and_publishes(pipeline_env, first_run):
    from mlflow import MlflowClient

    result, before = first_run
    assert result["state"] == "SUCCEEDED", result
    assert result["status"] == "FINISHED"
    tags, parent_id = result["tags"], result["parent_run_id"]
    client = MlflowClient()
    parent = client.get_run(parent_id)
    # the parent: pipeline params, git commit, data fingerprint, KFP run id
    assert parent.data.params["data_version"].endswith(".dir") and parent.data.params["qat_steps"] == "2"
    assert tags["git_commit"] and tags["pipeline.kfp_run_id"]
    assert tags["data_fingerprint"] == parent.data.params["data_version"]
    assert tags["gates_passed"] == "true"
    # one child per step, each FINISHED with its own metrics
    kids = children(parent_id)
    assert STEPS <= set(kids), set(kids)
    assert all(k.info.status == "FINISHED" for k in kids.values())
    assert "val/score" in kids["train"].data.metrics and "fp32_mb" in kids["export_onnx"].data.metrics
    assert kids["train"].data.params["pretrained"] == str(pipeline_env["pretrained"])  # the `pretrained` parameter
    assert "real_AP50" in kids["evaluate"].data.metrics  # the champion rule's metric, on examples/real
    # what the MLflow UI shows: a model-training experiment; the data version as the runs' dataset; the source
    version = parent.data.params["data_version"]
    for run in (parent, kids["prepare_data"], kids["train"]):
        assert [(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs] == [("data", version)]
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert kids["train"].data.tags["mlflow.source.git.commit"] == tags["git_commit"]
    assert kids["train"].data.tags["mlflow.project.entryPoint"] == "train"
    # ONNX logged with signature + input example (MLflow 3 logged models)
    models = client.search_logged_models(experiment_ids=[parent.info.experiment_id],
                                         filter_string=f"source_run_id = '{kids['export_onnx'].info.run_id}'")
    assert {m.name for m in models} == {"onnx_fp32", "onnx_int8"}
    import mlflow

    info = mlflow.models.get_model_info(f"models:/{next(m for m in models if m.name == 'onnx_fp32').model_id}")
    assert info.signature is not None and info.saved_input_example_info is not None
    # Triton: one new version, sha256-checked, linked to the registry version
    new = sorted(set(versions(pipeline_env)) - set(before))
    assert len(new) == 1
    from model.artifacts import sha256_file

    onnx = pipeline_env["triton"] / "detector" / str(new[0]) / "model.onnx"
    reg = client.get_model_version_by_alias("mouaadnet-test", "candidate")
    assert client.get_model_version_by_alias("mouaadnet-test", "champion").version == reg.version
    assert reg.tags["triton_version"] == str(new[0]) and reg.tags["sha256"] == sha256_file(onnx)
    assert tags["registry_version"] == str(reg.version)


@pytest.mark.reliability
def test_gate_failure_skips_publish(pipeline_env, first_run, scoreboard):
    from mlflow import MlflowClient

    before = versions(pipeline_env)
    registered = MlflowClient().search_model_versions("name = 'mouaadnet-test'")
    result = run(pipeline_env, min_ap50=2.0)  # AP50 can never reach 2
    assert result["state"] == "SUCCEEDED" and result["status"] == "FINISHED"
    assert result["tags"]["gates_passed"] == "false"
    assert "registry_version" not in result["tags"]
    assert versions(pipeline_env) == before
    assert len(MlflowClient().search_model_versions("name = 'mouaadnet-test'")) == len(registered)
    kids = children(result["parent_run_id"])
    assert "publish" not in kids and "evaluate" in kids
    # the cached tasks of the first run were reused, and the parent says so
    reused = sorted(key.removeprefix("reused.") for key in result["tags"] if key.startswith("reused."))
    scoreboard.record("fault", "Kubeflow re-run with caching after a completed run",
                      done="the same pipeline again (caching on) with a gate it cannot pass",
                      observed=f"steps reused from the cache: {reused}; gates_passed "
                               f"{result['tags']['gates_passed']}; nothing published", ok=bool(reused))
    assert reused, result["tags"]


@pytest.mark.reliability
def test_failing_step_fails_run_and_parent(pipeline_env, first_run, scoreboard):
    from mlflow import MlflowClient

    before = versions(pipeline_env)
    registered = MlflowClient().search_model_versions("name = 'mouaadnet-test'")
    result = run(pipeline_env, config_text=TINY.replace("epochs: 1", "epochs: 0"))  # invalid: train raises
    assert result["state"] == "FAILED"
    assert result["status"] == "FAILED"
    error = result["tags"].get("pipeline.error", "")
    reused = sorted(key.removeprefix("reused.") for key in result["tags"] if key.startswith("reused."))
    named = result["tags"].get("pipeline.failed_steps") == "train" and "step train failed" in error
    scoreboard.record("fault", "a Kubeflow step fails (train: invalid config)",
                      done="pipeline run whose config has epochs: 0, so the train step raises",
                      observed=f"MLflow parent FAILED; pipeline.failed_steps={result['tags'].get('pipeline.failed_steps')}; "
                               f"pipeline.error: {error[:200]}; reused from the cache: {reused}; nothing published",
                      ok=named and versions(pipeline_env) == before, faults=1)
    assert named, error
    assert versions(pipeline_env) == before
    assert len(MlflowClient().search_model_versions("name = 'mouaadnet-test'")) == len(registered)
