"""`mouaadnet ship` (mouaadnet/export/ship.py) on a small random-weight model and synthetic data: the folder it
writes verifies, its manifest's default precision follows the gates, Triton's version 1 links to that default,
and a bad option is refused without touching the folder already there."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import checkpoint_and_config, randomize_batchnorm
from test_export import SMALL
from typer.testing import CliRunner

from model import build_model
from mouaadnet.cli.main import app
from mouaadnet.weights import default_model, load_manifest, verify_weights


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ship")
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(SMALL).eval())
    ckpt, config = checkpoint_and_config(tmp, model)
    (tmp / "repo" / "detector" / "1").mkdir(parents=True)
    result = CliRunner().invoke(app, ["ship", str(ckpt), "--config", str(config), "--out", str(tmp / "weights"),
                                      "--num-calib", "4", "--qat-steps", "3", "--triton-repo", str(tmp / "repo")])
    assert result.exit_code == 0, result.output
    return tmp, ckpt, config


def test_ship_writes_a_folder_that_verifies_with_the_gates_deciding_the_default(shipped) -> None:
    tmp, _, _ = shipped
    weights = tmp / "weights"
    verified = verify_weights(weights)
    assert {p.name for p in verified} >= {"mouaadnet.pt", "mouaadnet.scene.fp32.onnx", "mouaadnet.scene.int8.onnx",
                                          "mouaadnet.crop.fp32.onnx", "mouaadnet.crop.int8.onnx"}
    manifest = load_manifest(weights)
    expected = "int8" if manifest["gates"]["passed"] else "fp32"
    assert {m["default"] for m in manifest["models"].values()} == {expected}
    assert default_model("scene", directory=weights).name == f"mouaadnet.scene.{expected}.onnx"
    sidecar = json.loads((weights / "mouaadnet.scene.int8.onnx.json").read_text())
    assert sidecar["extra"]["calibration_method"] == "MinMax" and sidecar["metrics"]["calibration_images"] == 4
    # both variants were gated; the chosen one ships under the INT8 name, its sidecar naming it, the other is gone
    assert set(manifest["gates"]["metrics"]) >= {"fp32", "int8_ptq", "int8_qat"}
    def passed(prefix: str) -> bool:
        return all(g["passed"] for g in manifest["gates"]["gates"] if g["name"].startswith(prefix))

    chosen = next((v for v in ("int8_qat", "int8_ptq") if passed("fp32_") and passed(f"{v}_")), "int8_qat")
    assert sidecar["extra"]["variant"] == manifest["int8_variant"] == chosen and manifest["int8_choice"]
    assert sidecar["artifact"] == "mouaadnet.scene.int8.onnx"
    enforced = {g["name"] for g in manifest["gates"]["gates"] if g["status"] in ("PASS", "FAIL")}
    assert all(name.startswith(chosen) for name in enforced if name.startswith("int8"))
    assert manifest["lineage"] == {}  # a checkpoint no tracked run wrote (tests/test_tracking.py: one that was)
    assert not (weights / ".compare").exists() and not list(weights.glob("*ptq*"))
    link = tmp / "repo" / "detector" / "1" / "model.onnx"
    assert link.is_symlink() and link.resolve() == default_model("scene", directory=weights).resolve()


def test_ship_refuses_an_unknown_calibration_and_keeps_the_old_folder(shipped) -> None:
    tmp, ckpt, config = shipped
    before = sorted(p.name for p in (tmp / "weights").iterdir())
    result = CliRunner().invoke(app, ["ship", str(ckpt), "--config", str(config), "--out", str(tmp / "weights"),
                                      "--calibration", "Median", "--triton-repo", ""])
    assert result.exit_code != 0 and "calibration must be one of" in result.output
    assert sorted(p.name for p in (tmp / "weights").iterdir()) == before
    verify_weights(tmp / "weights")


def test_ship_with_an_empty_triton_repo_links_nothing(shipped, tmp_path, monkeypatch) -> None:
    _, ckpt, config = shipped
    monkeypatch.chdir(tmp_path)  # '' once became '.', and ship tried to link ./detector/1/model.onnx
    result = CliRunner().invoke(app, ["ship", str(ckpt), "--config", str(config), "--out", str(tmp_path / "w"),
                                      "--num-calib", "2", "--qat-steps", "0", "--triton-repo", ""])
    assert result.exit_code == 0, result.output
    assert "Triton seed" not in result.output and not (tmp_path / "detector").exists()
    verify_weights(tmp_path / "w")


def test_the_qat_variant_ships_unless_it_fails_a_gate_the_ptq_one_passes() -> None:
    from mouaadnet.evaluation.gates import Gate, GateReport
    from mouaadnet.export.ship import choose_int8

    def report(qat_ap50_drop: float, ptq_ap50_drop: float) -> GateReport:
        return GateReport([Gate("fp32_vs_pytorch AP50", True, 0.0, 0.005),
                           Gate("int8_qat_ap50_drop", qat_ap50_drop <= 0.01, qat_ap50_drop, 0.01),
                           Gate("int8_ptq_ap50_drop", ptq_ap50_drop <= 0.01, ptq_ap50_drop, 0.01, enforced=False)])

    assert choose_int8(report(0.005, 0.002), ["int8_qat", "int8_ptq"])[0] == "int8_qat"  # both pass: QAT
    variant, why = choose_int8(report(0.0102, 0.0034), ["int8_qat", "int8_ptq"])
    assert variant == "int8_ptq" and why == "int8_qat failed int8_qat_ap50_drop; int8_ptq passed every gate"
    variant, why = choose_int8(report(0.02, 0.03), ["int8_qat", "int8_ptq"])
    assert variant == "int8_qat" and "FP32 is the default" in why
