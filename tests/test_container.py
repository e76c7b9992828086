"""The container images for real, with podman (README, "In containers"): the pipeline image and the serving image
build from the Dockerfile (layers cached between runs: a code change reruns only the last layers), the pipeline
image runs `mouaadnet info` as its non-root user with CPU torch and no build tools, one pipeline component runs in
it through kfp.local's DockerRunner against podman's Docker API (artifact and MLflow run on the host), and the
serving image answers a gRPC request from the host as `mouaadnet serve` does.

Skipped when podman is missing (`make test` installs it when run as root). A first build on a machine takes
minutes (base image, torch and the dependencies); a cached one seconds: docs/CONTAINERS.md has both.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

if shutil.which("podman") is None:
    pytest.skip("podman is not installed: the container tests need it (as root: apt-get install podman runc "
                "mmdebstrap uidmap; `make test` does it)", allow_module_level=True)
pytest.importorskip("docker")
pytest.importorskip("kfp")

from mouaadnet.containers import IMAGE, SERVING_IMAGE, build_image, podman, run_detached, stop  # noqa: E402
from mouaadnet.tracking import PROJECT_ROOT  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]

PROBE = """
import json, os, shutil, sys
from importlib import metadata
import torch
dists = sorted(d.metadata["Name"] for d in metadata.distributions())
print(json.dumps({
    "uid": os.getuid(), "cuda": torch.version.cuda, "torch": torch.__version__,
    "nvidia": [d for d in dists if d.lower().startswith("nvidia")],
    "compilers": [c for c in ("gcc", "cc", "g++", "make") if shutil.which(c)],
    "pip_caches": [p for p in ("/root/.cache/pip", "/home/mouaadnet/.cache/pip", "/tmp/pip") if os.path.exists(p)],
    "sources": [p for p in ("/src", "/wheels", "/opt/build") if os.path.exists(p)],
}))
"""


@pytest.fixture(scope="module")
def images():
    """Both images, built (cached layers) with this checkout; the seconds each build took."""
    built = {}
    for target in ("runtime", "serving"):
        built[target] = build_image(target, nice=10, quiet=True, echo=print)
        print(f"{built[target]['tag']}: {built[target]['seconds']:.1f} s, {built[target]['size'] / 1e6:.0f} MB")
    return built


def test_pipeline_image_runs_info_as_non_root_with_cpu_torch(images):
    info = podman("run", "--rm", IMAGE, "info", timeout=300).stdout
    assert "parameters" in info and "deploy form" in info and "outputs crop" in info, info
    assert podman("image", "inspect", "--format", "{{.Config.User}}", IMAGE).stdout.strip() == "10001:10001"
    probe = json.loads(podman("run", "--rm", "--entrypoint", "python", IMAGE, "-c", PROBE,
                              timeout=300).stdout.strip().splitlines()[-1])
    assert probe["uid"] == 10001
    assert probe["cuda"] is None and probe["torch"].endswith("+cpu") and probe["nvidia"] == [], probe
    assert probe["compilers"] == [] and probe["pip_caches"] == [] and probe["sources"] == [], probe


def test_one_component_runs_in_the_image(images, tmp_path, monkeypatch):
    """prepare_data in the image through kfp.local's DockerRunner: the dataset artifact lands in the pipeline root
    on the host and the step's MLflow run in the host's store, with the image's commit; a task that fails in its
    container fails the run (kfp.local alone reports it as a success on podman)."""
    from kfp import local
    from mlflow import MlflowClient

    from mouaadnet.kubeflow.components import prepare_data
    from mouaadnet.kubeflow.in_containers import docker_runner, task_containers
    from mouaadnet.pipeline import dvc_data

    fingerprint = dvc_data.ensure_data(PROJECT_ROOT)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    arguments = {"repo_dir": str(PROJECT_ROOT)}
    monkeypatch.setattr(prepare_data.component_spec.implementation.container, "image", IMAGE)
    with task_containers(IMAGE):
        local.init(runner=docker_runner(arguments), pipeline_root=str(tmp_path / "kfp"), raise_on_error=True)
        task = prepare_data(data_version=dvc_data.pinned_md5(PROJECT_ROOT), repo_dir=str(PROJECT_ROOT),
                            experiment="container-test")
        with pytest.raises(RuntimeError, match="prepare-data"):  # a task that fails in its container fails
            prepare_data(data_version="0" * 32, repo_dir=str(PROJECT_ROOT), experiment="container-test")
    assert task.outputs["fingerprint"] == fingerprint
    dataset = Path(task.outputs["dataset"].path)
    assert dataset.is_relative_to(tmp_path / "kfp") and sorted(p.name for p in dataset.glob("*/annotations.json"))
    assert dataset.stat().st_uid == os.getuid()  # the task ran as the caller: its files are the caller's
    # the store by name: an earlier test of the session may have set mlflow's process-wide tracking URI
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(task.outputs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["pipeline.step"] == "prepare_data"
    commit = podman("image", "inspect", "--format", '{{index .Config.Labels "org.opencontainers.image.revision"}}',
                    IMAGE).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == commit != ""


def _container_running(name: str) -> bool:
    done = podman("container", "inspect", "--format", "{{.State.Running}}", name, check=False)
    return done.returncode == 0 and done.stdout.strip() == "true"


def test_served_container_answers_grpc_from_the_host(images):
    from mouaadnet.serving.client import ClientError, TritonDetector, read_images
    from mouaadnet.serving.triton_install import free_port

    http, grpc, metrics = free_port(), free_port(), free_port()
    name = f"mouaadnet-serving-test-{os.getpid()}"
    photo = sorted((PROJECT_ROOT / "examples" / "real" / "images").glob("*.jpg"))[0]
    run_detached(SERVING_IMAGE, ["serve", "--repo", "/app/triton_repo", f"--http-port={http}",
                                 f"--grpc-port={grpc}", f"--metrics-port={metrics}"], name, nice=10)
    try:
        deadline, last = time.monotonic() + 300, None
        while True:
            try:
                people = TritonDetector(f"127.0.0.1:{grpc}", timeout=10).detect(read_images([photo]), 0.3)[0]
                break
            except ClientError as error:
                last = error
            if not _container_running(name) or time.monotonic() > deadline:
                logs = podman("logs", name, check=False).stdout[-3000:]
                pytest.fail(f"the serving container did not answer: {last}\n{logs}")
            time.sleep(1.0)
    finally:
        stop(name)
    assert people, f"no person found in {photo.name}"
    assert all(0.0 <= p["score"] <= 1.0 and 0.0 <= p["p_female"] <= 1.0 for p in people), people
