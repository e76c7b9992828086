"""compile-trt: exit 3 with the install hint without TensorRT; real build on a GPU machine (marked gpu)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import randomize_batchnorm
from test_export import SMALL
from typer.testing import CliRunner

from model import build_model
from model.export import export_onnx

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _cuda() -> bool:
    return torch.cuda.is_available()


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here; the missing-TensorRT path cannot be shown")
def test_compile_trt_without_tensorrt_exits_3(tmp_path):
    from mouaadnet.cli.main import app

    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"not needed: TensorRT is checked first")
    res = CliRunner().invoke(app, ["compile-trt", str(onnx_path), "--out", str(tmp_path / "m.plan")])
    assert res.exit_code == 3
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and "TensorRT is not installed" in lines[0] and "pypi.nvidia.com" in lines[0]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT or not _cuda(), reason="needs TensorRT and an NVIDIA GPU (pip install tensorrt "
                                                       "--extra-index-url https://pypi.nvidia.com)")
def test_compile_trt_builds_and_loads(tmp_path):
    from model.tensorrt import compile_trt, engine_io

    torch.manual_seed(0)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(randomize_batchnorm(build_model(SMALL).eval()), onnx_path, "scene", 64)
    plan = compile_trt(onnx_path, tmp_path / "m.plan", "fp16", max_batch=4, timing_cache=tmp_path / "cache")
    io = engine_io(plan)
    assert [t["name"] for t in io["inputs"]] == ["images"]
    assert [t["name"] for t in io["outputs"]] == ["boxes", "scores", "gender", "age"]
