"""ONNX export: documented I/O contract, parity with PyTorch, validator, INT8 PTQ, sidecars, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import randomize_batchnorm
from PIL import Image
from typer.testing import CliRunner

from model import ModelConfig, build_model, reparameterize_model
from model.artifacts import read_sidecar, write_sidecar
from model.export import (
    PARITY_TOLERANCE,
    OnnxValidationError,
    count_qdq,
    export_onnx,
    quantize_int8,
    run_onnx,
    validate_onnx,
)
from model.parity import dense_decode, match_detections
from mouaadnet.data.letterbox import load_images

SMALL = ModelConfig(widths=[8, 16, 24, 32, 48], depths=[1, 2, 1, 1, 2], neck_width=16, head_width=16,
                    head_convs=1, scene_size=64, crop_size=32, top_k=20)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return randomize_batchnorm(build_model(SMALL).eval())


@pytest.fixture(scope="module")
def scene_onnx(small_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "scene.onnx"
    report = export_onnx(small_model, path, "scene", 64)
    return path, report


def test_scene_outputs_names_dtypes_shapes(scene_onnx):
    path, report = scene_onnx
    proto = validate_onnx(path, "scene")
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "gender", "age"]
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    out = run_onnx(path, torch.rand(3, 3, 64, 64))  # dynamic batch: exported with batch 1
    assert {k: (v.dtype, v.shape) for k, v in out.items()} == {
        "boxes": (np.float32, (3, 20, 4)), "scores": (np.float32, (3, 20)),
        "gender": (np.float32, (3, 20)), "age": (np.float32, (3, 20))}
    assert ((out["gender"] >= 0) & (out["gender"] <= 1)).all() and ((out["age"] >= 0) & (out["age"] <= 100)).all()
    assert report["scores"] <= 1e-4 and report["boxes_px"] <= 0.5 and report["matched"] > 0


def test_scene_parity_with_pytorch_decode(small_model, scene_onnx):
    """On fresh images: every ONNX detection is a PyTorch peak with its score and box (ties may go either way:
    model/parity.py), and the clear PyTorch peaks are all there."""
    path, _ = scene_onnx
    x = torch.rand(2, 3, 64, 64)
    deploy = reparameterize_model(small_model)
    with torch.no_grad():
        heads = deploy(x)
    report = match_detections(dense_decode(heads), run_onnx(path, x))
    assert report["unmatched"] == 0 and report["matched"] > 0
    assert report["scores"] <= PARITY_TOLERANCE["scores"] and report["boxes_px"] <= PARITY_TOLERANCE["boxes_px"]


def test_crop_outputs(small_model, tmp_path):
    path = tmp_path / "crop.onnx"
    report = export_onnx(small_model, path, "crop", 32)
    assert report["gender"] <= PARITY_TOLERANCE["gender"] and report["age_years"] <= PARITY_TOLERANCE["age_years"]
    out = run_onnx(path, torch.rand(5, 3, 32, 32))
    assert list(out) == ["gender", "age"]
    assert all(v.dtype == np.float32 and v.shape == (5,) for v in out.values())


def test_truncated_and_corrupt_files_rejected(scene_onnx, tmp_path):
    path, _ = scene_onnx
    data = path.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" + bytes(range(256)) * 8)
    for bad in (truncated, corrupt, tmp_path / "missing.onnx"):
        with pytest.raises(OnnxValidationError, match=bad.name):
            validate_onnx(bad)


def test_int8_ptq_qdq_runs_and_is_small(scene_onnx, tmp_path):
    path, _ = scene_onnx
    calib = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    int8 = quantize_int8(path, tmp_path / "scene.int8.onnx", calib)
    counts = count_qdq(int8)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    assert int8.stat().st_size < path.stat().st_size  # tiny model: graph overhead dominates; full model 0.78 vs 2.2 MB
    out = run_onnx(int8, calib[:2])
    assert out["boxes"].shape == (2, 20, 4) and np.isfinite(out["scores"]).all()
    # the decode tail stays float: TopK, Exp and Softmax are not wrapped in Q/DQ
    import onnx

    proto = onnx.load(str(int8))
    producers = {o: n for n in proto.graph.node for o in n.output}
    for node in proto.graph.node:
        if node.op_type in ("TopK", "Exp", "Softmax"):
            assert producers[node.input[0]].op_type != "DequantizeLinear", node.name
    # the head's last convs (logits the decode reads) stay float; the body's other convs read INT8 weights
    tail = {n.name for n in proto.graph.node if n.op_type == "Conv"
            and n.name.rsplit("/", 2)[-2] in ("heatmap", "size", "offset", "decision")}
    assert len(tail) == 4  # the attribute logits reach the decode through a Slice, and count too
    for node in proto.graph.node:
        if node.op_type == "Conv" and node.name.startswith("/model/"):
            weight_from = producers.get(node.input[1])
            quantized = weight_from is not None and weight_from.op_type == "DequantizeLinear"
            stem = node.input[0] == "images"  # the first conv stays FP32 too (float_stem)
            assert quantized == (node.name not in tail and not stem), node.name


def test_sidecar_roundtrip(scene_onnx, tmp_path):
    path, report = scene_onnx
    side = write_sidecar(path, "fp32", metrics={"parity": report})
    data = json.loads(side.read_text())
    assert data["outputs"][0] == {"name": "boxes", "dtype": "float32", "shape": ["batch", 20, 4]}
    assert read_sidecar(path)["sha256"] == data["sha256"] and len(data["sha256"]) == 64


def test_cli_reparam_and_export(small_model, tmp_path):
    from mouaadnet.cli.main import app

    ckpt = tmp_path / "train.pt"
    torch.save({"model": small_model.state_dict(), "model_config": SMALL.model_dump()}, ckpt)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 80, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    assert load_images(sorted(imgs.iterdir()), 64).shape == (3, 3, 64, 64)
    runner = CliRunner()
    res = runner.invoke(app, ["reparam", str(ckpt), "--out", str(tmp_path / "deploy.pt"), "--images", str(imgs)])
    assert res.exit_code == 0, res.output
    assert "max abs diff" in res.output and (tmp_path / "deploy.pt.json").is_file()
    res = runner.invoke(app, ["export", str(tmp_path / "deploy.pt"), "--out", str(tmp_path / "m.onnx"),
                              "--int8", "calib", "--images", str(imgs)])
    assert res.exit_code == 0, res.output
    side = read_sidecar(tmp_path / "m.onnx")
    assert side["precision"] == "int8-calib-u8" and side["metrics"]["QuantizeLinear"] > 0
    assert read_sidecar(tmp_path / "m.fp32.onnx")["source"]["path"] == str(tmp_path / "deploy.pt")
