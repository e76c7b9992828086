"""The runtime choice, read side: which runtime/precision runs a model under ``--runtime auto``.

``mouaadnet gates ... --choose`` (the writer: ``mouaadnet.export.runtime_choice``) times every variant that passed
its gates and writes ``runtime_choice.json`` in the folder of the FP32 graphs:

    {"version": 1, "models": {"scene.onnx": {"runtime": "openvino", "precision": "bf16",
                                              "file": "scene.onnx", "p50_ms": 3.1, ...}, "crop.onnx": {...}},
     "candidates": {"scene.onnx": [...every timed candidate, passed or not...]}, "load_average": [...]}

``resolve(path)`` reads it for ``open_model(path, runtime="auto")``, the default of ``mouaadnet detect`` and of
the Triton detector (which finds the choice through its symlink to the shipped file); with no file or no entry
for that model the caller falls back to ONNX Runtime. The shipped weights/ carry the choice measured on the real
validation sets (docs/BENCHMARKS.md, OpenVINO).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

CHOICE_FILE = "runtime_choice.json"
VERSION = 1


@dataclass
class Choice:
    runtime: str
    precision: str | None
    path: Path
    p50_ms: float | None = None


def resolve(model_path: str | Path) -> Choice | None:
    """The recorded choice for ``model_path`` (the FP32 graph, or any candidate file of the same mode), or None."""
    model_path = Path(model_path)
    path = model_path.parent / CHOICE_FILE
    if not path.is_file() and model_path.is_symlink():  # e.g. the Triton repository's link to the shipped weights
        model_path = Path(os.path.realpath(model_path))
        path = model_path.parent / CHOICE_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    entry = data.get("models", {}).get(model_path.name)
    if entry is None:
        for reference, candidates in data.get("candidates", {}).items():
            if any(c["file"] == model_path.name for c in candidates):
                entry = data.get("models", {}).get(reference)
                break
    if entry is None:
        return None
    return Choice(entry["runtime"], entry.get("precision"), model_path.parent / entry["file"], entry.get("p50_ms"))
