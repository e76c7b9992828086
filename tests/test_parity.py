"""ONNX vs PyTorch parity (model/parity.py): ties on degenerate heatmaps pass on any CPU, real graph errors fail."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import randomize_batchnorm

from model import ModelConfig, build_model
from model.export import OnnxValidationError, export_onnx, export_wrapper
from model.parity import PARITY_TOLERANCE, match_detections, parity, parity_failures

SMALL = ModelConfig(widths=[8, 16, 24, 32, 48], depths=[1, 2, 1, 1, 2], neck_width=16, head_width=16,
                    head_convs=1, scene_size=64, crop_size=32, top_k=20)
IMAGES = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def _model(heatmap_scale: float | None = None, heatmap_bias: float = -2.0):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(SMALL).eval())
    if heatmap_scale is not None:  # a (near-)flat heatmap: every cell ties with its neighbours
        with torch.no_grad():
            model.detection.heatmap.weight.mul_(heatmap_scale)
            model.detection.heatmap.bias.fill_(heatmap_bias)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _model()
    path = tmp_path_factory.mktemp("parity") / "scene.onnx"
    export_onnx(model, path, "scene", 64, images=IMAGES)
    return path, export_wrapper(model, "scene")


@pytest.mark.parametrize("scale", [0.0, 1e-4, 1e-6], ids=["constant", "near-constant", "almost-constant"])
def test_degenerate_heatmap_exports_with_parity(scale, tmp_path):
    """Full-size model too: the case that failed on AMD EPYC (boxes 96 px off from a shifted top-K list)."""
    for model, size in ((_model(scale), 64), (_flat_full_model(scale), 320)):
        images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        report = export_onnx(model, tmp_path / f"flat{size}.onnx", "scene", size, images=images)
        assert report["unmatched"] == 0 and report["kept"] > 0
        assert report["boxes_px"] <= PARITY_TOLERANCE["boxes_px"] and report["heads_detection"] <= PARITY_TOLERANCE["heads_detection"]


def _flat_full_model(scale: float):
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    with torch.no_grad():
        model.detection.heatmap.weight.mul_(scale)
        model.detection.heatmap.bias.fill_(-2.0)
    return model


def _dense(scores: np.ndarray) -> dict[str, np.ndarray]:
    """A one-image dense decode over a 1xN row of cells: cell c's box is [8c, 0, 8c+8, 8]."""
    cells = scores.size
    boxes = np.stack([np.arange(cells) * 8.0, np.zeros(cells), np.arange(cells) * 8.0 + 8, np.full(cells, 8.0)], 1)
    heat = torch.tensor(scores, dtype=torch.float32).reshape(1, 1, 1, cells)
    around = torch.nn.functional.max_pool2d(heat, 3, 1, 1).reshape(1, cells).numpy()
    from model.parity import _neighbour_max

    return {"scores": scores[None].astype(np.float32), "around": around,
            "neighbours": _neighbour_max(heat).reshape(1, cells).numpy(), "boxes": boxes[None].astype(np.float32),
            "gender": np.full((1, cells), 0.5, np.float32), "age": np.full((1, cells), 30.0, np.float32)}


def _rows(dense: dict, cells: list[int], score_shift: float = 0.0, box_shift: float = 0.0) -> dict:
    return {"scores": dense["scores"][:, cells] + score_shift, "boxes": dense["boxes"][:, cells] + box_shift,
            "gender": dense["gender"][:, cells], "age": dense["age"][:, cells]}


def test_a_tie_may_go_either_way():
    # cells 1 and 2 tie within 1e-7: PyTorch calls cell 2 the peak, the ONNX side (another CPU) cell 1
    dense = _dense(np.array([0.1, 0.5, 0.5000001, 0.1, 0.9, 0.2]))
    report = match_detections(dense, _rows(dense, [4, 1]), tie=1e-4)
    assert report["unmatched"] == 0 and report["boxes_px"] == 0 and report["kept"] == 2


def test_a_clear_peak_missing_or_invented_fails():
    dense = _dense(np.array([0.1, 0.5, 0.2, 0.1, 0.9, 0.2]))
    rows = _rows(dense, [4, 4])
    rows["scores"][0, 1] = 0.0  # K = 2 rows, the second a zero-score filler: the clear peak at cell 1 is gone
    missing = match_detections(dense, rows, tie=1e-4)
    assert missing["unmatched"] == 1 and "cell 1" in missing["unmatched_examples"][0]
    invented = match_detections(dense, _rows(dense, [4, 1, 3]), tie=1e-4)  # cell 3 is below its neighbour 4
    assert invented["unmatched"] >= 1 and any("no PyTorch peak" in e for e in invented["unmatched_examples"])
    assert any("on one side only" in line for line in parity_failures(missing))


def test_shifted_scores_or_boxes_fail():
    dense = _dense(np.array([0.1, 0.5, 0.2, 0.1, 0.9, 0.2]))
    assert parity_failures(match_detections(dense, _rows(dense, [4, 1], box_shift=3.0)))
    assert match_detections(dense, _rows(dense, [4, 1], score_shift=0.01))["unmatched"] >= 2


def _break(path, tmp_path, edit) -> str:
    proto = onnx.load(str(path))
    edit(proto)
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    return str(broken)


def test_a_broken_head_conv_fails(exported, tmp_path):
    path, wrapper = exported

    def shift_offset_bias(proto):  # the offset head's bias moved by half a cell: a wrong graph, not rounding
        conv = next(n for n in proto.graph.node if n.name.endswith("/offset/Conv"))
        bias = next(t for t in proto.graph.initializer if t.name == conv.input[2])
        values = onnx.numpy_helper.to_array(bias) + 0.5
        bias.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), bias.name))

    failed = parity_failures(parity(_break(path, tmp_path, shift_offset_bias), wrapper, IMAGES, "scene"))
    assert any(line.startswith("heads_detection") for line in failed) and any(line.startswith("boxes_px") for line in failed)


def test_a_broken_decode_tail_fails(exported, tmp_path):
    path, wrapper = exported

    def scale_boxes(proto):  # boxes * 1.05 after the decode: the heads agree, the detections do not
        producer = next(n for n in proto.graph.node if "boxes" in n.output)
        producer.output[list(producer.output).index("boxes")] = "boxes_before"
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.05, np.float32), "five_percent"))
        proto.graph.node.append(onnx.helper.make_node("Mul", ["boxes_before", "five_percent"], ["boxes"]))

    report = parity(_break(path, tmp_path, scale_boxes), wrapper, IMAGES, "scene")
    assert report["heads_detection"] <= PARITY_TOLERANCE["heads_detection"]
    assert any(line.startswith("boxes_px") for line in parity_failures(report))


def test_export_raises_on_a_graph_without_named_heads(tmp_path):
    """A graph whose head convs cannot be found is an error that says so, not a silent pass."""
    from model.parity import head_tensor_names

    with pytest.raises(OnnxValidationError, match="head convs"):
        head_tensor_names(onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], [])))


def test_a_broken_attribute_decision_fails(tmp_path):
    """The scene graph runs the attribute decision at its peaks only: a wrong decision weight leaves every raw
    head and pooled feature equal and must still fail, through the decoded gender and age."""
    model = _model(heatmap_scale=1.0, heatmap_bias=0.0)  # scores near 0.5: detections kept, attributes compared
    path = tmp_path / "scene.onnx"
    export_onnx(model, path, "scene", 64, images=IMAGES)
    wrapper = export_wrapper(model, "scene")

    def scale_decision(proto):
        weight = next(t for t in proto.graph.initializer if t.name.endswith("attributes.decision.weight"))
        values = onnx.numpy_helper.to_array(weight) * 1.5
        weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))

    report = parity(_break(path, tmp_path, scale_decision), wrapper, IMAGES, "scene")
    assert report["heads_attributes"] <= PARITY_TOLERANCE["heads_attributes"] and report["kept"] > 0
    failed = parity_failures(report)
    assert any(line.startswith(("gender", "age_years")) for line in failed), failed


def test_scene_graph_decides_attributes_at_the_peaks_only(exported):
    """The 1 + 101 attribute logits are computed for the K rows, not for every cell of the map."""
    from model.onnx_run import ort_session, run_onnx

    path, _ = exported
    proto = onnx.load(str(path))
    weight = next(t for t in proto.graph.initializer if t.name.endswith("attributes.decision.weight"))
    decision = [n for n in proto.graph.node if weight.name in n.input]
    assert len(decision) == 1 and decision[0].op_type == "Conv"
    proto.graph.output.append(onnx.helper.make_tensor_value_info(decision[0].output[0], onnx.TensorProto.FLOAT, None))
    logits = run_onnx(ort_session(proto.SerializeToString()), IMAGES)[decision[0].output[0]]
    assert logits.shape == (2, 1 + 101, SMALL.top_k, 1)  # not (2, 102, 8, 8): one column per top-K row
