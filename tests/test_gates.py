"""Quality gates: ONNX evaluation through the shared metrics, gate logic (a gate that must fail fails), CLI, QAT."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize_batchnorm
from test_export import SMALL
from typer.testing import CliRunner

from model import build_model
from model.export import export_onnx, quantize_int8
from mouaadnet.evaluation.evaluate import evaluate_sets
from mouaadnet.evaluation.gates import GateReport, check_gates, load_eval_sets, run_gates
from mouaadnet.evaluation.onnx_eval import OnnxModel
from mouaadnet.export.images import dataset_images

VAL = ["synthetic:6:12345", "synthetic-crops:12:54321"]


def _model(seed: int):
    torch.manual_seed(seed)
    return randomize_batchnorm(build_model(SMALL).eval(), seed)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small random-weight model, its FP32 scene/crop graphs and their INT8 PTQ graphs."""
    tmp = tmp_path_factory.mktemp("gates")
    model = _model(0)
    files = {}
    for mode, size in (("scene", SMALL.scene_size), ("crop", SMALL.crop_size)):
        fp32 = tmp / f"{mode}.onnx"
        export_onnx(model, fp32, mode, size)
        calib = dataset_images(["synthetic:8:0", "synthetic-crops:8:1"], mode, size, 8)
        files[mode] = (fp32, quantize_int8(fp32, tmp / f"{mode}.int8.onnx", calib))
    ckpt = tmp / "model.pt"
    torch.save({"model": model.state_dict(), "model_config": SMALL.model_dump()}, ckpt)
    return model, files, ckpt, tmp


def test_onnx_model_is_measured_by_the_same_metrics(exported):
    model, files, _, _ = exported
    sets = load_eval_sets(VAL)
    onnx = OnnxModel([files["scene"][0], files["crop"][0]])
    assert onnx.modes == ("scene", "crop") and onnx.sizes == {"scene": 64, "crop": 32}
    a = evaluate_sets(model, sets, 64, 32)
    b = evaluate_sets(onnx, sets, 64, 32)
    for ra, rb in zip(a, b):
        for key in ("AP50", "gender_accuracy", "age_mae"):
            if key in ra.metrics:
                assert ra.metrics[key] == pytest.approx(rb.metrics[key], abs=1e-3, nan_ok=True), (ra.name, key)


def test_run_gates_fp32_matches_and_report_serializes(exported):
    model, files, _, _ = exported
    report = run_gates(load_eval_sets(VAL), model, [files["scene"][0], files["crop"][0]],
                       {"int8_ptq": [files["scene"][1], files["crop"][1]]})
    names = {g.name: g for g in report.gates}
    for key in ("AP50", "gender_accuracy", "age_mae"):
        assert names[f"fp32_vs_pytorch {key}"].passed
    assert names["int8_ptq_file_mb"].passed and not names["int8_ptq_file_mb"].enforced
    assert {"int8_ptq_ap50_drop", "int8_ptq_gender_drop", "int8_ptq_age_mae_rise"} <= set(names)
    assert report.passed  # PTQ rows are reported, never enforced
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] and set(data["metrics"]) == {"pytorch", "fp32", "int8_ptq"}
    assert "gates PASSED" in report.format()


def _metrics(ap50: float, gender: float, mae: float) -> dict:
    return {"scenes": {"AP50": ap50}, "crops": {"gender_accuracy": gender, "age_mae": mae}}


MODES = {"scenes": "scene", "crops": "crop"}


def test_gates_that_must_fail_do_fail(tmp_path):
    fp32 = _metrics(0.80, 0.90, 5.0)
    ok = check_gates({"pytorch": fp32, "fp32": fp32, "int8_qat": _metrics(0.795, 0.895, 5.2)}, MODES)
    assert ok.passed and len(ok.gates) == 6
    bad = check_gates({"pytorch": _metrics(0.80, 0.90, 5.0), "fp32": _metrics(0.80, 0.88, 5.0),
                       "int8_qat": _metrics(0.78, 0.88, 5.0), "int8_ptq": _metrics(0.70, 0.80, 7.0)}, MODES)
    failed = {g.name for g in bad.failed}
    assert failed == {"fp32_vs_pytorch gender_accuracy", "int8_qat_ap50_drop"}
    assert not bad.passed
    ptq = {g.name: g for g in bad.gates if g.name.startswith("int8_ptq")}
    assert not ptq["int8_ptq_age_mae_rise"].passed and not ptq["int8_ptq_age_mae_rise"].enforced
    age = check_gates({"fp32": fp32, "int8_qat": _metrics(0.80, 0.90, 5.31)}, MODES)
    assert [g.name for g in age.failed] == ["int8_qat_age_mae_rise"]
    big = tmp_path / "big.int8.onnx"
    big.write_bytes(b"\0" * 1_000_001)
    size = check_gates({"fp32": fp32, "int8_qat": fp32}, MODES, {"int8_qat": [big]})
    assert [g.name for g in size.failed] == ["int8_qat_file_mb"]
    missing = check_gates({"fp32": fp32, "int8_qat": _metrics(0.80, float("nan"), 5.0)}, MODES)
    assert [g.name for g in missing.failed] == ["int8_qat_gender_drop"]  # a metric that vanished fails
    assert isinstance(missing, GateReport) and "FAIL" in missing.format()


def test_gates_cli_exit_code(exported):
    from mouaadnet.cli.main import app

    _, files, ckpt, tmp = exported
    args = ["gates", *sum((["--data", v] for v in VAL), []), "--fp32", str(files["crop"][0]),
            "--ptq", str(files["crop"][1])]
    res = CliRunner().invoke(app, [*args, "--checkpoint", str(ckpt), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["passed"]
    other = tmp / "other.pt"  # the FP32 graph of model 0 gated against a PyTorch model that predicts older ages
    state = {k: v.clone() for k, v in _model(0).state_dict().items()}
    state["attributes.decision.bias"][1 + 80] += 20.0  # logit of the 80-year bin (index 0 is the gender logit)
    torch.save({"model": state, "model_config": SMALL.model_dump()}, other)
    res = CliRunner().invoke(app, [*args, "--checkpoint", str(other)])
    assert res.exit_code == 1 and "FAIL" in res.output and "fp32_vs_pytorch age_mae" in res.output


def test_qat_command_on_synthetic_data(exported):
    from mouaadnet.cli.main import app

    _, _, ckpt, tmp = exported
    out = tmp / "qat.pt"
    res = CliRunner().invoke(app, ["qat", str(ckpt), "--data", "synthetic:24:0", "--data", "synthetic-crops:40:1",
                                   "--out", str(out), "--steps", "3", "--calib-steps", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "before (float)" in res.output and "gender_accuracy" in res.output
    data = torch.load(out, weights_only=True)
    assert data["form"] == "deploy" and data["qat"]["ranges"]
    sidecar = json.loads((tmp / "qat.pt.json").read_text())
    assert set(sidecar["metrics"]) == {"before", "after_fake_quant", "after_float"}
    assert "QAT weights, float" in res.output
    res = CliRunner().invoke(app, ["export", str(out), "--out", str(tmp / "qat.crop.int8.onnx"), "--mode", "crop",
                                   "--int8", "qat", "--calib-data", "synthetic-crops:8:1", "--num-calib", "8",
                                   "--val-data", VAL[1]])
    assert "int8_qat_gender_drop" in res.output and "fp32_vs_pytorch age_mae" in res.output, res.output
    assert res.exit_code in (0, 1)  # random weights: the INT8 drop gates may go either way
    assert "gates" in json.loads((tmp / "qat.crop.int8.onnx.json").read_text())["metrics"]


def test_qat_before_reparam_alternative_saves_a_fused_model(tmp_path):
    from model.artifacts import load_model_checkpoint
    from model.quantization import (
        QATConv2d,
        convert_qat,
        distillation_loss,
        qat_finetune,
        save_qat_checkpoint,
    )

    model = _model(0)
    gen = torch.Generator().manual_seed(1)
    batches = [{"images": torch.rand(2, 3, 64, 64, generator=gen)} for _ in range(3)]
    qat = qat_finetune(model, batches, distillation_loss(_model(0)), steps=2, calib_steps=2,
                       placement="before_reparam")
    assert any(".branch_3x3.conv" in n for n, m in qat.named_modules() if isinstance(m, QATConv2d))
    ckpt = save_qat_checkpoint(qat, tmp_path / "before.pt", SMALL.model_dump())
    ranges = torch.load(ckpt, weights_only=True)["qat"]["ranges"]
    assert any(k.endswith(".fused") for k in ranges) and not any("branch" in k for k in ranges)
    loaded, _ = load_model_checkpoint(ckpt)
    x = torch.rand(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        a, b = loaded(x), convert_qat(qat)(x)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4


def test_load_eval_sets_reads_a_configs_training_split(tmp_path):
    """`evaluate --config F --split train`: train-split metrics beside val (no sample of val in it)."""
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  crop:\n    - path: synthetic-crops:40:3\n      val_fraction: 0.25\n      max_val: null\n")
    (val,) = load_eval_sets([], config=config)
    (train,) = load_eval_sets([], config=config, split="train")
    assert train.name == "train-synthetic-crops" and len(train.samples) + len(val.samples) == 40
    assert {s.image.tobytes() for s in train.samples}.isdisjoint(s.image.tobytes() for s in val.samples)
    (few,) = load_eval_sets([], limit=5, config=config, split="train")
    assert len(few.samples) == 5
    with pytest.raises(ValueError, match="split"):
        load_eval_sets([], config=config, split="test")
