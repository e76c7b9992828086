"""The runtime choice, write side: time every variant of a gate report whose gates all passed and record the fastest
per mode in ``runtime_choice.json`` beside the FP32 graphs (read back by ``mouaadnet.runtime.choice.resolve``).

Candidates are ONNX Runtime FP32 and INT8, OpenVINO FP32 at f32/bf16 and OpenVINO INT8, timed at batch 1 in
interleaved rounds (``time_candidates``) so that a load change hits every candidate alike.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mouaadnet.runtime.choice import CHOICE_FILE, VERSION


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


def time_candidates(candidates: Sequence[Candidate], folder: Path, runs: int = 100, warmup: int = 10,
                    threads: int = 1, rounds: int = 10) -> None:
    """Fill ``p50_ms`` (batch 1, ``threads`` threads, random input) of each candidate, timed in interleaved rounds."""
    from mouaadnet.runtime.session import open_model
    from mouaadnet.runtime.timing import call_times_ms

    calls = {}
    for i, c in enumerate(candidates):
        model = open_model(folder / c.file, c.runtime, c.precision, threads)
        x = np.random.default_rng(0).random((1, 3, model.size, model.size), dtype=np.float32)
        calls[str(i)] = lambda model=model, x=x: model(x)
    times = call_times_ms(calls, runs, warmup, rounds)
    for i, c in enumerate(candidates):
        c.p50_ms = float(np.percentile(times[str(i)], 50))


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


def _mode_of(path: Path) -> str:
    from mouaadnet.runtime.session import open_model

    return open_model(path, "openvino" if path.suffix == ".xml" else "onnxruntime", None, 1).mode


def _failed_gates(report, variants: list[str]) -> dict[str, list[str]]:
    """The failed gates of each variant: accuracy rows count even where only reported (PTQ); a size row only where
    enforced (not an IR's)."""
    failed_of: dict[str, list[str]] = {v: [] for v in variants}
    for gate in report.gates:
        if gate.passed or (not gate.enforced and gate.name.endswith("_file_mb")):
            continue
        owner = "fp32" if gate.name.startswith("fp32_vs_pytorch") else \
            max((v for v in variants if gate.name.startswith(v + "_")), key=len, default=None)
        if owner is not None:
            failed_of[owner].append(gate.name)
    return failed_of


def record_choice(report, fp32: list[Path], int8: dict[str, list[Path]], openvino: dict,
                  folder: Path) -> tuple[Path, list[Candidate]]:
    """Time every variant of the gate ``report`` per mode (``int8``: variant -> ONNX files, ``openvino``: variant ->
    ``RuntimeFiles``) and write the choice (the fastest whose gates all passed) in ``folder``."""
    failed_of = _failed_gates(report, ["fp32", *int8, *openvino])
    entries = [("fp32", Path(p), "onnxruntime", None) for p in fp32]
    entries += [(v, Path(p), "onnxruntime", None) for v, files in int8.items() for p in files]
    entries += [(v, Path(p), "openvino", spec.precision) for v, spec in openvino.items() for p in spec.files]
    candidates = [Candidate(_mode_of(p), v, runtime, precision, os.path.relpath(p, folder),
                            not failed_of.get(v), failed_gates=failed_of.get(v, []))
                  for v, p, runtime, precision in entries]
    time_candidates(candidates, folder)
    references = {_mode_of(Path(p)): os.path.relpath(p, folder) for p in fp32}
    return write_choice(folder, candidates, references), candidates
