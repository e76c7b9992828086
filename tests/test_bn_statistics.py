"""Per-mode BatchNorm statistics re-measured on training images (mouaadnet/training/bn_statistics.py)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from model import ModelConfig, build_model
from model.blocks import ConvBN, ModeBatchNorm2d
from mouaadnet.cli.main import app
from mouaadnet.training.bn_statistics import recalibrate
from tests.conftest import checkpoint_and_config, randomize_batchnorm

TINY = ModelConfig(widths=[8, 8, 16, 16, 16], neck_width=16, head_width=16, scene_size=64, crop_size=32)


def _first_convbn(model) -> ConvBN:
    return next(m for m in model.modules() if isinstance(m, ConvBN) and isinstance(m.bn, ModeBatchNorm2d))


def test_recalibrate_measures_each_mode_on_its_own_images_and_keeps_the_weights():
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(TINY)).eval()
    scenes = [torch.rand(4, 3, 64, 64) for _ in range(3)]
    fresh = recalibrate(model, {"scene": iter(scenes)})
    block = _first_convbn(fresh)
    with torch.no_grad():  # the first BatchNorm sees the first conv's output: its mean over every image and pixel
        expected = torch.cat([block.conv(x) for x in scenes]).mean(dim=(0, 2, 3))
    assert torch.allclose(block.bn.running_mean, expected, atol=1e-5)
    before, after = _first_convbn(model).bn, block.bn
    assert torch.equal(after.crop_running_mean, before.crop_running_mean)  # no crop batches: crop ones untouched
    assert torch.equal(after.weight, before.weight) and after.momentum == before.momentum and not after.training
    assert not torch.equal(before.running_mean, after.running_mean)  # and the original model is not modified
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def test_recalibrate_refuses_what_it_cannot_measure():
    model = build_model(TINY).eval()
    with pytest.raises(ValueError, match="no crop images"):
        recalibrate(model, {"crop": iter([])})
    with pytest.raises(ValueError, match="mode must be one of"):
        recalibrate(model, {"faces": iter([torch.rand(1, 3, 32, 32)])})
    from model import reparameterize_model

    with pytest.raises(ValueError, match="no per-mode BatchNorm"):
        recalibrate(reparameterize_model(model), {"scene": iter([torch.rand(1, 3, 64, 64)])})


def test_cli_recalibrate_writes_a_checkpoint_evaluate_reads(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(TINY)).eval()
    ckpt, config = checkpoint_and_config(tmp_path, model, scenes=8, crops=8)
    out = tmp_path / "recal.pt"
    result = CliRunner().invoke(app, ["recalibrate", str(ckpt), "--config", str(config), "--out", str(out),
                                      "--per-source", "6"])
    assert result.exit_code == 0, result.output
    data = torch.load(out, weights_only=True)
    assert data["bn_statistics"] == {"per_source": 6, "config": str(config), "modes": ["crop", "scene"]}
    assert data["epoch"] == 3
    old, new = model.state_dict(), data["model"]
    moved = [k for k in old if k.endswith("running_mean") and not torch.equal(old[k], new[k])]
    assert any(k.endswith("crop_running_mean") for k in moved) and any(".crop_" not in k for k in moved)
    assert all(torch.equal(old[k], new[k]) for k in old if "running" not in k and "num_batches" not in k)
    result = CliRunner().invoke(app, ["evaluate", str(out), "--data", "synthetic:2:5", "--json"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["recalibrate", str(tmp_path / "missing.pt"), "--config", str(config),
                                      "--out", str(out)])
    assert result.exit_code == 2 and "missing.pt" in result.output
