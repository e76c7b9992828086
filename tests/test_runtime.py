"""mouaadnet.runtime: one interface over ONNX Runtime and OpenVINO (parity, stated precision, batches, errors),
the OpenVINO IR export (CLI), OpenVINO variants in the gates, and the recorded runtime choice (`--runtime auto`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import randomize_batchnorm
from test_export import SMALL
from typer.testing import CliRunner

from model import build_model
from model.export import export_onnx, quantize_int8
from mouaadnet.export.runtime_choice import Candidate, choose, write_choice
from mouaadnet.runtime import RuntimeLoadError, open_model, runtime_factory
from mouaadnet.runtime.choice import CHOICE_FILE, resolve

pytestmark = pytest.mark.openvino
ov = pytest.importorskip("openvino", reason="openvino is not installed: pip install 'mouaadnet-ultra[openvino]'",
                         exc_type=ImportError)

# OpenVINO f32 vs ONNX Runtime FP32 on the same graph (max abs): float reassociation only.
F32_TOL = {"scores": 1e-4, "gender": 1e-3, "age": 1e-2}
# OpenVINO bf16 (8-bit mantissa in convs) vs FP32, and OpenVINO's INT8 kernels vs ORT's on one QDQ graph: a
# bound that catches a wrong graph, not a quality gate (mouaadnet gates --openvino gates quality on the validation
# sets). Scene scores are compared over each image's 5 best: on a random-weight net the heatmap is nearly flat and
# bf16 rounding legitimately turns near-tied neighbours into or out of peaks further down the top-K list.
BF16_TOL = {"scores": 0.01, "gender": 0.01, "age": 0.5}
GHOST = SMALL.model_copy(update={"depths": [1, 2, 1, 1, 3]})  # with a ghost bottleneck (the crash pattern's home)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small random-weight model with a ghost bottleneck: FP32 scene/crop graphs and INT8 QDQ graphs."""
    tmp = tmp_path_factory.mktemp("runtime")
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(GHOST).eval())
    out = {}
    for mode, size in (("scene", 64), ("crop", 32)):
        fp32 = tmp / f"{mode}.onnx"
        export_onnx(model, fp32, mode, size)
        calib = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(3))
        out[mode] = (fp32, quantize_int8(fp32, tmp / f"{mode}.int8.onnx", calib))
    ckpt = tmp / "model.pt"
    torch.save({"model": model.state_dict(), "model_config": GHOST.model_dump()}, ckpt)
    return out, ckpt, tmp


def _diff(a: dict, b: dict, top: int | None = None) -> dict:
    """Max abs differences: scene scores sorted per image (the ``top`` best only when given), crop attributes."""
    if "scores" in a:
        sa, sb = np.sort(a["scores"], -1)[:, ::-1], np.sort(b["scores"], -1)[:, ::-1]
        return {"scores": float(np.abs(sa[:, :top] - sb[:, :top]).max())}
    return {k: float(np.abs(a[k] - b[k]).max()) for k in ("gender", "age")}


@pytest.mark.parametrize("mode", ["scene", "crop"])
def test_openvino_matches_onnxruntime(files, mode):
    (fp32, int8), size = files[0][mode], 64 if mode == "scene" else 32
    x = np.random.default_rng(1).random((3, 3, size, size), dtype=np.float32)
    ref = open_model(fp32, "onnxruntime", threads=1)
    assert (ref.runtime, ref.precision, ref.quantized, ref.mode, ref.size) == ("onnxruntime", "fp32", False, mode, size)
    f32 = open_model(fp32, "openvino", "f32", threads=1)
    assert (f32.precision, f32.precision_source, f32.quantized) == ("f32", "asked", False)
    assert f32.output_names == ref.output_names
    expected = ref(x)
    for name, value in _diff(expected, f32(x)).items():
        assert value <= F32_TOL[name], (name, value)
    bf16 = open_model(fp32, "openvino", "bf16", threads=1)
    for name, value in _diff(expected, bf16(x), top=5).items():
        assert value <= BF16_TOL[name], (name, value)
    # ORT's INT8 QDQ graph (the crash pattern removed at export) runs in OpenVINO with a static batch too
    q_ort, q_ov = open_model(int8, "onnxruntime", threads=1), open_model(int8, "openvino", "f32", threads=1)
    assert q_ort.precision == "int8" and q_ov.quantized and q_ov.static_batches
    for name, value in _diff(q_ort(x), q_ov(x), top=5).items():
        assert value <= BF16_TOL[name], (name, value)


def test_batches_are_compiled_static_and_agree(files):
    fp32 = files[0]["scene"][0]
    model = open_model(fp32, "openvino", "f32", threads=1)
    x = np.random.default_rng(2).random((3, 3, 64, 64), dtype=np.float32)
    whole = model(x)
    one = [model(x[i:i + 1]) for i in range(3)]
    assert set(model._requests) == {None, 1, 3}  # the dynamic model plus one static model per batch size seen
    for i in range(3):
        np.testing.assert_allclose(whole["scores"][i], one[i]["scores"][0], atol=1e-5)


def test_default_precision_is_stated(files):
    from mouaadnet.runtime import openvino_default_precision

    model = open_model(files[0]["crop"][0], "openvino", threads=1)
    assert model.precision == openvino_default_precision() and model.precision in ("f32", "bf16")
    assert model.precision_source == "OpenVINO's default on this CPU"
    assert f"inference precision {model.precision}" in model.describe()


def test_errors_say_what_is_wrong(files, tmp_path):
    fp32, int8 = files[0]["scene"]
    with pytest.raises(RuntimeLoadError, match="runtime must be one of"):
        open_model(fp32, "tensorflow")
    with pytest.raises(RuntimeLoadError, match="needs --runtime openvino"):
        open_model(fp32, "onnxruntime", "bf16")
    with pytest.raises(RuntimeLoadError, match="precision must be one of"):
        open_model(fp32, "openvino", "fp8")
    with pytest.raises(RuntimeLoadError, match="no such file"):
        open_model(tmp_path / "missing.onnx", "openvino")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(RuntimeLoadError, match="cannot read with OpenVINO"):
        open_model(bad, "openvino")
    assert open_model(int8, "onnxruntime", "int8").precision == "int8"


def test_without_the_onnx_rewrite_a_suspect_graph_stays_on_a_dynamic_batch(files, monkeypatch, tmp_path):
    """The serving venv has no torch, so model.onnx_passes cannot be imported there: a QDQ graph with a no-op
    Slice (an older export) must then be compiled with a dynamic batch only, where OpenVINO does not crash."""
    import builtins

    import onnx

    import model.export as export

    monkeypatch.setattr(export, "drop_noop_slices_file", lambda path: [])
    old_fp32 = tmp_path / "old.onnx"
    torch.manual_seed(0)
    export.export_onnx(randomize_batchnorm(build_model(GHOST).eval()), old_fp32, "scene", 64)
    old = export.quantize_int8(old_fp32, tmp_path / "old.int8.onnx", torch.rand(4, 3, 64, 64))
    from model.onnx_passes import has_crash_pattern

    assert has_crash_pattern(onnx.load(str(old)))
    real_import = builtins.__import__

    def no_passes(name, *args, **kwargs):
        if name == "model.onnx_passes":
            raise ImportError("simulated: no torch in this venv")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_passes)
    model = open_model(old, "openvino", "f32", threads=1)
    assert not model.static_batches
    out = model(np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32))
    assert out["scores"].shape == (1, 20)
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert open_model(old, "openvino", "f32", threads=1).static_batches  # rewritten in memory instead


def test_runtime_factory_for_apps(files):
    load = runtime_factory("openvino", "f32", threads=1)
    model = load(files[0]["crop"][0])
    assert model.runtime == "openvino" and model.mode == "crop"
    with pytest.raises(RuntimeLoadError):
        runtime_factory("tflite")


def test_choice_picks_the_fastest_that_passed_and_auto_reads_it(files):
    (scene, scene_int8), tmp = files[0]["scene"], files[2]
    candidates = [Candidate("scene", "fp32", "onnxruntime", None, scene.name, True, 5.0),
                  Candidate("scene", "int8_ptq", "onnxruntime", None, scene_int8.name, False, 1.0, ["x"]),
                  Candidate("scene", "ov_fp32_f32", "openvino", "f32", scene.name, True, 3.0)]
    assert choose(candidates)["scene"].variant == "ov_fp32_f32"  # the failed INT8 is faster but not eligible
    assert open_model(scene, "auto").runtime == "onnxruntime"  # no choice file yet: ONNX Runtime
    path = write_choice(tmp, candidates, {"scene": scene.name})
    assert path.name == CHOICE_FILE and json.loads(path.read_text())["models"][scene.name]["runtime"] == "openvino"
    assert resolve(scene_int8).runtime == "openvino"  # any candidate file of the mode finds the choice
    auto = open_model(scene, "auto", threads=1)
    assert (auto.runtime, auto.precision) == ("openvino", "f32")
    import mouaadnet.runtime.session as session

    def no_openvino(*args, **kwargs):
        raise session.RuntimeLoadError("openvino is not installed")

    with pytest.MonkeyPatch.context() as patch, pytest.warns(RuntimeWarning, match="cannot run here"):
        patch.setattr(session, "OpenVinoRuntimeModel", no_openvino)
        assert open_model(scene, "auto", threads=1).runtime == "onnxruntime"  # a choice this install can't run
    served = tmp / "served" / "1"  # the Triton repository links its model.onnx to the shipped file
    served.mkdir(parents=True, exist_ok=True)
    (served / "model.onnx").unlink(missing_ok=True)
    (served / "model.onnx").symlink_to(scene_int8)
    assert resolve(served / "model.onnx").runtime == "openvino"
    path.unlink()
    assert resolve(served / "model.onnx") is None


@pytest.mark.slow
def test_export_format_openvino_gates_and_detect(files, tmp_path):
    """`export --format openvino` writes a loadable IR (FP32 and NNCF INT8); `gates --openvino --choose` gates
    it like INT8 and records the choice; `detect --runtime openvino|auto` runs it."""
    from PIL import Image

    from mouaadnet.cli.main import app

    ckpt = files[1]
    runner = CliRunner()
    irs = {}
    for mode in ("scene", "crop"):
        calib = "synthetic:8:0" if mode == "scene" else "synthetic-crops:8:0"
        for int8 in ("none", "calib"):
            xml = tmp_path / int8 / f"{mode}.xml"
            res = runner.invoke(app, ["export", str(ckpt), "--out", str(xml), "--mode", mode, "--format", "openvino",
                                      "--int8", int8, "--calib-data", calib, "--num-calib", "8"])
            assert res.exit_code == 0, res.output
            assert xml.is_file() and xml.with_suffix(".bin").is_file() and (tmp_path / int8 / f"{mode}.xml.json").is_file()
            model = open_model(xml, "openvino", "f32", threads=1)
            assert model.mode == mode and model.quantized == (int8 == "calib")
            irs[(mode, int8)] = xml
    sidecar = json.loads((tmp_path / "none" / "scene.xml.json").read_text())
    assert sidecar["extra"]["format"] == "openvino" and sidecar["metrics"]["openvino_f32_vs_onnxruntime"]["scores"] < 1e-4
    bad = runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--format", "openvino"])
    assert bad.exit_code == 2 and "must end with .xml" in bad.output

    fp32 = [tmp_path / "none" / "scene.fp32.onnx", tmp_path / "none" / "crop.fp32.onnx"]
    args = ["gates", "--data", "synthetic:6:12345", "--data", "synthetic-crops:12:54321", "--checkpoint", str(ckpt),
            *sum((["--fp32", str(p)] for p in fp32), []),
            *sum((["--openvino", str(p)] for p in (*fp32, irs[("scene", "calib")], irs[("crop", "calib")])), []),
            "--ov-precision", "f32", "--ov-precision", "bf16", "--choose", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert {"ov_fp32_f32", "ov_fp32_bf16", "ov_int8_f32", "ov_int8_bf16"} <= set(report["metrics"])
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["ov_fp32_bf16_age_mae_rise"]["enforced"] and gates["ov_int8_bf16_ap50_drop"]["enforced"]
    assert not gates["ov_int8_bf16_file_mb"]["enforced"]
    choice = json.loads((tmp_path / "none" / CHOICE_FILE).read_text())
    assert set(choice["models"]) == {"scene.fp32.onnx", "crop.fp32.onnx"}
    assert len(choice["candidates"]["scene.fp32.onnx"]) == 5  # ORT FP32 + OpenVINO {FP32, INT8} x {f32, bf16}

    photo = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8)).save(photo)
    outputs = {}
    for runtime, model_file, extra in (("onnxruntime", fp32[0], []), ("openvino", fp32[0], ["--precision", "f32"]),
                                       ("openvino", irs[("scene", "none")], ["--precision", "f32"]),
                                       ("auto", fp32[0], [])):
        res = runner.invoke(app, ["detect", str(photo), "--model", str(model_file), "--runtime", runtime,
                                  "--threshold", "0", "--json", *extra])
        assert res.exit_code == 0, res.output
        expected = choice["models"]["scene.fp32.onnx"]["runtime"] if runtime == "auto" else runtime
        assert f": {expected}," in res.stderr
        outputs[(runtime, model_file.name)] = json.loads(res.stdout)[0]["people"]
    ort_people, ov_people = outputs[("onnxruntime", "scene.fp32.onnx")], outputs[("openvino", "scene.fp32.onnx")]
    assert len(ort_people) == len(ov_people) == 20
    assert max(abs(a["score"] - b["score"]) for a, b in zip(ort_people, ov_people)) < 1e-3
    res = runner.invoke(app, ["detect", str(photo), "--url", "127.0.0.1:1", "--runtime", "openvino"])
    assert res.exit_code == 2 and "in-process" in res.output  # the server runs its own model
    res = runner.invoke(app, ["detect", str(photo), "--model", str(files[0]["crop"][0]), "--runtime", "openvino"])
    assert res.exit_code == 1 and "crop-mode model" in res.output
