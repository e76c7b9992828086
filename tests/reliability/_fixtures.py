"""Session fixtures of the reliability suite (registered by tests/conftest.py; a conftest.py here would shadow
tests/conftest.py for the modules that import helpers from it): one real Triton server for the request cases.

`make test` runs the suite bounded (short load, the costliest faults at their smallest size); `make reliability`
sets MOUAADNET_RELIABILITY=full (60 s load, every fault variant) and writes the scoreboard into
docs/RELIABILITY.md. Every server here binds 127.0.0.1 and is stopped by its PID.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def standin_onnx(tmp_path_factory):
    from mouaadnet.export.standin import export_standin_onnx

    return export_standin_onnx(tmp_path_factory.mktemp("standin") / "model.onnx", seed=0)


@pytest.fixture(scope="session")
def triton(tmp_path_factory, standin_onnx):
    """A real tritonserver with the ensemble and the stand-in detector (explicit model control)."""
    from _serving_utils import copy_repo

    from mouaadnet.serving.publish import publish
    from mouaadnet.serving.server import TritonServer
    from mouaadnet.serving.triton_install import ServerConfig, ServerError, find_triton, free_port

    try:
        install = find_triton()
    except ServerError as error:
        pytest.skip(f"serving venv missing ({error}); `make serve-venv` builds it")
    pytest.importorskip("tritonclient.grpc")
    root = tmp_path_factory.mktemp("triton-rel")
    repo = copy_repo(root / "repo")
    publish(standin_onnx, repo)
    cfg = ServerConfig(repo=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                       control_mode="explicit", load_models=["mouaadnet", "preprocess", "detector", "postprocess"])
    server = TritonServer(cfg, install, log_path=root / "triton.log")
    server.start()
    try:
        server.wait_ready(timeout=240)
        yield server
    finally:
        server.stop()
