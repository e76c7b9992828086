"""Arch v2 (issue 21): dense ltrb box targets, Fast NMS in the decode, ONNX parity, and v1 left as it was."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import randomize_batchnorm

from model import ModelConfig, build_model
from model.config import V2_NMS_IOU, ConfigError, parse_config
from model.decode import box_from_ltrb, cell_anchor, decode_scene, fast_nms
from model.export import export_onnx, export_wrapper, ort_session, run_onnx
from model.losses import MultiTaskLoss, dense_box_targets, encode_ltrb, scene_targets
from model.parity import match_detections

ROOT = Path(__file__).resolve().parents[1]
SMALL_V2 = ModelConfig(arch="v2", widths=[8, 16, 24, 32, 48], depths=[1, 2, 1, 1, 2], neck_width=16, head_width=16,
                       head_convs=1, scene_size=64, crop_size=32, top_k=20)
STRIDE, H, W = 8, 40, 40  # a 320x320 input
BIG, SMALL_PERSON = [40.0, 20.0, 200.0, 300.0], [100.0, 60.0, 150.0, 180.0]  # the small one stands inside the big


def _anchors() -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    return cell_anchor(xs.flatten(), STRIDE), cell_anchor(ys.flatten(), STRIDE)


def _core_cells(box: list[float]) -> set[int]:
    """Cells of a box's TTFNet core whose centre lies inside the box, plus its centre cell: written out by hand."""
    x1, y1, x2, y2 = box
    cx, cy = math.floor((x1 + x2) / 2 / STRIDE), math.floor((y1 + y2) / 2 / STRIDE)
    rx, ry = 0.54 * (x2 - x1) / STRIDE / 2, 0.54 * (y2 - y1) / STRIDE / 2
    cells = {cy * W + cx}
    for y in range(H):
        for x in range(W):
            ax, ay = (x + 0.5) * STRIDE, (y + 0.5) * STRIDE
            if abs(x - cx) <= rx and abs(y - cy) <= ry and x1 < ax < x2 and y1 < ay < y2:
                cells.add(y * W + x)
    return cells


def test_arch_and_nms_defaults():
    assert ModelConfig().arch == "v1" and ModelConfig().nms_threshold() == 0.0  # v1 outputs stay as shipped
    assert ModelConfig(arch="v2").nms_threshold() == V2_NMS_IOU
    assert ModelConfig(arch="v2", nms_iou=0.0).nms_threshold() == 0.0
    assert ModelConfig(nms_iou=0.5).nms_threshold() == 0.5
    with pytest.raises(ConfigError, match="arch"):
        parse_config(ModelConfig, {"arch": "v3"}, "test")
    with pytest.raises(ConfigError, match="nms_iou"):
        parse_config(ModelConfig, {"nms_iou": 1.5}, "test")


def test_dense_targets_of_two_overlapping_people_decode_exactly():
    boxes = torch.tensor([[BIG, SMALL_PERSON]])
    target = dense_box_targets(boxes, torch.tensor([[True, True]]), H, W, STRIDE)
    positive = set(torch.nonzero(target["weight"][0] > 0).flatten().tolist())
    big, small = _core_cells(BIG), _core_cells(SMALL_PERSON)
    assert positive == big | small and big & small and big - small  # the small core lies in the big one
    ax, ay = _anchors()
    decoded = box_from_ltrb(ax, ay, encode_ltrb(target["boxes"], H, W, STRIDE).reshape(4, -1).T, STRIDE)
    for cell in positive:  # the smaller person owns the shared cells (FCOS's rule)
        expected = SMALL_PERSON if cell in small else BIG
        assert torch.allclose(decoded[cell], torch.tensor(expected), atol=1e-3), (cell, decoded[cell], expected)
    # each person's cells weigh log(area) in all (TTFNet's per-person normalisation)
    weight = target["weight"][0]
    assert float(weight[list(small)].sum()) == pytest.approx(math.log(50 * 120), rel=1e-4)
    assert float(weight[list(big - small)].sum()) == pytest.approx(math.log(160 * 280), rel=1e-4)


def _v2_outputs(boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Head tensors that are exactly the training targets of ``boxes`` [1,M,4]: Gaussian heatmap, encoded ltrb."""
    valid = torch.ones(boxes.shape[:2], dtype=torch.bool)
    batch = {"boxes": boxes, "box_mask": valid, "has_boxes": torch.tensor([True])}
    heat = scene_targets(batch, H, W, STRIDE)["heatmap"].clamp(1e-4, 1 - 1e-4)
    ltrb = encode_ltrb(dense_box_targets(boxes, valid, H, W, STRIDE)["boxes"], H, W, STRIDE)
    return {"heatmap": torch.logit(heat), "ltrb": ltrb, "gender": torch.zeros(1, 1, H, W),
            "age": torch.zeros(1, 101, H, W)}


def test_the_targets_decode_to_the_two_people_and_the_loss_is_zero_there():
    boxes = torch.tensor([[BIG, SMALL_PERSON]])
    outputs = _v2_outputs(boxes)
    decoded = decode_scene(outputs, k=10, nms_iou=V2_NMS_IOU)
    keep = decoded["scores"][0] > 0.5
    assert int(keep.sum()) == 2
    found = sorted(decoded["boxes"][0][keep].tolist(), key=lambda b: b[2] - b[0])
    assert np.allclose(found, [SMALL_PERSON, BIG], atol=1e-3)
    batch = {"boxes": boxes, "box_mask": torch.ones(1, 2, dtype=torch.bool), "has_boxes": torch.tensor([True]),
             "gender": torch.full((1, 2), -1.0), "age": torch.full((1, 2), -1.0),
             "age_group": torch.full((1, 2), -1, dtype=torch.long)}
    _, terms = MultiTaskLoss()(outputs, batch)
    assert "offset" not in terms and float(terms["box"]) < 1e-4


def test_a_plateau_decodes_to_one_box_after_nms():
    # a 3x3 plateau of equal scores around one person: every cell of it is a 3x3 max, so top-K returns 9 peaks
    boxes = torch.tensor([[[96.0, 64.0, 224.0, 288.0]]])
    outputs = _v2_outputs(boxes)
    heat = torch.full((1, 1, H, W), -8.0)
    heat[..., 20:23, 19:22] = 2.0
    outputs["heatmap"] = heat
    without = decode_scene(outputs, k=20)
    assert int((without["scores"][0] > 0.5).sum()) == 9
    with_nms = decode_scene(outputs, k=20, nms_iou=V2_NMS_IOU)
    keep = with_nms["scores"][0] > 0.5
    assert int(keep.sum()) == 1
    assert with_nms["scores"][0, 0] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    assert torch.all(with_nms["scores"][0, 1:] <= with_nms["scores"][0, :-1])  # still sorted
    iou_with_person = _iou(with_nms["boxes"][0, 0], boxes[0, 0])
    assert iou_with_person > 0.8  # a plateau cell off the centre still has a trained box


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    iw = (torch.min(a[2], b[2]) - torch.max(a[0], b[0])).clamp(min=0)
    ih = (torch.min(a[3], b[3]) - torch.max(a[1], b[1])).clamp(min=0)
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def test_fast_nms_keeps_separate_people_and_drops_duplicates():
    rows = {"boxes": torch.tensor([[[0.0, 0, 10, 20], [1, 0, 11, 20], [50, 0, 60, 20], [0, 0, 10, 19]]]),
            "scores": torch.tensor([[0.9, 0.8, 0.7, 0.6]]), "gender": torch.tensor([[0.1, 0.2, 0.3, 0.4]]),
            "age": torch.tensor([[10.0, 20, 30, 40]])}
    out = fast_nms(rows, 0.6)
    assert out["scores"][0].tolist() == pytest.approx([0.9, 0.7, 0.0, 0.0])
    assert out["gender"][0, :2].tolist() == pytest.approx([0.1, 0.3]) and out["age"][0, :2].tolist() == [10.0, 30.0]
    assert out["boxes"][0, 1].tolist() == [50.0, 0, 60, 20]


def _dense_row(scores: list[float], boxes: list[list[float]]) -> dict[str, np.ndarray]:
    n = len(scores)
    s = np.array(scores, np.float32)[None]
    return {"scores": s, "around": s.copy(), "neighbours": s - 1.0, "boxes": np.array(boxes, np.float32)[None],
            "gender": np.full((1, n), 0.5, np.float32), "age": np.full((1, n), 30.0, np.float32)}


def test_parity_excuses_a_peak_that_nms_drops_but_not_one_it_keeps():
    dense = _dense_row([0.9, 0.8, 0.7], [[0, 0, 10, 20], [1, 0, 11, 20], [50, 0, 60, 20]])
    got = {name: dense[name][:, [0, 2]] for name in ("scores", "boxes", "gender", "age")}  # cell 1 was suppressed
    assert match_detections(dense, got, nms_iou=0.6)["unmatched"] == 0
    assert match_detections(dense, got, nms_iou=0.0)["unmatched"] == 1  # without NMS it is a real miss
    got = {name: dense[name][:, [0, 1, 1]] for name in ("scores", "boxes", "gender", "age")}
    got["scores"][0, 2] = 0.0  # K = 3, cell 2 lost (a zero-score row): NMS cannot explain it
    assert match_detections(dense, got, nms_iou=0.6)["unmatched"] == 1


@pytest.mark.parametrize("plateau", [False, True], ids=["random", "plateau"])
def test_v2_onnx_parity_with_nms_in_the_graph(plateau, tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(SMALL_V2).eval())
    with torch.no_grad():  # boxes 32 cells wide: peaks two cells apart overlap by IoU ~0.9, NMS must act
        model.detection.ltrb.bias.fill_(math.log(16.0))
        if plateau:  # a flat heatmap: every cell is a peak
            model.detection.heatmap.weight.zero_()
            model.detection.heatmap.bias.fill_(-1.0)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    path = tmp_path / "v2.onnx"
    report = export_onnx(model, path, "scene", 64, images=images)
    assert report["unmatched"] == 0 and report["matched"] > 0
    proto = onnx.load(str(path))
    assert "NonMaxSuppression" not in {n.op_type for n in proto.graph.node}  # plain ops only
    got = run_onnx(ort_session(str(path)), images)
    assert got["boxes"].shape == (2, SMALL_V2.top_k, 4) and got["scores"].shape == (2, SMALL_V2.top_k)
    with torch.no_grad():
        ref = export_wrapper(model, "scene")(images)[1].numpy()
        raw = decode_scene(model(images), SMALL_V2.top_k)["scores"].numpy()
    kept = (got["scores"] > 0).sum(1)
    assert np.array_equal(kept, (ref > 0).sum(1)) and np.all(kept < (raw > 0).sum(1))  # NMS ran in the graph


@pytest.mark.openvino
def test_v2_graph_with_nms_runs_in_openvino_as_in_onnxruntime(tmp_path):
    """The NMS is plain ops (no NonMaxSuppression): OpenVINO runs the same graph and keeps the same boxes."""
    pytest.importorskip("openvino", reason="openvino is not installed: pip install 'mouaadnet-ultra[openvino]'")
    from mouaadnet.runtime import open_model

    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(SMALL_V2).eval())
    with torch.no_grad():
        model.detection.ltrb.bias.fill_(math.log(16.0))  # overlapping boxes: NMS has work to do
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    path = tmp_path / "v2.onnx"
    export_onnx(model, path, "scene", 64, images=images)
    x = images.numpy()
    ort, ov = open_model(path, "onnxruntime", threads=1)(x), open_model(path, "openvino", "f32", threads=1)(x)
    for i in range(len(x)):
        keep_ort, keep_ov = ort["scores"][i] > 0, ov["scores"][i] > 0
        assert SMALL_V2.top_k > keep_ort.sum() == keep_ov.sum() > 0  # NMS dropped some of the top-K
        np.testing.assert_allclose(np.sort(ov["scores"][i][keep_ov]), np.sort(ort["scores"][i][keep_ort]), atol=1e-4)
        for box in ov["boxes"][i][keep_ov]:  # every box OpenVINO keeps, ONNX Runtime keeps too (order may differ)
            assert np.abs(ort["boxes"][i][keep_ort] - box).max(axis=1).min() < 1e-2


def test_shipped_v2_weights_load_and_export_as_shipped(tmp_path):
    from mouaadnet.training.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(ROOT / "weights" / "mouaadnet.pt")
    assert model.cfg.arch == "v2" and model.cfg.nms_threshold() == V2_NMS_IOU
    images = torch.rand(2, 3, 320, 320, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "v2.onnx"
    report = export_onnx(model, path, "scene", 320, images=images)
    assert report["unmatched"] == 0
    shipped = run_onnx(ort_session(str(ROOT / "weights" / "mouaadnet.scene.fp32.onnx")), images)
    fresh = run_onnx(ort_session(str(path)), images)
    for name in ("boxes", "scores", "gender", "age"):  # the same graph function as the shipped file
        assert np.allclose(shipped[name], fresh[name], atol=1e-4), name


def test_v1_checkpoints_still_load_as_v1(tmp_path):
    """v1 (git history, 70c95ce) has no ``arch`` key in its model_config: it must load as v1, without NMS."""
    from mouaadnet.training.checkpoint import model_from_checkpoint

    v1 = ModelConfig(widths=[8, 16, 24, 32, 48], neck_width=16, head_width=16, scene_size=64, crop_size=32)
    saved = {k: v for k, v in v1.model_dump().items() if k not in ("arch", "iou_score")}
    torch.save({"model": build_model(v1).state_dict(), "model_config": saved}, tmp_path / "v1.pt")
    model, _ = model_from_checkpoint(tmp_path / "v1.pt")
    assert model.cfg.arch == "v1" and model.cfg.nms_threshold() == 0.0 and "size" in model(torch.rand(1, 3, 64, 64))


def test_evaluation_decodes_like_the_exported_graph():
    """``predict_decoded`` (what ``mouaadnet evaluate`` calls) applies the config's NMS; v1 decodes as before."""
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for cfg in (SMALL_V2, SMALL_V2.model_copy(update={"arch": "v1"})):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        with torch.no_grad():
            raw = model(images)
        expected = decode_scene(raw, cfg.top_k, nms_iou=cfg.nms_threshold())
        got = model.predict_decoded(images)
        assert all(torch.equal(got[name], expected[name]) for name in expected)
        if cfg.arch == "v1":
            assert torch.equal(got["scores"], decode_scene(raw, cfg.top_k)["scores"])


def test_quality_target_scores_each_cell_by_its_own_box():
    from model.losses import LossConfig, quality_focal_parts

    boxes = torch.tensor([[BIG, SMALL_PERSON]])
    batch = {"boxes": boxes, "box_mask": torch.ones(1, 2, dtype=torch.bool), "has_boxes": torch.tensor([True]),
             "gender": torch.full((1, 2), -1.0), "age": torch.full((1, 2), -1.0),
             "age_group": torch.full((1, 2), -1, dtype=torch.long)}
    outputs = _v2_outputs(boxes)  # every core cell regresses its person exactly: quality 1 there
    positive = dense_box_targets(boxes, torch.ones(1, 2, dtype=torch.bool), H, W, STRIDE)["weight"].reshape(1, 1, H, W) > 0
    loss = MultiTaskLoss(LossConfig(heatmap_target="quality"))
    heat = torch.zeros(1, 1, H, W, requires_grad=True)  # P = 0.5 everywhere
    _, terms = loss({**outputs, "heatmap": heat}, batch)
    terms["heatmap"].backward()
    assert (heat.grad[positive] < 0).all() and (heat.grad[~positive] > 0).all()  # up at the cores, down elsewhere
    # a cell whose box is off scores lower: shift one core cell's box by half its width
    ltrb = outputs["ltrb"].clone()
    y, x = divmod(int(torch.nonzero(positive.flatten())[0]), W)
    ltrb[0, 0, y, x] += math.log(1.5)
    heat = torch.zeros(1, 1, H, W, requires_grad=True)
    _, terms = loss({**outputs, "ltrb": ltrb, "heatmap": heat}, batch)
    terms["heatmap"].backward()
    others = positive.clone()
    others[0, 0, y, x] = False
    assert heat.grad[0, 0, y, x] > heat.grad[others].max()  # pushed up less than the cells with exact boxes
    # the loss is ~0 where the score already equals each cell's quality, and it needs arch v2
    exact = torch.logit(positive.float().clamp(1e-6, 1 - 1e-6))
    total, count = quality_focal_parts(exact, positive.float(), positive, torch.tensor([True]))
    assert float(total / count) < 1e-6 and int(count) == int(positive.sum())
    v1_outputs = {"heatmap": heat.detach(), "size": torch.zeros(1, 2, H, W), "offset": torch.zeros(1, 2, H, W),
                  "gender": outputs["gender"], "age": outputs["age"]}
    with pytest.raises(ValueError, match="needs arch v2"):
        loss(v1_outputs, batch)


def test_uniform_cell_weights_spread_each_persons_log_area_evenly():
    boxes = torch.tensor([[BIG]])
    valid = torch.tensor([[True]])
    gauss = dense_box_targets(boxes, valid, H, W, STRIDE)["weight"][0]
    even = dense_box_targets(boxes, valid, H, W, STRIDE, cell_weight="uniform")["weight"][0]
    cells = sorted(_core_cells(BIG))
    assert torch.equal(torch.nonzero(even).flatten(), torch.tensor(cells))  # the same positive cells
    log_area = math.log((BIG[2] - BIG[0]) * (BIG[3] - BIG[1]))
    assert float(even.sum()) == pytest.approx(log_area, rel=1e-5) and float(gauss.sum()) == pytest.approx(log_area, rel=1e-5)
    assert torch.allclose(even[cells], torch.full((len(cells),), log_area / len(cells)))
    centre = math.floor((BIG[1] + BIG[3]) / 2 / STRIDE) * W + math.floor((BIG[0] + BIG[2]) / 2 / STRIDE)
    assert gauss[centre] == gauss.max() and gauss[centre] > even[centre]  # TTFNet: the centre weighs most


def test_iou_branch_needs_v2_and_adds_one_output():
    with pytest.raises(ConfigError, match="iou_score"):
        parse_config(ModelConfig, {"iou_score": 0.5}, "test")  # v1 has no box at every cell
    with pytest.raises(ConfigError, match="iou_score"):
        parse_config(ModelConfig, {"arch": "v2", "iou_score": 1.5}, "test")
    plain = build_model(SMALL_V2).eval()
    model = build_model(SMALL_V2.model_copy(update={"iou_score": 0.5})).eval()
    images = torch.rand(1, 3, 64, 64)
    assert "iou" not in plain(images) and model(images)["iou"].shape == model(images)["heatmap"].shape
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters()) == 16 + 1


def test_iou_branch_moves_the_peak_to_the_cell_with_the_better_box():
    outputs = _v2_outputs(torch.tensor([[BIG]]))
    heat = torch.sigmoid(outputs["heatmap"])
    y, x = divmod(int(heat.flatten().argmax()), W)
    iou = torch.full_like(heat, -4.0)
    iou[0, 0, y, x + 1] = 4.0  # the branch says only the right-hand neighbour's box is good
    ltrb = outputs["ltrb"].clone()
    ltrb[0, :, y, x + 1] += math.log(1.2)  # ... and that box differs from the centre's, so the read is visible
    outputs = {**outputs, "ltrb": ltrb, "iou": iou}
    plain, aware = decode_scene(outputs, 5), decode_scene(outputs, 5, iou_power=0.5)
    centre = box_from_ltrb(cell_anchor(torch.tensor(float(x)), STRIDE), cell_anchor(torch.tensor(float(y)), STRIDE),
                           outputs["ltrb"][0, :, y, x], STRIDE)
    neighbour = box_from_ltrb(cell_anchor(torch.tensor(float(x + 1)), STRIDE),
                              cell_anchor(torch.tensor(float(y)), STRIDE), ltrb[0, :, y, x + 1], STRIDE)
    torch.testing.assert_close(plain["boxes"][0, 0], centre)
    torch.testing.assert_close(aware["boxes"][0, 0], neighbour)
    expected = heat[0, 0, y, x + 1].sqrt() * torch.sigmoid(torch.tensor(4.0)).sqrt()
    torch.testing.assert_close(aware["scores"][0, 0], expected)


def test_iou_branch_learns_each_core_cells_own_iou_without_pushing_the_box():
    from model.losses import LossConfig

    boxes = torch.tensor([[BIG, SMALL_PERSON]])
    batch = {"boxes": boxes, "box_mask": torch.ones(1, 2, dtype=torch.bool), "has_boxes": torch.tensor([True]),
             "gender": torch.full((1, 2), -1.0), "age": torch.full((1, 2), -1.0),
             "age_group": torch.full((1, 2), -1, dtype=torch.long)}
    outputs = _v2_outputs(boxes)  # exact boxes at every core cell: IoU target 1 there
    positive = dense_box_targets(boxes, torch.ones(1, 2, dtype=torch.bool), H, W, STRIDE)["weight"].reshape(1, 1, H, W) > 0
    ltrb = outputs["ltrb"].clone().requires_grad_(True)
    iou = torch.zeros(1, 1, H, W, requires_grad=True)
    total, terms = MultiTaskLoss(LossConfig(box=0.0))({**outputs, "ltrb": ltrb, "iou": iou}, batch)
    torch.testing.assert_close(terms["iou"], torch.tensor(math.log(2.0)))  # BCE(0.5 -> 1) at every core cell
    total.backward()
    assert (iou.grad[positive] < 0).all() and (iou.grad[~positive] == 0).all()
    assert ltrb.grad is None or not ltrb.grad.any()  # the IoU target is detached: only the box loss moves boxes
    assert "iou" not in MultiTaskLoss()(outputs, batch)[1]  # no branch, no term


def test_iou_branch_exports_with_its_score(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(SMALL_V2.model_copy(update={"iou_score": 0.5})).eval())
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    report = export_onnx(model, tmp_path / "iou.onnx", "scene", 64, images=images)
    assert report["unmatched"] == 0 and report["matched"] > 0
    got = run_onnx(ort_session(str(tmp_path / "iou.onnx")), images)
    with torch.no_grad():
        ref = model.predict_decoded(images)
    np.testing.assert_allclose(np.sort(got["scores"], 1), np.sort(ref["scores"].numpy(), 1), atol=1e-4)


def test_a_converged_detector_loads_into_a_config_that_adds_the_iou_branch():
    """Fine-tuning the IoU branch on top of a converged v2: every tensor comes from the checkpoint except the
    branch's own; anything else that differs still fails, naming the keys."""
    from mouaadnet.training.checkpoint import load_pretrained

    saved = build_model(SMALL_V2).state_dict()
    model = build_model(SMALL_V2.model_copy(update={"iou_score": 0.5}))
    fresh = load_pretrained(model, saved, SMALL_V2.model_dump())
    assert fresh == ["detection.iou.weight", "detection.iou.bias"]
    for name, tensor in model.state_dict().items():
        if name not in fresh:
            torch.testing.assert_close(tensor, saved[name], msg=name)
    wider = build_model(SMALL_V2.model_copy(update={"iou_score": 0.5, "head_width": SMALL_V2.head_width * 2}))
    with pytest.raises(ValueError, match="model.head_width"):
        load_pretrained(wider, saved, SMALL_V2.model_dump())
    with pytest.raises(ValueError, match="model.iou_score: checkpoint 0.5, config 0.0"):  # a branch is not dropped
        load_pretrained(build_model(SMALL_V2), model.state_dict(), model.cfg.model_dump())


def test_a_narrower_score_gaussian_keeps_the_peak_and_the_box_cells():
    from model.losses import LossConfig

    batch = {"boxes": torch.tensor([[BIG]]), "box_mask": torch.ones(1, 1, dtype=torch.bool),
             "has_boxes": torch.tensor([True])}
    wide = scene_targets(batch, H, W, STRIDE)["heatmap"]
    narrow = scene_targets(batch, H, W, STRIDE, alpha=0.3)["heatmap"]
    assert int(wide.flatten().argmax()) == int(narrow.flatten().argmax()) and narrow.max() == 1.0
    assert (narrow <= wide + 1e-6).all() and (narrow > 0.5).sum() < (wide > 0.5).sum()
    with pytest.raises(ConfigError, match="heatmap_alpha"):
        parse_config(LossConfig, {"heatmap_alpha": 0.0}, "test")


def test_detector_distillation_is_at_rest_when_the_student_equals_the_teacher():
    """The teacher terms pull the student's heatmap and boxes to the teacher's: zero gradient where they agree,
    a box pulled where they do not; a teacher needs a weight and a weight needs a teacher."""
    from mouaadnet.training.config import TrainConfig

    torch.manual_seed(0)
    teacher = {"heatmap": torch.randn(2, 1, 8, 8), "ltrb": torch.randn(2, 4, 8, 8) * 0.3 + 1.0}
    student = {name: value.clone().requires_grad_(True) for name, value in teacher.items()}
    parts = MultiTaskLoss().teacher_parts(student, teacher)
    total = sum(value / count for value, count in parts.values())
    total.backward()
    assert student["heatmap"].grad.abs().max() < 1e-6 and student["ltrb"].grad.abs().max() < 1e-6
    assert parts["teacher_box"][0] < 1e-5 and parts["teacher_box"][1] > 0

    moved = {name: value.clone() for name, value in teacher.items()}
    moved["ltrb"][:, 0] += 0.5  # every box 65 % wider on the left
    assert MultiTaskLoss().teacher_parts(moved, teacher)["teacher_box"][0] > 1.0

    with pytest.raises(ValueError, match="detector_teacher"):
        TrainConfig.model_validate({"loss": {"teacher_box": 1.0}})
    with pytest.raises(ValueError, match="teacher_heatmap and loss.teacher_box are 0"):
        TrainConfig.model_validate({"detector_teacher": "v2.pt"})
