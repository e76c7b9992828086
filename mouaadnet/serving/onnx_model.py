"""The model step's ONNX interface, a stand-in exporter for tests/benchmarks, and an in-process ORT runner.

Interface (the contract `model/export.py` writes and `triton_repo/*/config.pbtxt` declare):
  input  `images` float32 [N,3,H,W] (RGB / 255, letterboxed with grey 114; H = W = 320 by default)
  outputs `boxes` [N,K,4] (x1,y1,x2,y2 in input pixels), `scores` [N,K], `gender` [N,K] (P(female)),
          `age` [N,K] (years); K = 100; N dynamic.
`export_standin_onnx` needs torch (main venv); `OrtModel` needs only onnxruntime + numpy (serving venv too).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "gender", "age")
TOP_K = 100


def export_standin_onnx(path: str | Path, size: int = 320, k: int = TOP_K, seed: int = 0) -> Path:
    """Export the deploy form of a randomly initialised (seeded) MouaadNet with decoding, as ONNX.

    A local wrapper with exactly the interface of `model.export.export_onnx(mode="scene")`, without that
    exporter's PyTorch-parity gate (a random net has near-tied peaks whose top-K order legitimately differs).
    """
    import torch
    from torch import nn

    from model import ModelConfig, build_model, decode_scene, reparameterize_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    net = reparameterize_model(build_model(ModelConfig(scene_size=size, top_k=k)).eval()).eval()
    with torch.no_grad():  # spread the heatmap a little so scores are not all equal (a fresh head is flat)
        for module in net.modules():
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.add_(torch.randn_like(module.bias) * 0.05)

    class SceneGraph(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor):
            out = decode_scene(self.inner(images), k)
            return out["boxes"], out["scores"], out["gender"], out["age"]

    graph = SceneGraph(net).eval()
    example = torch.rand(2, 3, size, size)
    dynamic = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    with torch.no_grad():
        torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
    return path


def ort_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with bounded threads (this machine has 2 cores, shared)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = threads or int(os.environ.get("MOUAADNET_ORT_THREADS", "0")) or min(2, os.cpu_count() or 1)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between ops: on 2 cores shared with the server's other processes, spinning threads
    # steal the CPU that decode and the other instance need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtModel:
    """In-process ONNX Runtime: images [N,3,S,S] -> dict of boxes/scores/gender/age."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = ort_session(path, threads)
        inputs = self.session.get_inputs()
        names = [o.name for o in self.session.get_outputs()]
        if [i.name for i in inputs] != [INPUT_NAME] or sorted(names) != sorted(OUTPUT_NAMES):
            raise ValueError(f"{path}: expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}, got "
                             f"{[i.name for i in inputs]} -> {names}")
        shape = inputs[0].shape
        self.size = shape[2] if isinstance(shape[2], int) else 320

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images, np.float32)})
        return dict(zip(OUTPUT_NAMES, values))
