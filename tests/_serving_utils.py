"""Helpers shared by the serving tests (not collected: no test_ prefix)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO_SRC = Path(__file__).resolve().parents[1] / "triton_repo"


def tiny_onnx(path: Path, size: int = 320, k: int = 100, input_type=None, box_dims=None) -> Path:
    """An ONNX with the detector's signature (constant outputs): enough for signature checks, fast to make."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    input_type = TensorProto.FLOAT if input_type is None else input_type
    box_dims = box_dims or ["batch", k, 4]
    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))

    # zeros shaped [batch of the input, *rest]: Shape -> Slice(0:1) -> Concat(rest) -> ConstantOfShape
    nodes = [helper.make_node("Shape", ["images"], ["in_shape"]), const("zero", np.array([0], np.int64)),
             const("one", np.array([1], np.int64)),
             helper.make_node("Slice", ["in_shape", "zero", "one"], ["batch_dim"])]
    outputs = []
    for name, dims in (("boxes", box_dims), ("scores", ["batch", k]), ("gender", ["batch", k]),
                       ("age", ["batch", k])):
        rest = np.array([1 if isinstance(d, str) else d for d in dims[1:]], np.int64)
        nodes += [const(f"{name}_rest", rest),
                  helper.make_node("Concat", ["batch_dim", f"{name}_rest"], [f"{name}_shape"], axis=0),
                  helper.make_node("ConstantOfShape", [f"{name}_shape"], [name],
                                   value=numpy_helper.from_array(np.zeros(1, np.float32)))]
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", input_type,
                                                                           ["batch", 3, size, size])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def copy_repo(dest: Path) -> Path:
    """A copy of the tracked triton_repo (configs + model.py, no published binaries)."""
    shutil.copytree(REPO_SRC, dest, ignore=shutil.ignore_patterns("*.onnx", "*.plan", "*.json", "__pycache__",
                                                                  ".publish*", ".trash-*"))
    for version in dest.glob("*/[0-9]*"):
        if version.name != "1":
            shutil.rmtree(version)
    return dest
