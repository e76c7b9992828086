"""The pipeline's components in containers on this machine: kfp.local's DockerRunner, set up the way the
subprocess runner's tasks see the world (what `mouaadnet pipeline run --runner docker` uses).

kfp.local's DockerRunner (kfp/local/docker_task_handler.py) starts each task with the docker SDK
(``containers.run(image=<the component's base_image>, command=<its command>, volumes={pipeline_root: same path})``)
against DOCKER_HOST: Docker, or podman's Docker-API service (mouaadnet.containers.docker_api). On top of that:

- the image: every executor of the pipeline spec gets ``image`` (default: what `make image` builds) for the run,
  instead of the registry tag the spec is compiled with (mouaadnet.kubeflow.components.image);
- the task's command replaces the image's ENTRYPOINT (`mouaadnet`), as a Kubernetes pod's `command` does, and a
  task's exit status is read before its container is removed (``run_task_container``);
- host network: the MLflow server and S3 on 127.0.0.1 are the same addresses inside;
- bind mounts at the same paths: the checkout (`repo_dir`: data/, data.dvc, weights/, examples/, triton_repo/),
  the working folder (relative paths such as `examples/real` and a sqlite MLflow store), the Triton repository
  and a sqlite or file MLflow store wherever they are;
- the caller's uid:gid, so the files the tasks write (artifacts, data/, published versions, mlflow.db) belong to
  whoever runs the pipeline, as with subprocesses; HOME=/tmp for a uid the image has no home for;
- the environment the tasks read: MLFLOW_*, AWS_*, DVC_*, MOUAADNET_* (the image's own commit excepted).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

PASSED_ENV_PREFIXES = ("MLFLOW_", "AWS_", "DVC_", "MOUAADNET_")
NOT_PASSED = {"MOUAADNET_GIT_COMMIT", "MOUAADNET_IMAGE", "MOUAADNET_PODMAN_CACHE"}


def _store_path(uri: str) -> Path | None:
    """The local folder behind a sqlite:/// or file: MLflow tracking URI (None for a server)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).parent
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://").removeprefix("file:"))
    if "://" not in uri:
        return Path(uri)
    return None


def mount_paths(arguments: dict[str, Any], cwd: Path | None = None) -> list[Path]:
    """The host folders the tasks read or write, outermost only (a folder inside another is not mounted twice)."""
    cwd = Path(cwd or Path.cwd()).resolve()
    wanted = [cwd]
    values = [arguments.get(key) for key in ("repo_dir", "triton_repo", "shipped", "pretrained", "resume_from")]
    values += str(arguments.get("real_val") or "").split(",")  # the champion rule's real sets
    for value in values:
        if isinstance(value, str) and value.strip() and value != "auto":
            path = (cwd / value.strip()).resolve()
            wanted.append(path if path.is_dir() else path.parent)
    store = _store_path(os.environ.get("MLFLOW_TRACKING_URI", ""))
    if store is not None:
        wanted.append((cwd / store).resolve())
    outermost: list[Path] = []
    for path in sorted(set(wanted), key=lambda p: len(p.parts)):
        if path.exists() and not any(path.is_relative_to(kept) for kept in outermost):
            outermost.append(path)
    return outermost


def task_environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key.startswith(PASSED_ENV_PREFIXES) and key not in NOT_PASSED}
    env.update(HOME="/tmp", PYTHONUNBUFFERED="1", MPLBACKEND=os.environ.get("MPLBACKEND", "Agg"))
    return env


@contextmanager
def task_containers(image: str | None = None) -> Iterator[str]:
    """For the duration: a Docker API (podman's service when there is no Docker), the image checked to be there
    (default: what `make image` builds; yielded), and kfp.local's task containers run by ``run_task_container``."""
    import docker
    from kfp.local import docker_task_handler

    from mouaadnet.containers import IMAGE, ContainerError, docker_api

    image = image or IMAGE
    with docker_api():
        client = docker.from_env()
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise ContainerError(f"image {image} not found on {os.environ.get('DOCKER_HOST', 'Docker')}: build it "
                                 "with `make image` (or docker build -t IMAGE . and --image IMAGE)") from None
        finally:
            client.close()
        original = docker_task_handler.run_docker_container
        docker_task_handler.run_docker_container = run_task_container
        try:
            yield image
        finally:
            docker_task_handler.run_docker_container = original


def run_task_container(client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any) -> int:
    """kfp.local's ``run_docker_container`` as Kubernetes runs a task: the task's command replaces the image's
    ENTRYPOINT (a pod's `command` does; the docker SDK cannot reset it on podman), and the exit status is read
    before the container is removed (kfp.local lets the engine remove it on exit and takes a container already
    gone for a success: with podman it always is, so a failed task passed)."""
    import docker

    run_args.pop("auto_remove", None)
    container = client.containers.run(image=image, entrypoint=command[:1], command=command[1:], detach=True,
                                      stdout=True, stderr=True, volumes=volumes, **run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        with suppress(docker.errors.APIError):
            container.remove(force=True)


def docker_runner(arguments: dict[str, Any], cwd: Path | None = None):
    """kfp.local.DockerRunner with the mounts, user, network and environment described above."""
    from docker.types import Mount
    from kfp import local

    cwd = Path(cwd or Path.cwd()).resolve()
    mounts = [Mount(target=str(path), source=str(path), type="bind") for path in mount_paths(arguments, cwd)]
    return local.DockerRunner(network_mode="host", user=f"{os.getuid()}:{os.getgid()}",
                              working_dir=str(cwd), environment=task_environment(), mounts=mounts)


@contextmanager
def executors_image(pipeline: Any, image: str) -> Iterator[None]:
    """Every executor of ``pipeline`` (a kfp GraphComponent) runs ``image`` for the duration; the compiled spec
    (`mouaadnet pipeline compile`) keeps the registry tag."""
    graph = pipeline.component_spec.implementation.graph
    saved = type(graph)()
    saved.CopyFrom(graph)
    executors = graph.deployment_spec["executors"]
    for label in executors:
        container = executors[label]["container"]
        container["image"] = image
    try:
        yield
    finally:
        graph.CopyFrom(saved)
