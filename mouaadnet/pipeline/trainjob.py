"""Multi-node training from the pipeline: a Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1).

The pipeline's train step, given ``num_nodes > 1``, renders a TrainJob that runs the same entry point as one
machine does (``torchrun -m mouaadnet.cli train --config ... --out ...``) on ``num_nodes`` pods of
``gpus_per_node`` GPUs each, with the cluster's ``torch-distributed`` ClusterTrainingRuntime (its Torch plugin
sets torchrun's PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR ... in every pod). It submits it through the
Kubernetes API, streams the logs of node 0 (rank 0: progress lines, epoch summaries), waits for the job's
Complete or Failed condition and raises on failure, so the pipeline fails with the job's reason.

Data in, checkpoint out: a ReadWriteMany PersistentVolumeClaim mounted at the same path in the pipeline pod and
in every TrainJob pod. The step copies the dataset artifact and the resolved config onto it, rank 0 writes
last.pt / best.pt there, and the step copies best.pt into the pipeline's checkpoint artifact.

Credentials: the pods read MLflow / S3 settings from the Secret ``mouaadnet-credentials`` (secretKeyRef,
optional keys), as every pipeline task does; the manifest holds no secret value.
The pipeline pod's service account needs create/get/delete on trainjobs and get/list on pods and pods/log
(cluster/k8s/train-on-nodes.yaml).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
DEFAULT_RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Kubeflow Trainer installs for PyTorch
NODE = "node"  # the runtime's replicated job and container that run the trainer
SHARED_VOLUME = "shared"
SHARED_DIR = "/mnt/mouaadnet-train"  # where the train_volume PVC is mounted, in the pipeline pod and the TrainJob pods
SECRET_NAME = "mouaadnet-credentials"
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION",
               "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
SCHEMA = Path(__file__).resolve().parents[2] / "cluster" / "schemas" / "trainjob.v1alpha1.schema.json"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# pods of one TrainJob: its JobSet has the TrainJob's name; rank 0 runs in the pod with completion index 0
POD_SELECTOR = ("jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name=" + NODE +
                ",batch.kubernetes.io/job-completion-index=0")


class TrainJobFailed(RuntimeError):
    """The TrainJob ended Failed (or could not be followed); the message carries its reason."""


def job_name(prefix: str = "mouaadnet-train") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def current_namespace(default: str = "kubeflow") -> str:
    """The namespace this pod runs in (the service account's), else ``default``."""
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or default
    except OSError:
        return default


def train_command(config_path: str, out_dir: str, run_name: str = "train") -> list[str]:
    """The entry point every node runs: torchrun reads nodes, rank and master from the runtime's PET_* env."""
    return ["torchrun", "-m", "mouaadnet.cli", "train", "--config", config_path, "--out", out_dir, "--quiet",
            "--run-name", run_name]


def render_trainjob(name: str, namespace: str, image: str, num_nodes: int, gpus_per_node: int, config_path: str,
                    out_dir: str, volume_claim: str, mount_path: str, runtime: str = DEFAULT_RUNTIME,
                    cpu: str = "2", memory: str = "8Gi", labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The TrainJob manifest (a plain dict, what the Kubernetes API takes)."""
    if num_nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"num_nodes must be >= 1 and gpus_per_node >= 0, got {num_nodes}, {gpus_per_node}")
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}}
    if gpus_per_node:
        resources["limits"] = {"nvidia.com/gpu": str(gpus_per_node)}
    env = [{"name": key, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key, "optional": True}}}
           for key in SECRET_KEYS]
    env += [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "MPLBACKEND", "value": "Agg"}]
    pod_patch = {
        "volumes": [{"name": SHARED_VOLUME, "persistentVolumeClaim": {"claimName": volume_claim}}],
        "containers": [{"name": NODE, "volumeMounts": [{"name": SHARED_VOLUME, "mountPath": mount_path}]}],
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "mouaadnet-ultra", "app.kubernetes.io/component": "train",
                                **(labels or {})}},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime},
            "trainer": {
                "image": image,
                "command": train_command(config_path, out_dir),
                "numNodes": num_nodes,
                "numProcPerNode": max(gpus_per_node, 1),  # one process per GPU; one per CPU-only node
                "resourcesPerNode": resources,
                "env": env,
            },
            "runtimePatches": [{
                "manager": "mouaadnet.pipeline",
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                    {"name": NODE, "template": {"spec": {"template": {"spec": pod_patch}}}}]}}},
            }],
        },
    }


def validate_manifest(manifest: dict[str, Any], schema_path: Path = SCHEMA) -> None:
    """Check ``manifest`` against the committed TrainJob schema (jsonschema); raises ValidationError."""
    import jsonschema

    schema = json.loads(schema_path.read_text())
    jsonschema.validate(manifest, schema, cls=jsonschema.Draft202012Validator)


def kubernetes_apis() -> tuple[Any, Any]:
    """(CustomObjectsApi, CoreV1Api) from the in-cluster service account, else from ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as error:
            raise TrainJobFailed(f"no Kubernetes API to submit the TrainJob to (num_nodes > 1 needs a cluster "
                                 f"with Kubeflow Trainer): {error}") from None
    return client.CustomObjectsApi(), client.CoreV1Api()


def _condition(job: dict[str, Any]) -> tuple[str, str] | None:
    """("Complete" | "Failed", reason: message) once the TrainJob has finished, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], f"{condition.get('reason', '')}: {condition.get('message', '')}".strip(": ")
    return None


def _rank0_pod(core: Any, namespace: str, name: str) -> Any | None:
    pods = core.list_namespaced_pod(namespace, label_selector=POD_SELECTOR.format(name=name)).items
    return pods[0] if pods else None


def _stream_logs(core: Any, namespace: str, pod: str, echo: Callable[[str], None]) -> None:
    """Follow the node container's log until it ends (the container terminates or the pod goes away)."""
    stream = core.read_namespaced_pod_log(pod, namespace, container=NODE, follow=True, _preload_content=False)
    pending = b""
    chunks: Iterable[bytes] = stream.stream() if hasattr(stream, "stream") else stream
    for chunk in chunks:
        pending += chunk if isinstance(chunk, bytes) else chunk.encode()
        *lines, pending = pending.split(b"\n")
        for line in lines:
            echo(line.decode(errors="replace"))
    if pending:
        echo(pending.decode(errors="replace"))


def run_trainjob(manifest: dict[str, Any], custom: Any = None, core: Any = None, poll_s: float = 10.0,
                 timeout_s: float | None = None, echo: Callable[[str], None] = print,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Create the TrainJob, stream rank 0's log, wait for Complete; returns the final object.

    Raises TrainJobFailed when it ends Failed (with the job's reason), when it is not done after ``timeout_s``,
    or when it disappears. An interrupt (the pipeline run cancelled) deletes the TrainJob."""
    if custom is None or core is None:
        custom, core = kubernetes_apis()
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    where = f"{KIND} {namespace}/{name}"
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    echo(f"submitted {where}: {manifest['spec']['trainer']['numNodes']} nodes x "
         f"{manifest['spec']['trainer']['numProcPerNode']} processes, runtime {manifest['spec']['runtimeRef']['name']}")
    started, streamed = time.monotonic(), False
    try:
        while True:
            try:
                job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            except Exception as error:  # noqa: BLE001 - kubernetes ApiException and transport errors alike
                if getattr(error, "status", None) == 404:
                    raise TrainJobFailed(f"{where} disappeared (deleted?)") from None
                raise
            done = _condition(job)
            if done is not None:
                state, reason = done
                if state == "Failed":
                    raise TrainJobFailed(f"{where} failed: {reason or 'no reason given'} "
                                         f"(kubectl -n {namespace} describe trainjob {name}; logs of rank 0 above)")
                echo(f"{where} complete")
                return job
            if not streamed:
                pod = _rank0_pod(core, namespace, name)
                phase = getattr(getattr(pod, "status", None), "phase", None)
                if pod is not None and phase in ("Running", "Succeeded", "Failed"):
                    echo(f"--- logs of {pod.metadata.name} (rank 0) ---")
                    _stream_logs(core, namespace, pod.metadata.name, echo)
                    streamed = True
                    continue  # the container ended: look at the job's condition right away
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TrainJobFailed(f"{where} not finished after {timeout_s:.0f} s")
            sleep(poll_s)
    except KeyboardInterrupt:
        echo(f"interrupted: deleting {where}")
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        raise
