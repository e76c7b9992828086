"""How the pipeline's tasks are put in containers, without podman (tests/test_container.py runs them for real):
the image every executor gets for a run, the folders mounted, the environment passed, the task container's exit
status read before it is removed, the build options this machine's pip settings give."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("kfp")


def test_every_executor_runs_the_image_for_the_run_only():
    from mouaadnet.kubeflow.in_containers import executors_image
    from mouaadnet.kubeflow.runner import _pipeline_func

    pipeline = _pipeline_func()

    def images():
        executors = pipeline.component_spec.implementation.graph.deployment_spec["executors"]
        return {label: executors[label]["container"]["image"] for label in executors}

    before = images()
    assert len(before) > 10 and "exec-publish" in before  # the nested release pipeline's executors included
    with executors_image(pipeline, "localhost/mouaadnet-ultra:test"):
        assert set(images().values()) == {"localhost/mouaadnet-ultra:test"}
    assert images() == before  # the compiled spec keeps the registry tag


def test_mounts_are_the_outermost_folders_the_tasks_use(tmp_path, monkeypatch):
    from mouaadnet.kubeflow.in_containers import mount_paths

    repo, elsewhere, store = tmp_path / "repo", tmp_path / "elsewhere", tmp_path / "store"
    for folder in (repo / "triton_repo", repo / "examples" / "real", elsewhere, store):
        folder.mkdir(parents=True)
    (elsewhere / "start.pt").write_bytes(b"")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    arguments = {"repo_dir": str(repo), "triton_repo": str(repo / "triton_repo"), "real_val": "examples/real",
                 "pretrained": str(elsewhere / "start.pt"), "shipped": ""}
    assert sorted(mount_paths(arguments, cwd=repo)) == sorted([repo, elsewhere, store])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # a server: nothing to mount for it
    assert sorted(mount_paths(arguments, cwd=repo)) == sorted([repo, elsewhere])


def test_tasks_get_tracking_and_credentials_but_not_the_callers_image_settings(monkeypatch):
    from mouaadnet.kubeflow.in_containers import task_environment

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8333")
    monkeypatch.setenv("MOUAADNET_GIT_COMMIT", "abc")  # the image's own commit wins
    monkeypatch.setenv("PATH", "/somewhere/bin")
    env = task_environment()
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000" and env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:8333"
    assert "MOUAADNET_GIT_COMMIT" not in env and "PATH" not in env
    assert env["HOME"] == "/tmp" and env["PYTHONUNBUFFERED"] == "1"


class _Container:
    def __init__(self, status: int):
        self.status, self.removed = status, False

    def logs(self, stream: bool, follow: bool):
        yield b"a line\n"

    def wait(self):
        assert not self.removed, "the status must be read before the container is removed"
        return {"StatusCode": self.status}

    def remove(self, force: bool):
        self.removed = True


class _Client:
    def __init__(self, status: int):
        self.container, self.calls = _Container(status), []

    @property
    def containers(self):
        return self

    def run(self, **kwargs):
        self.calls.append(kwargs)
        return self.container


@pytest.mark.parametrize("status", [0, 1])
def test_a_task_container_runs_its_command_and_reports_its_status(status, capsys):
    pytest.importorskip("docker")
    from mouaadnet.kubeflow.in_containers import run_task_container

    client = _Client(status)
    code = run_task_container(client, "img", ["sh", "-ec", "echo hi"], {"/root": {"bind": "/root"}},
                              auto_remove=True, network_mode="host")
    assert code == status and client.container.removed and "a line" in capsys.readouterr().out
    call = client.calls[0]
    assert call["entrypoint"] == ["sh"] and call["command"] == ["-ec", "echo hi"] and "auto_remove" not in call


def test_build_options_give_the_build_this_machines_wheels_and_ca(tmp_path, monkeypatch):
    import mouaadnet.containers as containers

    wheels, ca = tmp_path / "wheels", tmp_path / "ca.crt"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    ca.write_text("cert")
    for name in ("PIP_FIND_LINKS", "PIP_CERT", "PIP_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(containers, "_pip_config", lambda: {"find-links": str(wheels), "cert": str(ca)})
    options = containers.pip_build_options("2.13.0")
    assert options[:2] == ["--volume", f"{wheels}:{wheels}:ro"]
    assert f"PIP_FIND_LINKS={wheels}" in options and "TORCH_INDEX_URL=https://pypi.org/simple" in options
    assert f"{Path(ca).resolve()}:{containers.CA_IN_BUILD}:ro" in options
    monkeypatch.setattr(containers, "_pip_config", lambda: {})
    assert containers.pip_build_options() == []  # a machine with plain pip: the Dockerfile's defaults
