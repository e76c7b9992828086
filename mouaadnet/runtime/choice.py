"""The runtime choice: the fastest runtime/precision whose gates passed, recorded next to the exported model.

``mouaadnet gates ... --choose`` measures every candidate (ONNX Runtime FP32 and INT8, OpenVINO FP32 at f32/bf16,
OpenVINO INT8) that ran in that gate report, keeps those whose every gate passed, times their files
(``time_candidates``: batch 1, interleaved rounds) and writes ``runtime_choice.json`` in the folder of the FP32
graphs:

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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CHOICE_FILE = "runtime_choice.json"
VERSION = 1


@dataclass
class Candidate:
    """One way to run one mode's model: ``file`` (relative to the choice file's folder) in ``runtime``."""

    mode: str
    variant: str  # the gate report's variant name ("fp32", "int8_qat", "ov_fp32_bf16", ...)
    runtime: str
    precision: str | None
    file: str
    passed: bool
    p50_ms: float | None = None
    failed_gates: list[str] = field(default_factory=list)


@dataclass
class Choice:
    runtime: str
    precision: str | None
    path: Path
    p50_ms: float | None = None


def time_candidates(candidates: Sequence[Candidate], folder: Path, runs: int = 100, warmup: int = 10,
                    threads: int = 1, rounds: int = 10) -> None:
    """Fill ``p50_ms`` (batch 1, ``threads`` threads, random input) of each candidate, timed in interleaved rounds
    so that a load change hits every candidate alike."""
    from .session import open_model

    models = {}
    for i, c in enumerate(candidates):
        models[i] = open_model(folder / c.file, c.runtime, c.precision, threads)
    inputs = {i: np.random.default_rng(0).random((1, 3, m.size, m.size), dtype=np.float32) for i, m in models.items()}
    for i, m in models.items():
        for _ in range(warmup):
            m(inputs[i])
    times: dict[int, list[float]] = {i: [] for i in models}
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for i, m in models.items():
            for _ in range(per_round):
                start = time.perf_counter()
                m(inputs[i])
                times[i].append(time.perf_counter() - start)
    for i, c in enumerate(candidates):
        c.p50_ms = float(np.percentile(times[i], 50) * 1e3)


def choose(candidates: Sequence[Candidate]) -> dict[str, Candidate]:
    """Per mode, the fastest candidate (lowest p50) whose gates all passed."""
    best: dict[str, Candidate] = {}
    for c in candidates:
        if not c.passed or c.p50_ms is None:
            continue
        if c.mode not in best or c.p50_ms < best[c.mode].p50_ms:
            best[c.mode] = c
    return best


def write_choice(folder: str | Path, candidates: Sequence[Candidate], references: dict[str, str]) -> Path:
    """Write ``runtime_choice.json`` in ``folder``; ``references``: mode -> the FP32 file name the choice is for."""
    folder = Path(folder)
    best = choose(candidates)
    data = {
        "version": VERSION,
        "models": {references[mode]: asdict(c) for mode, c in best.items() if mode in references},
        "candidates": {references.get(mode, mode): [asdict(c) for c in candidates if c.mode == mode]
                       for mode in sorted({c.mode for c in candidates})},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "created_unix": int(time.time()),
    }
    path = folder / CHOICE_FILE
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


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
