import copy

import pytest
import torch
from torch import nn

from model import CROP_OUTPUTS, SCENE_OUTPUTS, ModelConfig, build_model, reparameterize_model
from model.blocks import CSPBlock, GhostModule, InvertedResidual, PConv, RepVGGBlock, SPPLite
from tests.conftest import randomize_batchnorm


@pytest.fixture(scope="module")
def trained_like_model():
    torch.manual_seed(0)
    return randomize_batchnorm(build_model(ModelConfig()), seed=3).eval()


def test_scene_outputs_shapes():
    model = build_model().eval()
    out = model(torch.rand(2, 3, 320, 256))
    assert tuple(out) == SCENE_OUTPUTS
    assert out["heatmap"].shape == (2, 1, 40, 32)
    assert out["size"].shape == out["offset"].shape == (2, 2, 40, 32)
    assert out["gender"].shape == (2, 1, 40, 32)
    assert out["age"].shape == (2, 101, 40, 32)


def test_crop_outputs_shapes_at_non_multiple_of_32():
    model = build_model().eval()
    out = model(torch.rand(3, 3, 112, 112), mode="crop")
    assert tuple(out) == CROP_OUTPUTS
    assert out["gender"].shape == (3,) and out["age"].shape == (3, 101)


def test_heatmap_prior_gives_initial_probability_near_0_1():
    model = build_model().eval()
    heat = torch.sigmoid(model(torch.rand(1, 3, 128, 128))["heatmap"])
    assert abs(heat.mean().item() - 0.1) < 0.05


def test_architecture_uses_every_required_block():
    model = build_model()
    kinds = {type(m) for m in model.modules()}
    for required in (PConv, GhostModule, InvertedResidual, RepVGGBlock, SPPLite, CSPBlock):
        assert required in kinds, f"{required.__name__} missing from the network"
    backbone_acts = {type(m) for m in model.backbone.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU))}
    assert backbone_acts == {nn.ReLU6}


@pytest.mark.parametrize("mode,size", [("scene", 320), ("scene", 224), ("crop", 112)])
def test_reparameterized_model_matches_training_form(trained_like_model, mode, size):
    fused = reparameterize_model(trained_like_model, mode)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        ref = trained_like_model(x, mode=mode)
        out = fused(x, mode=mode)
    for name in ref:
        assert (ref[name] - out[name]).abs().max().item() <= 1e-4, name


def test_reparameterize_model_removes_batchnorm_and_branches_and_leaves_original(trained_like_model):
    before = {k: v.clone() for k, v in trained_like_model.state_dict().items()}
    fused = reparameterize_model(trained_like_model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert all(m.fused is not None and m.branch_1x1 is None for m in fused.modules() if isinstance(m, RepVGGBlock))
    after = trained_like_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in trained_like_model.modules())
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in trained_like_model.parameters())


def test_reparameterize_model_twice_is_a_no_op(trained_like_model):
    once = reparameterize_model(trained_like_model)
    twice = reparameterize_model(once)
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(once(x)["heatmap"], twice(x)["heatmap"])


def test_crop_and_scene_share_one_state_dict():
    torch.manual_seed(0)
    model = build_model().eval()
    clone = build_model().eval()
    clone.load_state_dict(model.state_dict())  # one state dict serves both modes
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        crop = model(x, mode="crop")
        scene = clone(x, mode="scene")
    # The linear decision commutes with the attention-weighted average: crop logits equal the gate-weighted
    # mean of the per-location decision map (decision applied to the unpooled features).
    head = model.attributes
    with torch.no_grad():
        gate, features = head.gate_and_features(model.neck(model.backbone(x)))
        per_location = head.decision(features)
        expected = (gate * per_location).sum(dim=(2, 3)) / gate.sum(dim=(2, 3))
    assert torch.allclose(crop["gender"], expected[:, 0], atol=1e-4)
    assert torch.allclose(crop["age"], expected[:, 1:], atol=1e-4)
    assert torch.equal(scene["heatmap"], clone(x)["heatmap"])


def test_gradients_reach_every_parameter_in_both_modes():
    model = build_model().train()
    scene = model(torch.rand(2, 3, 128, 128))
    crop = model(torch.rand(2, 3, 112, 112), mode="crop")
    loss = sum(t.float().mean() for t in scene.values()) + sum(t.float().mean() for t in crop.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize(
    "images,mode,message",
    [
        (torch.rand(1, 3, 100, 100), "scene", "multiples of 32"),
        (torch.rand(1, 1, 64, 64), "scene", r"\[N,3,H,W\]"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "scene", "float"),
        (torch.rand(1, 3, 16, 16), "crop", "at least 32"),
        (torch.rand(1, 3, 64, 64), "faces", "mode"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(images, mode, message):
    with pytest.raises(ValueError, match=message):
        build_model()(images, mode=mode)


def test_default_model_meets_size_targets():
    from model.summary import model_summary

    summary = model_summary(ModelConfig())
    assert summary["params_deploy"] <= 1_000_000
    assert summary["flops_deploy_scene"] <= 0.8e9


def test_receptive_field_is_where_the_centre_cell_looks():
    from model.summary import model_summary, receptive_field

    class TwoConvs(nn.Module):  # two 3x3 convs, stride 1 then 2: a 5 px field (3 + 2 x 1)
        def __init__(self):
            super().__init__()
            self.convs = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 1, 3, stride=2, padding=1))

        def forward(self, images, mode="scene"):
            return {"heatmap": self.convs(images)}

    assert receptive_field(TwoConvs(), 32) == 5
    field = model_summary(ModelConfig(scene_size=64, crop_size=32), 64, 32)["receptive_field_scene"]
    assert field == model_summary(ModelConfig(scene_size=320, crop_size=32), 320, 32)["receptive_field_scene"]
    assert 320 < field < 4096  # measured on inputs larger than the field: not clipped at the input border


def test_fast_backbone_reparameterizes_and_exports_with_parity(tmp_path):
    """Backbone "fast" (space-to-depth stem, dense stage-2 entry): same outputs after fusion and in ONNX."""
    from model.export import export_onnx

    cfg = ModelConfig(arch="v2", backbone="fast", widths=[8, 16, 24, 32, 48], neck_width=16, head_width=16,
                      scene_size=64, crop_size=32)
    model = randomize_batchnorm(build_model(cfg).eval())
    assert type(model.backbone.stage1[0]).__name__ == "SpaceToDepthStem"
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before, after = model(images, mode="scene"), reparameterize_model(model)(images, mode="scene")
    for name in before:
        torch.testing.assert_close(after[name], before[name], atol=1e-4, rtol=1e-4)
    report = export_onnx(model, tmp_path / "fast.onnx", "scene", 64, images=images)
    assert report["unmatched"] == 0


def test_each_mode_keeps_its_own_batchnorm_statistics(trained_like_model):
    from model.blocks import ModeBatchNorm2d, set_statistics_mode

    model = copy.deepcopy(trained_like_model).train()
    norms = [m for m in model.modules() if isinstance(m, ModeBatchNorm2d)]
    assert norms and not any(type(m) is nn.BatchNorm2d for m in model.modules())
    scene_before = [m.running_mean.clone() for m in norms]
    crop_before = [m.crop_running_mean.clone() for m in norms]
    model(torch.rand(4, 3, 64, 64) * 0.2, mode="crop")  # dim crops: only the crop statistics move
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, scene_before))
    assert any(not torch.equal(m.crop_running_mean, b) for m, b in zip(norms, crop_before))
    crop_after = [m.crop_running_mean.clone() for m in norms]
    model(torch.rand(2, 3, 96, 96), mode="scene")  # and a scene batch moves only the scene ones
    assert all(torch.equal(m.crop_running_mean, b) for m, b in zip(norms, crop_after))
    assert any(not torch.equal(m.running_mean, b) for m, b in zip(norms, scene_before))
    # in eval mode each mode reads its own: the crop head's output differs with the statistics it reads
    model.eval()
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        crop = model(x, mode="crop")["gender"]
        set_statistics_mode(model, "scene")  # the crop pass by hand, reading the scene statistics
        with_scene_statistics = model.attributes(model.neck(model.backbone(x)), crop=True)["gender"]
    assert not torch.allclose(crop, with_scene_statistics)


def test_a_checkpoint_with_one_set_of_statistics_loads_into_both_modes(trained_like_model):
    state = {k: v for k, v in trained_like_model.state_dict().items() if ".crop_" not in k}  # as saved before
    model = build_model(trained_like_model.cfg)
    model.load_state_dict(state)  # strict: the crop statistics are filled from the shared ones
    from model.blocks import ModeBatchNorm2d

    for m in (m for m in model.modules() if isinstance(m, ModeBatchNorm2d)):
        assert torch.equal(m.crop_running_mean, m.running_mean) and torch.equal(m.crop_running_var, m.running_var)


@pytest.mark.parametrize("arch", ["v1", "v2"])
def test_decoding_runs_the_attribute_decision_at_the_peaks_with_the_same_result(arch):
    """predict_decoded (what the exported graph computes) gathers pooled features at the top-K peaks and decides
    there; decoding the full gender and age maps gives the same people, gender and age."""
    from model.decode import decode_scene

    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(ModelConfig(arch=arch)), seed=3).eval()
    images = torch.rand(2, 3, 128, 160, generator=torch.Generator().manual_seed(4))
    deferred = model(images, defer_attributes=True)
    assert "gender" not in deferred and deferred["attributes"].shape == (2, model.cfg.head_width, 16, 20)
    with torch.no_grad():
        full = decode_scene(model(images), model.cfg.top_k, nms_iou=model.cfg.nms_threshold())
        peaks = model.predict_decoded(images)
    for name in ("boxes", "scores", "gender", "age"):
        torch.testing.assert_close(peaks[name], full[name], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attribute decision"):
        decode_scene(deferred, model.cfg.top_k)
