"""The compiled pipeline spec (golden file, no credentials) and the request `pipeline submit` sends."""

from __future__ import annotations

import json
import re

import pytest
import yaml

pytest.importorskip("kfp")

from mouaadnet.kubeflow.runner import PIPELINE_SPEC, compile_pipeline, pipeline_arguments, submit  # noqa: E402


def test_compiled_spec_matches_golden_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MOUAADNET_IMAGE", raising=False)
    import mouaadnet.kubeflow.components.image as image

    monkeypatch.setattr(image, "IMAGE", image.DEFAULT_IMAGE)
    fresh = compile_pipeline(tmp_path / "mouaadnet.yaml").read_text()
    assert fresh == PIPELINE_SPEC.read_text(), (
        "cluster/mouaadnet.yaml is stale: run `mouaadnet pipeline compile` and commit it")


def _tasks(spec: dict) -> list[dict]:
    """Every task of every DAG in the spec, with its name (``_name``) and the DAG component that holds it (``_in``)."""
    dags = {"root": spec["root"], **spec["components"]}
    return [{**task, "_name": name, "_in": owner} for owner, comp in dags.items() if "dag" in comp
            for name, task in comp["dag"]["tasks"].items()]


def _named(tasks: list[dict], pattern: str) -> list[dict]:
    return [t for t in tasks if re.fullmatch(pattern, t["_name"])]


def _invoking(tasks: list[dict], component: str) -> dict:
    """The task that runs DAG component ``component`` (a condition's task carries its triggerPolicy)."""
    return next(t for t in tasks if t["componentRef"]["name"] == component)


def _executor(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def test_spec_has_no_credentials_and_the_expected_structure():
    text = PIPELINE_SPEC.read_text()
    for needle in ("AWS_SECRET_ACCESS_KEY=", "aws_secret_access_key", "password:", "BEGIN PRIVATE KEY"):
        assert needle not in text
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    docs = list(yaml.safe_load_all(text))
    spec, platform = docs[0], docs[1]
    assert spec["sdkVersion"] == "kfp-2"
    executors = spec["deploymentSpec"]["executors"]
    steps = {"prepare-data", "train", "reparameterize", "qat", "export-onnx", "compile-tensorrt", "evaluate",
             "publish", "start-run", "finish-run"}
    assert steps <= {re.sub(r"^exec-|(-\d+)+$", "", name) for name in executors}
    for executor in executors.values():
        assert executor["container"]["image"] == "ghcr.io/mouaadnet/mouaadnet-ultra:0.1.0"
        assert "pip install" not in json.dumps(executor["container"]["command"])  # install_kfp_package=False
    tasks = _tasks(spec)
    for task in _named(tasks, r"compile-tensorrt(-\d+)?"):
        gpu = executors[_executor(spec, task)]["container"]["resources"]["accelerator"]
        assert gpu["resourceType"] == "nvidia.com/gpu" and gpu["resourceCount"] == "1"
    # credentials come from a Kubernetes Secret by name, for every task
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == set(executors)
    for conf in k8s.values():
        assert conf["secretAsEnv"][0]["secretName"] == "mouaadnet-credentials"
        assert conf["secretAsEnv"][0]["optional"] is True
    assert _named(tasks, "finish-run")[0]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert _named(tasks, "prepare-data")[0]["retryPolicy"]["maxRetryCount"] == 3
    trains = _named(tasks, r"train(-\d+)?")
    assert len(trains) == 3 and all(t["cachingOptions"].get("enableCache") is True for t in trains)
    evaluates = _named(tasks, r"evaluate(-\d+)?")
    assert len(evaluates) == 3 and not any(t["cachingOptions"].get("enableCache") for t in evaluates)
    publishes = _named(tasks, r"publish(-\d+)*")
    assert len(publishes) == 6 and all(t["retryPolicy"]["maxRetryCount"] == 3 for t in publishes)
    conditions = [t["triggerPolicy"]["condition"] for t in tasks if "condition" in t.get("triggerPolicy", {})]
    assert any("build_tensorrt" in c for c in conditions)
    assert any("gate-decision" in c and "fp32" in c for c in conditions)  # publish only when the gates pass


def test_train_runs_where_num_nodes_and_gpus_per_node_say():
    """Three train tasks, one runs: N nodes -> TrainJob submitter (no GPU, the shared PVC); 1 node with GPUs ->
    requests gpus_per_node GPUs and runs torchrun; else one process on CPU (kfp.local, `make run`)."""
    spec, platform = list(yaml.safe_load_all(PIPELINE_SPEC.read_text()))[:2]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["num_nodes"]["defaultValue"] == 1 and params["gpus_per_node"]["defaultValue"] == 0
    assert params["num_nodes"]["parameterType"] == "NUMBER_INTEGER"
    assert params["train_volume"]["defaultValue"] == "mouaadnet-train"
    assert params["trainer_runtime"]["defaultValue"] == "torch-distributed"
    tasks, executors = _tasks(spec), spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    trains = {t["taskInfo"]["name"]: t for t in _named(tasks, r"train(-\d+)?")}
    assert set(trains) == {"train-trainjob", "train-gpus", "train"}
    branch = {name: _invoking(tasks, t["_in"])["triggerPolicy"]["condition"] for name, t in trains.items()}
    assert "num_nodes" in branch["train-trainjob"] and "> 1" in branch["train-trainjob"]
    assert "gpus_per_node" in branch["train-gpus"] and "> 0" in branch["train-gpus"]
    assert "num_nodes" in branch["train"] and "gpus_per_node" in branch["train"]  # the else branch: neither
    resources = {name: executors[_executor(spec, t)]["container"]["resources"] for name, t in trains.items()}
    assert resources["train-gpus"]["accelerator"] == {
        "resourceCount": "{{$.inputs.parameters['pipelinechannel--gpus_per_node']}}", "resourceType": "nvidia.com/gpu",
        "type": "nvidia.com/gpu"}
    assert "accelerator" not in resources["train-trainjob"] and "accelerator" not in resources["train"]
    assert resources["train"]["resourceCpuRequest"] == "2" and resources["train"]["resourceMemoryRequest"] == "4G"
    assert resources["train-gpus"]["resourceCpuRequest"] == "4"
    platform_of = {name: k8s[_executor(spec, t)] for name, t in trains.items()}
    pvc = platform_of["train-trainjob"]["pvcMount"][0]
    assert pvc["mountPath"] == "/mnt/mouaadnet-train"
    assert pvc["pvcNameParameter"]["componentInputParameter"] == "pipelinechannel--train_volume"
    assert "pvcMount" not in platform_of["train"] and "pvcMount" not in platform_of["train-gpus"]
    assert platform_of["train-gpus"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    for task in trains.values():  # the TrainJob runs the pipeline's own image: pinned as a constant
        inputs = task["inputs"]["parameters"]
        assert inputs["image"]["runtimeValue"]["constant"] == "ghcr.io/mouaadnet/mouaadnet-ultra:0.1.0"
        assert inputs["num_nodes"]["componentInputParameter"] == "pipelinechannel--num_nodes"
        assert inputs["gpus_per_node"]["componentInputParameter"] == "pipelinechannel--gpus_per_node"
        # the data pins key the train cache and are checked before training; CPU processes per node (torchrun)
        assert inputs["data_pins"]["componentInputParameter"] == "pipelinechannel--data_pins"
        assert inputs["nproc_per_node"]["componentInputParameter"] == "pipelinechannel--nproc_per_node"
    assert params["data_pins"]["defaultValue"] == "" and params["nproc_per_node"]["defaultValue"] == 1
    releases = _named(tasks, r"release(-\d+)?")
    assert len(releases) == 3  # the same sub-pipeline after each way of training
    for release in releases:
        producer = release["inputs"]["artifacts"]["checkpoint"]["taskOutputArtifact"]["producerTask"]
        assert any(t["_name"] == producer and t["_in"] == release["_in"] for t in trains.values())


class _FakeUrllib3Response:
    def __init__(self, status: int, payload: dict):
        self.status, self.reason = status, "OK"
        self.data = json.dumps(payload).encode()
        self.headers = {"Content-Type": "application/json"}

    def getheaders(self):
        return self.headers

    def getheader(self, name, default=None):
        return self.headers.get(name, default)


def test_submit_builds_the_run_request(monkeypatch, tmp_path):
    """kfp.Client against a fake HTTP layer: the run request carries the spec, the arguments and the experiment."""
    from kfp_server_api import rest

    calls = []

    def fake_request(self, method, url, query_params=None, headers=None, body=None, post_params=None,
                     _preload_content=True, _request_timeout=None):
        calls.append({"method": method, "url": url, "query": query_params, "body": body, "headers": headers})
        if url.endswith("/healthz"):
            payload = {"multi_user": False}
        elif url.endswith("/experiments") and method == "GET":
            payload = {"experiments": []}
        elif url.endswith("/experiments") and method == "POST":
            payload = {"experiment_id": "exp-123", "display_name": body["display_name"]}
        elif url.endswith("/runs") and method == "POST":
            payload = {"run_id": "run-456", "display_name": body["display_name"], "experiment_id": "exp-123"}
        else:
            raise AssertionError(f"unexpected request {method} {url}")
        return rest.RESTResponse(_FakeUrllib3Response(200, payload))

    monkeypatch.setattr(rest.RESTClientObject, "request", fake_request)
    args = pipeline_arguments(epochs=2, build_tensorrt=True)
    result = submit("http://kfp.example:8080", args, experiment="mouaadnet-tests", run_name="r1")
    assert result == {"run_id": "run-456", "url": "http://kfp.example:8080/#/runs/details/run-456"}
    posts = [c for c in calls if c["method"] == "POST"]
    assert posts[0]["url"] == "http://kfp.example:8080/apis/v2beta1/experiments"
    assert posts[0]["body"]["display_name"] == "mouaadnet-tests"
    run = posts[-1]
    assert run["url"] == "http://kfp.example:8080/apis/v2beta1/runs"
    body = run["body"]
    assert body["display_name"] == "r1" and body["experiment_id"] == "exp-123"
    spec = body["pipeline_spec"]  # {"pipeline_spec": ..., "platform_spec": ...} when a platform spec exists
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "mouaadnet-ultra"
    assert spec["platform_spec"]["platforms"]["kubernetes"]  # the Kubernetes Secret wiring travels with it
    params = body["runtime_config"]["parameters"]
    assert params["epochs"] == 2 and params["build_tensorrt"] is True
    assert params["data_version"].endswith(".dir") and "scene_size" in params["config"]
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(params)


def test_config_paths_are_rerooted_at_the_dataset(tmp_path):
    from mouaadnet.pipeline.params import load_config_text, train_config

    text = load_config_text("configs/pipeline.yaml", repo_dir=PIPELINE_SPEC.parents[1])
    cfg = train_config(text, tmp_path / "ds", epochs=2, steps_per_epoch=7)
    assert cfg.data.scene[0].path == str(tmp_path / "ds" / "train" / "annotations.json")
    assert cfg.data.scene[0].val == str(tmp_path / "ds" / "val" / "annotations.json")
    assert (cfg.optim.epochs, cfg.optim.steps_per_epoch) == (2, 7)
    assert load_config_text(text) == text
