"""A real tritonserver (from the nvidia-pytriton wheel, in .venv-serve) on 127.0.0.1, started and stopped by PID.

Health/metadata/config, the ensemble on a real photo equal to in-process ONNX Runtime, a bad image failing only its
own request, a model whose initialize raises, and a publish during traffic. The matrix of bad requests (each
followed by a good one) is in tests/reliability/test_bad_inputs_triton.py.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from _serving_utils import copy_repo
from PIL import Image

from mouaadnet.serving.server import TritonServer  # noqa: E402
from mouaadnet.serving.triton_install import ServerConfig, ServerError, find_triton, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

try:
    INSTALL = find_triton()
except ServerError as _error:
    pytest.skip(f"serving venv missing ({_error}); `make serve-venv` builds it", allow_module_level=True)

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from mouaadnet.export.standin import export_standin_onnx  # noqa: E402
from mouaadnet.serving.client import LocalDetector, TritonDetector  # noqa: E402
from mouaadnet.serving.publish import load_on_server, publish  # noqa: E402

THRESHOLD = 0.05  # the stand-in network is untrained: its scores sit around 0.1

BROKEN_MODEL_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("weights file is corrupt (deliberately broken test model)")

    def execute(self, requests):
        return []
'''
BROKEN_CONFIG = '''
name: "broken"
backend: "python"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
'''


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    return {"astronaut": jpeg(data.astronaut()), "chelsea": jpeg(data.chelsea())}


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return export_standin_onnx(root / "a" / "model.onnx", seed=0), export_standin_onnx(root / "b" / "model.onnx", seed=1)


@pytest.fixture(scope="module")
def server(tmp_path_factory, onnx_models):
    root = tmp_path_factory.mktemp("triton")
    repo = copy_repo(root / "repo")
    publish(onnx_models[0], repo)  # version 2 (version 1 is the seed folder without a model.onnx)
    cfg = ServerConfig(repo=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                       control_mode="explicit", load_models=["mouaadnet", "preprocess", "detector", "postprocess"])
    srv = TritonServer(cfg, INSTALL, log_path=root / "triton.log")
    srv.start()
    try:
        srv.wait_ready(timeout=180)
        yield srv
    finally:
        code = srv.stop()
        assert code is not None and srv.process.poll() is not None  # stopped, by PID
        stubs = subprocess.run(["pgrep", "-f", str(repo)], capture_output=True, text=True).stdout.split()
        assert not stubs, f"stub processes left behind: {stubs}"


@pytest.fixture
def client(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


def image_input(blobs, name="image", dtype="BYTES"):
    inp = grpcclient.InferInput(name, [len(blobs), 1], dtype)
    inp.set_data_from_numpy(np.array([[b] for b in blobs], dtype=np.object_))
    return inp


def test_health_metadata_and_config(server, client):
    assert client.is_server_live() and client.is_server_ready()
    for name in ("mouaadnet", "preprocess", "detector", "postprocess"):
        assert client.is_model_ready(name), name
        config = client.get_model_config(name, as_json=True)["config"]
        assert config["name"] == name and int(config["max_batch_size"]) == 16
    meta = client.get_model_metadata("mouaadnet", as_json=True)
    assert [i["name"] for i in meta["inputs"]] == ["image", "score_threshold"]
    assert meta["inputs"][0]["datatype"] == "BYTES"
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "gender", "age", "count"]
    detector = client.get_model_metadata("detector", as_json=True)
    assert detector["versions"] == ["2"]
    assert detector["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": ["-1", "3", "320", "320"]}
    assert "nv_inference_request_success" in __import__("urllib.request").request.urlopen(
        server.metrics_url, timeout=5).read().decode()


def test_ensemble_on_real_photos_equals_in_process_ort(server, photos, onnx_models):
    blobs = [photos["astronaut"], photos["chelsea"]]
    remote = TritonDetector(server.grpc_url).infer_raw(blobs, THRESHOLD)
    local = LocalDetector(onnx_models[0]).infer_raw(blobs, THRESHOLD)
    assert remote["count"].ravel().tolist() == local["count"].ravel().tolist()
    assert remote["count"].min() > 0
    for name in ("boxes", "scores", "gender", "age"):
        np.testing.assert_allclose(remote[name], local[name], rtol=1e-4, atol=1e-3, err_msg=name)
    # boxes are in ORIGINAL pixels: astronaut 512x512, chelsea 451x300
    assert remote["boxes"][0, :, 0::2].max() <= 512 and remote["boxes"][1, :, 0::2].max() <= 451
    assert remote["boxes"][1, :, 1::2].max() <= 300
    default = TritonDetector(server.grpc_url).infer_raw(blobs)  # no threshold input: config default 0.3
    assert default["count"].ravel().tolist() == LocalDetector(onnx_models[0]).infer_raw(blobs, 0.3)["count"].ravel().tolist()


def test_detect_cli_through_the_server(server, photos, tmp_path):
    import json

    from typer.testing import CliRunner

    from mouaadnet.cli.main import app

    path = tmp_path / "astronaut.jpg"
    path.write_bytes(photos["astronaut"])
    result = CliRunner().invoke(app, ["detect", str(path), str(path), "--url", server.grpc_url,
                                      "--threshold", str(THRESHOLD), "--json", "--draw", str(tmp_path / "out.jpg")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload) == 2 and payload[0]["people"] == payload[1]["people"] and payload[0]["people"]
    assert (tmp_path / "out_0.jpg").is_file() and (tmp_path / "out_1.jpg").is_file()


def test_one_bad_image_fails_only_its_own_request(server, client, photos):
    """Concurrent requests batched together by Triton: only the bad one errors."""
    results: dict[int, object] = {}

    def call(i, blob):
        try:
            results[i] = client.infer("mouaadnet", [image_input([blob])], client_timeout=30).as_numpy("count")
        except InferenceServerException as error:
            results[i] = error

    blobs = [photos["astronaut"], b"junk", photos["chelsea"], photos["astronaut"]]
    threads = [threading.Thread(target=call, args=(i, b)) for i, b in enumerate(blobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results[1], InferenceServerException)
    assert all(isinstance(results[i], np.ndarray) for i in (0, 2, 3)), results


def test_client_errors_are_clear(server, tmp_path):
    from mouaadnet.serving.client import ClientError, read_images

    with pytest.raises(ClientError, match="is `mouaadnet serve` running"):
        TritonDetector(f"127.0.0.1:{free_port()}", timeout=3)
    with pytest.raises(ClientError, match="not ready"):
        TritonDetector(server.grpc_url, model="nonexistent")
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(ClientError, match="notes.jpg: not an image"):
        read_images([text])


def test_model_whose_initialize_raises_is_not_ready(server, client):
    broken = server.cfg.repo / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text(BROKEN_CONFIG)
    (broken / "1" / "model.py").write_text(BROKEN_MODEL_PY)
    admin = {"mouaadnet-admin-key": server.admin_key}  # the repository API needs serve's admin key
    try:
        with pytest.raises(InferenceServerException, match="weights file is corrupt"):
            client.load_model("broken", headers=admin)
        assert not client.is_model_ready("broken")
        index = {m["name"]: m for m in client.get_model_repository_index(headers=admin, as_json=True)["models"]}
        assert index["broken"]["state"] == "UNAVAILABLE" and "weights file is corrupt" in index["broken"]["reason"]
        assert client.is_model_ready("mouaadnet")
    finally:
        shutil.rmtree(broken)


def test_serve_names_the_model_that_failed_and_exits_nonzero(tmp_path, onnx_models):
    repo = copy_repo(tmp_path / "repo")
    for name in ("mouaadnet", "preprocess", "postprocess"):  # keep start-up short: detector + broken only
        shutil.rmtree(repo / name)
    publish(onnx_models[0], repo)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text(BROKEN_CONFIG)
    (repo / "broken" / "1" / "model.py").write_text(BROKEN_MODEL_PY)
    cmd = [sys.executable, "-m", "mouaadnet.cli", "serve", "--repo", str(repo), "--grpc-port", str(free_port()),
           "--http-port", str(free_port()), "--metrics-port", str(free_port()),
           "--log-file", str(tmp_path / "triton.log"), "--timeout", "120"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "model 'broken' version 1 failed to load" in proc.stderr and "weights file is corrupt" in proc.stderr


def test_serve_starts_prints_endpoints_and_stops_on_sigterm(tmp_path, onnx_models):
    repo = copy_repo(tmp_path / "repo")
    for name in ("mouaadnet", "preprocess", "postprocess"):
        shutil.rmtree(repo / name)
    publish(onnx_models[0], repo)
    grpc_port = free_port()
    cmd = [sys.executable, "-m", "mouaadnet.cli", "serve", "--repo", str(repo), "--grpc-port", str(grpc_port),
           "--http-port", str(free_port()), "--metrics-port", str(free_port()),
           "--log-file", str(tmp_path / "triton.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break
        assert any(f"gRPC     127.0.0.1:{grpc_port}" in line for line in lines), lines
        assert grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").is_model_ready("detector")
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + out
    assert "tritonserver stopped" in out


def test_publish_while_serving_switches_without_failed_requests(server, client, photos, onnx_models):
    blob = photos["astronaut"]
    stop = threading.Event()
    outcomes: list[object] = []

    def traffic():
        own = grpcclient.InferenceServerClient(server.grpc_url)
        while not stop.is_set() and len(outcomes) < 2000:
            try:
                r = own.infer("mouaadnet", [image_input([blob])], client_timeout=30)
                outcomes.append(r.as_numpy("count"))
            except InferenceServerException as error:
                outcomes.append(error)

    workers = [threading.Thread(target=traffic) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        result = publish(onnx_models[1], server.cfg.repo, keep=2)
        assert result.version == 3
        load_on_server(server.grpc_url, "detector", repo=server.cfg.repo)
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(outcomes) > 5 and not errors, errors[:3]
    assert client.get_model_metadata("detector", as_json=True)["versions"] == ["3"]
    remote = TritonDetector(server.grpc_url).infer_raw([blob], THRESHOLD)
    local = LocalDetector(onnx_models[1]).infer_raw([blob], THRESHOLD)
    np.testing.assert_allclose(remote["scores"], local["scores"], rtol=1e-4, atol=1e-4)


def test_detector_runs_openvino_when_its_config_says_so(tmp_path, photos, onnx_models):
    """The detector's `runtime` parameter: the same ensemble served by OpenVINO (f32) gives the in-process
    OpenVINO results, and its load log states runtime and precision."""
    if subprocess.run([str(INSTALL.venv / "bin" / "python"), "-c", "import openvino"], capture_output=True).returncode:
        pytest.skip("openvino is not installed in the serving venv; `make serve-venv` installs it")
    repo = copy_repo(tmp_path / "repo")
    variant = repo / "detector" / "configs" / "python.pbtxt"
    text = variant.read_text()
    for key, value in (("runtime", "openvino"), ("precision", "f32")):
        old = next(line for line in text.splitlines() if f'key: "{key}"' in line)
        text = text.replace(old, f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    variant.write_text(text)
    publish(onnx_models[0], repo)
    cfg = ServerConfig(repo=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    log = tmp_path / "triton.log"
    srv = TritonServer(cfg, INSTALL, log_path=log)
    srv.start()
    try:
        srv.wait_ready(timeout=180)
        blobs = [photos["astronaut"], photos["chelsea"]]
        remote = TritonDetector(srv.grpc_url).infer_raw(blobs, THRESHOLD)
    finally:
        srv.stop()
    local = LocalDetector(onnx_models[0], runtime="openvino", precision="f32").infer_raw(blobs, THRESHOLD)
    assert remote["count"].ravel().tolist() == local["count"].ravel().tolist() and remote["count"].min() > 0
    for name in ("boxes", "scores", "gender", "age"):
        np.testing.assert_allclose(remote[name], local[name], rtol=1e-4, atol=1e-3, err_msg=name)
    assert "openvino, FP32 graph, inference precision f32 (asked)" in log.read_text()
