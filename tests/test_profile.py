"""`mouaadnet profile`: per-layer profiles of the scene graph in ONNX Runtime and OpenVINO, and the layer costs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize_batchnorm
from test_export import SMALL
from typer.testing import CliRunner

from model import build_model
from model.export import export_onnx

pytestmark = pytest.mark.openvino
pytest.importorskip("openvino", reason="openvino is not installed: pip install 'mouaadnet-ultra[openvino]'",
                    exc_type=ImportError)


@pytest.fixture(scope="module")
def scene_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("profile") / "scene.onnx"
    export_onnx(randomize_batchnorm(build_model(SMALL).eval()), path, "scene", 64)
    return path


def test_layer_costs_count_conv_flops(scene_onnx):
    import onnx

    from mouaadnet.bench.profile import layer_costs

    costs = layer_costs(scene_onnx)
    stem = costs["/model/backbone/stage1/stage1.0/conv/Conv"]
    # 3x3 conv, 3 -> 8 channels, stride 2 on 64x64: 32*32*8 outputs x 27 multiply-adds x 2
    assert stem["kind"] == "dense 3x3" and stem["flops"] == 2 * 32 * 32 * 8 * 27
    kinds = {c["kind"] for c in costs.values()}
    assert {"depthwise", "pointwise 1x1"} <= kinds
    assert all(c["bytes"] > 0 for c in costs.values() if c["flops"])
    nodes = {n.name for n in onnx.load(str(scene_onnx)).graph.node}
    assert set(costs) == nodes


def test_layer_costs_of_the_peer_match_yolov8n(tmp_path):
    from mouaadnet.bench.peers import export_yolov8n_like
    from mouaadnet.bench.profile import layer_costs

    path = export_yolov8n_like(tmp_path / "peer.onnx", 64)  # not simplified: its shapes need onnxslim first
    flops = sum(c["flops"] for c in layer_costs(path).values() if c["op"] == "Conv")
    # published YOLOv8n: 8.7 GFLOPs at 640 -> 2.186 G at 320 (measured on our export) -> /25 at 64
    assert flops == 2_185_728_000 // 25


def test_profile_command_reports_both_runtimes(scene_onnx, tmp_path):
    from mouaadnet.cli.main import app

    res = CliRunner().invoke(app, ["profile", "--onnx", str(scene_onnx), "--size", "64", "--runs", "3", "--no-int8",
                                   "--top", "5", "--json", str(tmp_path / "p.json"), "--out", str(tmp_path / "p.md")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "p.json").read_text())
    assert set(data["profiles"]) == {"ort fp32", "openvino f32", "openvino bf16"}
    for name, summary in data["profiles"].items():
        assert summary["total_us"] > 0 and sum(summary["by_op"].values()) == pytest.approx(summary["total_us"])
        assert "attribute head (attention pooling)" in summary["by_block"], name
        convs = [lay for lay in summary["layers"] if lay["flops"] > 0]
        assert convs and all(lay["bound"] in ("compute", "memory") for lay in summary["layers"])
        assert any(lay["kind"] == "depthwise" for lay in convs), name
    ov = data["profiles"]["openvino bf16"]["layers"]
    assert all(lay["exec"] for lay in ov)  # OpenVINO names the kernel of every executed layer
    text = (tmp_path / "p.md").read_text()
    assert "#### ort fp32" in text and "| op type | ms | share |" in text and "load average" in text
    assert CliRunner().invoke(app, ["profile"]).exit_code == 2
