"""`mouaadnet web`'s server without a browser: what it serves, with which headers, and what it refuses."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mouaadnet.apps.models import ModelError, default_model, describe_model, shipped_model
from mouaadnet.apps.web import ISOLATION_HEADERS, WEB_DIR, WebServer, WebSetupError, WebSite
from mouaadnet.data.samples import sample_images

ROOT = Path(__file__).resolve().parents[1]
needs_ort_web = pytest.mark.skipif(not (WEB_DIR / "node_modules/onnxruntime-web/dist").is_dir(),
                                   reason="web/node_modules missing: `npm ci` in web/ (make test does it)")


def _get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def server(standin):
    with WebServer(WebSite.build([standin["scene"]]), 0) as running:
        yield running


@needs_ort_web
def test_every_response_is_cross_origin_isolated(server):
    for path in ("", "index.html", "js/app.js", "ort/ort.wasm.min.mjs", "api/config", "no-such-file"):
        _, headers, _ = _get(server.url + path)
        for key, value in ISOLATION_HEADERS.items():
            assert headers.get(key) == value, (path, key)


@needs_ort_web
def test_serves_page_runtime_model_and_samples_with_their_types(server, standin):
    status, headers, body = _get(server.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"importmap" in body
    status, headers, _ = _get(server.url + "js/preprocess.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")  # ES modules need a JS type
    wasm = sorted(p.name for p in (WEB_DIR / "node_modules/onnxruntime-web/dist").glob("*.wasm"))
    status, headers, body = _get(server.url + "ort/" + wasm[0])
    assert status == 200 and headers["Content-Type"] == "application/wasm" and body[:4] == b"\0asm"
    config = json.loads(_get(server.url + "api/config")[2])
    [model] = config["models"]
    assert model["sha256"] == hashlib.sha256(standin["scene"].read_bytes()).hexdigest()
    assert model["mode"] == "scene" and model["input_size"] == 320 and model["precision"] == "fp32"
    status, _, body = _get(server.url + model["url"])
    assert status == 200 and hashlib.sha256(body).hexdigest() == model["sha256"]
    for sample in config["samples"]:
        assert _get(server.url + sample["url"])[0] == 200
    assert {s["name"] for s in config["samples"]} == set(sample_images())


@needs_ort_web
@pytest.mark.parametrize("path", ["../pyproject.toml", "%2e%2e/pyproject.toml", "js/../../pyproject.toml",
                                  "package.json", "package-lock.json", "node_modules/onnxruntime-web/package.json",
                                  "ort/../package.json", "ort/ort.wasm.min.mjs/../../../../pyproject.toml",
                                  "models/../scene.onnx", "samples/../../../etc/passwd", ".gitignore", "js/"])
def test_nothing_outside_the_served_files(server, path):
    assert _get(server.url + path)[0] == 404


@needs_ort_web
def test_post_is_refused(server):
    request = urllib.request.Request(server.url + "api/config", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 405


def test_binds_loopback_only(standin):
    if not (WEB_DIR / "node_modules/onnxruntime-web/dist").is_dir():
        pytest.skip("web/node_modules missing")
    server = WebServer(WebSite.build([standin["scene"]]), 0)
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
    finally:
        server.httpd.server_close()


def test_refuses_crop_models_and_garbage(tmp_path, standin):
    with pytest.raises(ModelError, match="crop-mode model; a scene-mode export is needed"):
        describe_model(standin["crop"], "scene")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        describe_model(bad)
    with pytest.raises(ModelError, match="no such model file"):
        describe_model(tmp_path / "missing.onnx")


def test_missing_page_or_runtime_says_what_to_run(tmp_path, standin):
    with pytest.raises(WebSetupError, match="index.html not found"):
        WebSite.build([standin["scene"]], tmp_path)
    (tmp_path / "index.html").write_text("<!doctype html>")
    with pytest.raises(WebSetupError, match="npm ci"):
        WebSite.build([standin["scene"]], tmp_path)


def test_shipped_weights_found_by_manifest(tmp_path, standin):
    import json
    import shutil

    from model.artifacts import write_sidecar

    assert shipped_model("scene", "fp32", tmp_path) is None
    names = {}
    for mode in ("scene", "crop"):
        names[mode] = f"any_name_{mode}.onnx"  # the manifest says what each file is
        shutil.copy(standin[mode], tmp_path / names[mode])
        write_sidecar(tmp_path / names[mode], "fp32")
    (tmp_path / "ckpt.pt").write_bytes(b"x")
    write_sidecar(tmp_path / "ckpt.pt", "fp32")
    models = {m: {"fp32": names[m], "default": "fp32"} for m in names}
    (tmp_path / "manifest.json").write_text(json.dumps({"checkpoint": "ckpt.pt", "models": models}))
    assert shipped_model("scene", "fp32", tmp_path) == tmp_path / names["scene"]
    assert shipped_model("crop", None, tmp_path) == tmp_path / names["crop"]
    assert shipped_model("crop", "int8", tmp_path) is None  # not shipped in INT8


def test_default_model_says_when_it_falls_back(monkeypatch, tmp_path, standin):
    import mouaadnet.apps.models as models

    monkeypatch.setenv("MOUAADNET_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(models, "standin_models", lambda *a, **k: standin)
    said = []
    assert default_model("scene", echo=said.append) == standin["scene"]
    assert "RANDOM stand-in" in said[0] and "--model" in said[0]


@needs_ort_web
def test_cli_web_refuses_a_crop_model(standin):
    done = subprocess.run([sys.executable, "-m", "mouaadnet.cli", "web", "--model", str(standin["crop"]),
                           "--port", "0"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "crop-mode model" in done.stderr
