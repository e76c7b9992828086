"""The pipeline's multi-node path (a Kubeflow Trainer TrainJob) and its single-node GPU path (torchrun in the pod).

No cluster and no GPU here, so:
- the TrainJob manifest is rendered and validated against the committed schema
  (cluster/schemas/trainjob.v1alpha1.schema.json, from kubeflow-trainer-api 2.3.0's typed models: no package
  ships the CRD YAML);
- submit / wait / logs / failure run against a fake Kubernetes API object (CustomObjectsApi + CoreV1Api methods
  the code calls); in the whole-step test the fake's "cluster" runs the manifest's own command in this process,
  so the entry point, the config on the shared volume and the checkpoint hand-off are real;
- the GPU path's torchrun is replaced by the same in-process run of the command it was given.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml

from mouaadnet.pipeline import trainjob
from mouaadnet.pipeline.params import PipelineStepError

IMAGE = "ghcr.io/mouaadnet/mouaadnet-ultra:0.1.0"


def _manifest(**overrides):
    args = dict(name="mouaadnet-train-0123abcd", namespace="kubeflow", image=IMAGE, num_nodes=4, gpus_per_node=8,
                config_path="/mnt/mouaadnet-train/mouaadnet-train-0123abcd/config.yaml",
                out_dir="/mnt/mouaadnet-train/mouaadnet-train-0123abcd/out", volume_claim="mouaadnet-train",
                mount_path="/mnt/mouaadnet-train")
    return trainjob.render_trainjob(**{**args, **overrides})


def test_the_trainjob_manifest_validates_against_the_crd_schema():
    schema = json.loads(trainjob.SCHEMA.read_text())
    assert "kubeflow-trainer-api 2.3.0" in schema["$comment"]  # where the schema comes from
    manifest = _manifest()
    trainjob.validate_manifest(manifest)
    trainjob.validate_manifest(_manifest(gpus_per_node=0, num_nodes=2))  # CPU nodes (gloo)
    assert manifest["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and manifest["kind"] == "TrainJob"
    spec = manifest["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    trainer = spec["trainer"]
    assert trainer["image"] == IMAGE and trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "8"}
    # the same entry point as one machine; torchrun takes nodes / rank / master from the runtime's PET_* env
    assert trainer["command"][:5] == ["torchrun", "-m", "mouaadnet.cli", "train", "--config"]
    assert "--nnodes" not in trainer["command"]
    pod = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert pod["name"] == "node"
    pod_spec = pod["template"]["spec"]["template"]["spec"]
    assert pod_spec["volumes"] == [{"name": "shared", "persistentVolumeClaim": {"claimName": "mouaadnet-train"}}]
    assert pod_spec["containers"] == [{"name": "node", "volumeMounts": [{"name": "shared",
                                                                           "mountPath": "/mnt/mouaadnet-train"}]}]


def test_the_manifest_holds_secret_references_only():
    manifest = _manifest()
    env = {e["name"]: e for e in manifest["spec"]["trainer"]["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"):
        assert "value" not in env[key]
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "mouaadnet-credentials", "key": key, "optional": True}
    text = json.dumps(manifest)
    assert "AKIA" not in text and "password" not in text.lower().replace("mlflow_tracking_password", "")


@pytest.mark.parametrize("breakage", ["misspelt field", "wrong type", "missing runtime name", "bad env"])
def test_the_schema_rejects_broken_manifests(breakage):
    manifest = copy.deepcopy(_manifest())
    trainer = manifest["spec"]["trainer"]
    if breakage == "misspelt field":
        trainer["numProcsPerNode"] = trainer.pop("numProcPerNode")
    elif breakage == "wrong type":
        trainer["numNodes"] = "4"
    elif breakage == "missing runtime name":
        del manifest["spec"]["runtimeRef"]["name"]
    else:
        trainer["env"][0]["valueFrom"]["secretRef"] = trainer["env"][0]["valueFrom"].pop("secretKeyRef")
    with pytest.raises(jsonschema.ValidationError):
        trainjob.validate_manifest(manifest)


# ---- a fake Kubernetes API ------------------------------------------------------------------------------
class _ApiError(Exception):
    def __init__(self, status):
        super().__init__(f"HTTP {status}")
        self.status = status


class FakeKube:
    """CustomObjectsApi + CoreV1Api, the calls run_trainjob makes. ``on_create(manifest)`` plays the cluster:
    it returns the final (type, reason) and the log lines of rank 0."""

    def __init__(self, on_create, polls_before_done: int = 2):
        self.on_create, self.polls_before_done = on_create, polls_before_done
        self.created, self.deleted, self.gets, self.log_requests = [], [], 0, []
        self.outcome = None

    # CustomObjectsApi
    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        self.created.append(body)
        self.outcome = self.on_create(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.deleted:
            raise _ApiError(404)
        self.gets += 1
        job = {"metadata": {"name": name}, "status": {"conditions": [
            {"type": "Created", "status": "True", "reason": "JobSetCreated", "message": ""}]}}
        if self.gets > self.polls_before_done:
            state, reason = self.outcome[0]
            job["status"]["conditions"].append({"type": state, "status": "True", "reason": reason,
                                                "message": "jobset finished" if state == "Complete" else
                                                "pod node-1 exited with code 137 (OOMKilled)"})
        return job

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)

    # CoreV1Api
    def list_namespaced_pod(self, namespace, label_selector=""):
        assert "jobset.sigs.k8s.io/jobset-name=" in label_selector
        assert "batch.kubernetes.io/job-completion-index=0" in label_selector
        pod = SimpleNamespace(metadata=SimpleNamespace(name="job-node-0-0-x"), status=SimpleNamespace(phase="Running"))
        return SimpleNamespace(items=[pod] if self.gets >= 1 else [])

    def read_namespaced_pod_log(self, name, namespace, container=None, follow=False, _preload_content=True):
        self.log_requests.append((name, container, follow))
        lines = self.outcome[1]
        return SimpleNamespace(stream=lambda: iter([("\n".join(lines) + "\n").encode()[:7],
                                                    ("\n".join(lines) + "\n").encode()[7:]]))


def test_run_trainjob_streams_rank0_logs_and_returns_when_complete():
    kube = FakeKube(lambda body: (("Complete", "JobSetCompleted"), ["epoch 1: loss 3.2", "epoch 2: loss 2.9"]))
    lines = []
    job = trainjob.run_trainjob(_manifest(), kube, kube, poll_s=0, echo=lines.append, sleep=lambda s: None)
    assert kube.created[0]["metadata"]["name"] == "mouaadnet-train-0123abcd"
    assert kube.log_requests == [("job-node-0-0-x", "node", True)]
    assert "epoch 1: loss 3.2" in lines and "epoch 2: loss 2.9" in lines
    assert lines[-1] == "TrainJob kubeflow/mouaadnet-train-0123abcd complete"
    assert job["status"]["conditions"][-1]["type"] == "Complete"


def test_a_failed_trainjob_fails_the_step_with_its_reason():
    kube = FakeKube(lambda body: (("Failed", "JobSetFailed"), ["Traceback ...", "RuntimeError: CUDA OOM"]))
    lines = []
    with pytest.raises(trainjob.TrainJobFailed, match="JobSetFailed: pod node-1 exited with code 137"):
        trainjob.run_trainjob(_manifest(), kube, kube, poll_s=0, echo=lines.append, sleep=lambda s: None)
    assert "RuntimeError: CUDA OOM" in lines  # the log is streamed before the failure is raised


def test_an_interrupted_step_deletes_its_trainjob():
    kube = FakeKube(lambda body: (("Complete", ""), []), polls_before_done=10)

    def cancelled(_):
        raise KeyboardInterrupt

    kube.list_namespaced_pod = lambda namespace, label_selector="": SimpleNamespace(items=[])
    with pytest.raises(KeyboardInterrupt):
        trainjob.run_trainjob(_manifest(), kube, kube, poll_s=0, echo=lambda line: None, sleep=cancelled)
    assert kube.deleted == ["mouaadnet-train-0123abcd"]


# ---- the pipeline step, end to end through the fakes ------------------------------------------------------
CONFIG = """\
seed: 0
model: {scene_size: 64, crop_size: 32}
data:
  scene: [{path: "synthetic:16:0", val: "synthetic:4:99", max_val: 4}]
  crop: [{path: "synthetic-crops:16:1", val: "synthetic-crops:4:98", max_val: 4}]
  scene_batch_size: 4
  crop_batch_size: 4
optim: {epochs: 1, steps_per_epoch: 2}
device: cpu
"""


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)


def _run_cli(args: list[str]) -> int:
    """What a node (or a torchrun worker) runs: `python -m mouaadnet.cli ARGS`, here in this process."""
    from typer.testing import CliRunner

    from mouaadnet.cli.main import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.exit_code


def test_train_step_on_nodes_submits_a_trainjob_and_hands_the_checkpoint_on(tmp_path, tracking):
    from mouaadnet.pipeline.steps import train_step

    dataset, shared = tmp_path / "dataset", tmp_path / "shared"
    (dataset / "train").mkdir(parents=True)
    (dataset / "train" / "annotations.json").write_text("{}")
    shared.mkdir()

    def cluster(manifest):
        trainjob.validate_manifest(manifest)
        command = manifest["spec"]["trainer"]["command"]
        assert command[:3] == ["torchrun", "-m", "mouaadnet.cli"]
        config_path = Path(command[command.index("--config") + 1])
        assert config_path.parent.parent == shared and (config_path.parent / "data" / "train").is_dir()
        _run_cli(command[3:])  # node 0 == rank 0 of a 1-process world here
        return ("Complete", "JobSetCompleted"), ["done"]

    kube = FakeKube(cluster, polls_before_done=1)
    result = train_step(dataset, CONFIG, tmp_path / "checkpoint", experiment="trainjob-test", num_nodes=2,
                        gpus_per_node=4, image=IMAGE, train_volume="mouaadnet-train", namespace="ml",
                        shared_dir=shared, kube=(kube, kube))
    body = kube.created[0]
    assert body["metadata"]["namespace"] == "ml" and body["spec"]["trainer"]["numNodes"] == 2
    assert body["spec"]["trainer"]["numProcPerNode"] == 4
    assert (tmp_path / "checkpoint" / "best.pt").is_file() and (tmp_path / "checkpoint" / "config.yaml").is_file()
    assert result["run_id"] and "loss" in result["metrics"] and result["best_epoch"] == 1
    assert list(shared.iterdir()) == []  # the job's folder on the volume is cleaned up after success

    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_run(result["run_id"]).data.tags
    assert tags["pipeline.step"] == "train" and "config_sha" in tags


def test_train_step_on_nodes_starts_from_the_pretrained_checkpoint(tmp_path, tracking):
    """The resolved ``pretrained`` reaches the nodes: a copy on the shared volume, named in their config."""
    import torch

    from model import ModelConfig, build_model
    from mouaadnet.pipeline.steps import train_step

    dataset, shared = tmp_path / "dataset", tmp_path / "shared"
    dataset.mkdir()
    shared.mkdir()
    pretrained = tmp_path / "start.pt"
    torch.save({"model": build_model(ModelConfig(scene_size=64, crop_size=32)).state_dict()}, pretrained)
    seen = []

    def cluster(manifest):
        command = manifest["spec"]["trainer"]["command"]
        config = yaml.safe_load(Path(command[command.index("--config") + 1]).read_text())
        seen.append(config["pretrained"])
        assert config["pretrained"] and Path(config["pretrained"]).parent.parent == shared
        assert Path(config["pretrained"]).read_bytes() == pretrained.read_bytes()
        _run_cli(command[3:])
        return ("Complete", "JobSetCompleted"), ["done"]

    kube = FakeKube(cluster, polls_before_done=1)
    train_step(dataset, CONFIG, tmp_path / "checkpoint", num_nodes=2, image=IMAGE, train_volume="v",
               namespace="ml", shared_dir=shared, kube=(kube, kube), pretrained=str(pretrained))
    assert len(seen) == 1


def test_train_step_on_nodes_fails_with_the_jobs_reason_and_keeps_its_files(tmp_path, tracking):
    from mouaadnet.pipeline.steps import train_step

    dataset, shared = tmp_path / "dataset", tmp_path / "shared"
    dataset.mkdir()
    shared.mkdir()
    kube = FakeKube(lambda body: (("Failed", "JobSetFailed"), ["boom"]), polls_before_done=1)
    with pytest.raises(PipelineStepError, match="failed: JobSetFailed.*files stay in"):
        train_step(dataset, CONFIG, tmp_path / "checkpoint", num_nodes=3, image=IMAGE, train_volume="v",
                   namespace="ml", shared_dir=shared, kube=(kube, kube))
    assert len(list(shared.iterdir())) == 1  # kept for a look (and its last.pt, if any)
    with pytest.raises(PipelineStepError, match="not mounted"):
        train_step(dataset, CONFIG, tmp_path / "c2", num_nodes=2, image=IMAGE, train_volume="v",
                   shared_dir=tmp_path / "missing", kube=(kube, kube))


def test_train_step_on_one_gpu_node_runs_torchrun_in_the_pod(tmp_path, tracking, monkeypatch):
    from mouaadnet.pipeline.steps import train_step

    calls, configs, real_run = [], [], subprocess.run

    def fake_run(command, check=False, **kwargs):
        if "torch.distributed.run" not in command:  # git rev-parse and the like
            return real_run(command, check=check, **kwargs)
        calls.append(command)
        configs.append(yaml.safe_load(Path(command[command.index("--config") + 1]).read_text()))
        assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
        return subprocess.CompletedProcess(command, _run_cli(command[7:]))

    monkeypatch.setattr(subprocess, "run", fake_run)
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    result = train_step(dataset, CONFIG, tmp_path / "checkpoint", experiment="gpu-test", gpus_per_node=2)
    assert len(calls) == 1 and "--run-name" in calls[0]
    assert configs[0]["experiment"] == "gpu-test" and configs[0]["optim"]["steps_per_epoch"] == 2
    assert (tmp_path / "checkpoint" / "best.pt").is_file() and result["run_id"]

    def failing_run(command, check=False, **kwargs):
        if "torch.distributed.run" not in command:
            return real_run(command, check=check, **kwargs)
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr(subprocess, "run", failing_run)
    with pytest.raises(PipelineStepError, match="torchrun with 2 processes failed"):
        train_step(dataset, CONFIG, tmp_path / "c2", gpus_per_node=2)


def test_the_cluster_manifest_grants_what_the_step_calls():
    docs = {d["kind"]: d for d in yaml.safe_load_all((Path(trainjob.__file__).parents[2] / "cluster" / "k8s" /
                                                       "train-on-nodes.yaml").read_text()) if d}
    assert docs["PersistentVolumeClaim"]["metadata"]["name"] == "mouaadnet-train"  # the pipeline's default
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in docs["Role"]["rules"]}
    assert {"create", "get", "delete"} <= rules[(("trainer.kubeflow.org",), ("trainjobs",))]
    assert {"get", "list"} <= rules[(("",), ("pods", "pods/log"))]
    assert docs["RoleBinding"]["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
