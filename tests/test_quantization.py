"""QAT: placement after re-parameterization, identity start, BN folding, INT8 QDQ export with QAT ranges."""

from __future__ import annotations

import numpy as np
import torch
from conftest import randomize_batchnorm
from test_export import SMALL

from model import build_model, reparameterize_model
from model.artifacts import load_model_checkpoint
from model.export import SceneExport, count_qdq, export_onnx, quantize_int8, run_onnx
from model.quantization import (
    QATConv2d,
    convert_qat,
    distillation_loss,
    qat_finetune,
    qat_overrides,
    save_qat_checkpoint,
    set_fake_quant,
)


def _setup(steps: int):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(SMALL).eval())
    deploy = reparameterize_model(model)
    gen = torch.Generator().manual_seed(1)
    batches = [{"images": torch.rand(2, 3, 64, 64, generator=gen)} for _ in range(4)]
    qat = qat_finetune(model, batches, distillation_loss(deploy), steps=steps, lr=1e-4, calib_steps=4)
    return model, deploy, qat


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_qat_starts_as_identity_of_deploy_form():
    _, deploy, qat = _setup(steps=0)
    assert any(isinstance(m, QATConv2d) for m in qat.modules())
    x = torch.rand(2, 3, 64, 64)
    set_fake_quant(qat, False)
    with torch.no_grad():
        assert _max_diff(deploy(x), qat(x)) <= 1e-4  # re-inserted BN is an exact identity
        assert _max_diff(qat(x), convert_qat(qat)(x)) <= 1e-4  # BN folds back exactly
        set_fake_quant(qat, True)
        fq = qat(x)
    assert all(torch.isfinite(v).all() for v in fq.values())


def test_qat_finetune_runs_and_folds(tmp_path):
    _, deploy, qat = _setup(steps=6)
    x = torch.rand(2, 3, 64, 64)
    plain = convert_qat(qat)
    assert not any(isinstance(m, (QATConv2d, torch.nn.BatchNorm2d)) for m in plain.modules())
    set_fake_quant(qat, False)
    with torch.no_grad():
        assert _max_diff(qat(x), plain(x)) <= 1e-4
    ckpt = save_qat_checkpoint(qat, tmp_path / "qat.pt", SMALL.model_dump())
    loaded, _ = load_model_checkpoint(ckpt)
    with torch.no_grad():
        assert _max_diff(loaded(x), plain(x)) <= 1e-5


def test_calibration_measures_the_inputs_the_deploy_form_sees():
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(SMALL).eval())
    deploy = reparameterize_model(model)
    batch = {"images": torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))}
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, args[0].detach()))
             for name, m in deploy.named_modules() if type(m) is torch.nn.Conv2d]
    with torch.no_grad():
        deploy(batch["images"])
    for hook in hooks:
        hook.remove()
    qat = qat_finetune(model, [batch], distillation_loss(deploy), steps=0, calib_steps=1)
    ranges = {name: m.act_range for name, m in qat.named_modules() if isinstance(m, QATConv2d)}
    assert len(seen) == len(ranges) > 10
    for name, x in seen.items():  # one batch: the range is exactly its min / max
        torch.testing.assert_close(ranges[name], torch.stack([x.min(), x.max()]), rtol=1e-4, atol=1e-5)


def test_default_finetune_keeps_bn_statistics_from_calibration():
    # Batch statistics of small mixed scene/crop batches differ from the running ones used at inference; the
    # default schedule therefore freezes the re-inserted BNs for all steps (model/quantization.py).
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(SMALL).eval())
    gen = torch.Generator().manual_seed(1)
    calib = [{"images": torch.rand(2, 3, 64, 64, generator=gen)} for _ in range(2)]
    shifted = [{"images": torch.rand(2, 3, 64, 64, generator=gen) * 4.0} for _ in range(3)]
    stats = {}
    for fraction in (None, 0.0):  # None: the default schedule
        torch.manual_seed(2)  # the attribute head's dropout is active in train mode
        kwargs = {} if fraction is None else {"freeze_bn_fraction": fraction}
        qat = qat_finetune(model, calib + shifted, distillation_loss(reparameterize_model(model)), steps=3,
                           lr=1e-4, calib_steps=2, **kwargs)
        stats[fraction] = torch.cat([m.bn.running_var for m in qat.modules() if isinstance(m, QATConv2d)])
    torch.manual_seed(2)
    reference = qat_finetune(model, calib, distillation_loss(reparameterize_model(model)), steps=0, calib_steps=2)
    calibrated = torch.cat([m.bn.running_var for m in reference.modules() if isinstance(m, QATConv2d)])
    assert torch.equal(stats[None], calibrated)
    assert not torch.allclose(stats[0.0], calibrated)  # unfrozen, the shifted batches move them


def test_qat_int8_export_has_qdq_and_agrees_with_fake_quant_model(tmp_path):
    _, _, qat = _setup(steps=4)
    fp32 = tmp_path / "qat.fp32.onnx"
    export_onnx(convert_qat(qat), fp32, "scene", 64)
    overrides = qat_overrides(qat, fp32)
    assert len(overrides) >= 10 and "images" in overrides
    calib = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    int8 = quantize_int8(fp32, tmp_path / "qat.int8.onnx", calib, overrides=overrides)
    assert count_qdq(int8)["QuantizeLinear"] > 0
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    set_fake_quant(qat, True)
    with torch.no_grad():
        _, scores, _, _ = SceneExport(qat, SMALL.top_k)(x)
    out = run_onnx(int8, x)
    # INT8 graph vs the fake-quant model it was trained as: same grid for weights and conv inputs; ORT also
    # quantizes Add/Concat outputs, hence a loose bound (random weights, 64 px).
    assert np.abs(np.sort(out["scores"], 1) - np.sort(scores.numpy(), 1)).max() <= 0.15
    assert np.isfinite(out["age"]).all() and ((out["age"] >= 0) & (out["age"] <= 100)).all()
