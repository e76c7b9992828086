"""Which ONNX files the apps run, what they are (sha256, precision, version), and the one place that runs them.

`default_model(mode)` is the single switch for the apps' default weights: the shipped files in `weights/`
(`mouaadnet.weights`: named by its manifest, sha256-checked), and where none are shipped a seeded random
stand-in exported once into the user cache, announced loudly (its detections mean nothing). `Predictor` is the
only code that calls a model: prepost preprocessing -> ONNX Runtime (in-process) -> prepost postprocessing, with
lazy session creation, so another runtime (OpenVINO) becomes one option here.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mouaadnet.export.standin import STANDIN_SEED
from mouaadnet.serving.prepost import (
    DEFAULT_THRESHOLD,
    MAX_PIXELS,
    ImageError,
    postprocess,
    preprocess_one,
    to_people,
)
from mouaadnet.weights import weights_dir
from mouaadnet.weights.shipped import sha256_file

REPO_ROOT = Path(__file__).resolve().parents[2]
# The precision each app runs by default: the browser's by measurement (docs/BENCHMARKS.md, "Browser": WASM runs
# INT8 slower); the Python app's is the shipped manifest's (INT8 when it passed the gates on real data).
DEFAULT_PRECISION: dict[str, str | None] = {"web": "fp32", "app": None}


class ModelError(RuntimeError):
    """A model file is missing, unreadable or of the wrong mode. The message names the file and what to do."""


@dataclass
class ModelInfo:
    """What the apps show about a model file."""

    name: str
    file: str
    path: Path
    mode: str
    precision: str
    sha256: str
    bytes: int
    version: str
    input_size: int | None  # None when described without opening the graph (check=False)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return data


def _sidecar(path: Path) -> dict:
    side = Path(str(path) + ".json")
    try:
        return json.loads(side.read_text()) if side.is_file() else {}
    except (OSError, ValueError):
        return {}


def _version(side: dict, path: Path) -> str:
    """The sidecar's `extra.version` (set by whoever ships the weights), else when it was exported."""
    extra = side.get("extra") or {}
    if extra.get("version"):
        return str(extra["version"])
    if side.get("created_unix"):
        import time

        return time.strftime("exported %Y-%m-%d %H:%M UTC", time.gmtime(side["created_unix"]))
    return f"{path.name} (no sidecar)"


def ort_io(path: str | Path) -> tuple[str, int]:
    """(mode, input size) of an exported ONNX, read by ONNX Runtime; raises ModelError on anything else."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - ORT's message says what is wrong
        raise ModelError(f"{path}: not a readable ONNX model: {error}") from None
    outputs = [o.name for o in session.get_outputs()]
    inputs = session.get_inputs()
    if [i.name for i in inputs] != ["images"] or "gender" not in outputs or "age" not in outputs:
        raise ModelError(f"{path}: not a MouaadNet export (inputs {[i.name for i in inputs]}, outputs {outputs})")
    shape = inputs[0].shape
    mode = "scene" if "boxes" in outputs else "crop"
    return mode, shape[3] if isinstance(shape[3], int) else (320 if mode == "scene" else 112)


def describe_model(path: str | Path, mode: str | None = None, check: bool = True) -> ModelInfo:
    """Sha256, precision, version (from the sidecar `X.onnx.json` when there is one) of an ONNX file.

    ``check`` opens the graph with ONNX Runtime to read its mode and input size (and refuses a model of another
    ``mode``); without it only the file and its sidecar are read (cheap: what a page header shows).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    side = _sidecar(path)
    found, size = ort_io(path) if check else ((side.get("extra") or {}).get("mode") or "?", None)
    if check and mode is not None and found != mode:
        raise ModelError(f"{path} is a {found}-mode model; a {mode}-mode export is needed "
                         f"(mouaadnet export CHECKPOINT --mode {mode} --out FILE.onnx)")
    precision = side.get("precision") or ("int8" if "int8" in path.name else "fp32")
    name = path.name[:-5] if path.name.endswith(".onnx") else path.name
    return ModelInfo(name=name, file=path.name, path=path.resolve(), mode=found, precision=precision,
                     sha256=sha256_file(path), bytes=path.stat().st_size, version=_version(side, path),
                     input_size=None if size is None else int(size))


def shipped_model(mode: str, precision: str | None = None, weights_dir: Path | None = None) -> Path | None:
    """The shipped ONNX of this mode in weights/ (``precision`` None = the manifest's default for the mode),
    sha256-checked against its sidecar; None when nothing is shipped."""
    from mouaadnet.weights import WeightsError
    from mouaadnet.weights import default_model as shipped

    try:
        return shipped(mode, precision, weights_dir)
    except WeightsError:
        return None


def standin_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mouaadnet" / f"standin-{STANDIN_SEED}"


def default_model(mode: str = "scene", app: str = "app", echo=None) -> Path:
    """The model the apps run when none is given: the shipped weights, else the stand-in (with a warning)."""
    precision = DEFAULT_PRECISION[app]
    path = shipped_model(mode, precision) or shipped_model(mode)
    if path is not None:
        return path
    message = (f"no shipped {mode}-mode weights in {weights_dir()} yet: running a RANDOM stand-in model "
               f"(its boxes, genders and ages mean nothing). Pass --model FILE.onnx to run a trained export.")
    (echo or (lambda m: warnings.warn(m, stacklevel=2)))(message)
    return standin_models()[mode]


def standin_models(out_dir: Path | None = None, int8: bool = False) -> dict[str, Path]:
    """The stand-in's files, exported on first use in a child process, so that torch (hundreds of MB) never
    enters the app's own memory."""
    out_dir = Path(out_dir or standin_dir())
    paths = {mode: out_dir / f"{mode}.onnx" for mode in ("scene", "crop")}
    if int8:
        paths["scene_int8"] = out_dir / "scene.int8.onnx"
    if all(p.is_file() and Path(str(p) + ".json").is_file() for p in paths.values()):
        return paths
    import subprocess
    import sys

    code = ("import sys; from mouaadnet.export.standin import export_standin; "
            "export_standin(sys.argv[1], int8=sys.argv[2] == '1')")
    done = subprocess.run([sys.executable, "-c", code, str(out_dir), "1" if int8 else "0"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelError(f"could not export the stand-in model into {out_dir}: {done.stderr.strip()[-2000:]}")
    return paths


# ------------------------------------------------------------------------------------------------ running


class Predictor:
    """Scene and crop inference in-process: prepost -> runtime -> prepost. Sessions open on first use.

    ``runtime``: "onnxruntime" (the default: the smallest process, docs/BENCHMARKS.md "The Gradio app's memory"),
    "openvino" or "auto" (the gated choice beside the model), through ``mouaadnet.runtime``; ``precision``:
    OpenVINO's inference precision (None = its default for this CPU).
    """

    def __init__(self, scene: str | Path | None, crop: str | Path | None = None, threads: int = 1,
                 runtime: str = "onnxruntime", precision: str | None = None):
        from mouaadnet.runtime import RUNTIMES

        if runtime not in (*RUNTIMES, "auto"):
            raise ModelError(f"runtime must be one of {RUNTIMES} or 'auto', got {runtime!r}")
        self.paths = {"scene": Path(scene) if scene else None, "crop": Path(crop) if crop else None}
        self.threads = threads
        self.runtime = runtime
        self.precision = precision
        self._sessions: dict = {}
        self._info: dict[str, ModelInfo] = {}
        self._lock = threading.Lock()

    def info(self, mode: str) -> ModelInfo:
        if mode not in self._info:
            path = self.paths[mode]
            if path is None:
                raise ModelError(f"no {mode}-mode model configured")
            self._info[mode] = describe_model(path, mode)
        return self._info[mode]

    def _session(self, mode: str):
        from mouaadnet.runtime import RuntimeLoadError, open_model

        with self._lock:
            if mode not in self._sessions:
                self.info(mode)
                try:
                    self._sessions[mode] = open_model(self.paths[mode], self.runtime, self.precision, self.threads)
                except RuntimeLoadError as error:
                    raise ModelError(f"{self.paths[mode]}: {error}") from None
            return self._sessions[mode]

    def describe_runtime(self, mode: str) -> str:
        """How ``mode`` runs (runtime, precision, threads); loads its model if it is not loaded yet."""
        return self._session(mode).describe()

    def loaded(self) -> list[str]:
        return sorted(self._sessions)

    def run(self, mode: str, images: np.ndarray) -> dict[str, np.ndarray]:
        """The one model call: float32 [N,3,S,S] -> the graph's outputs by name."""
        return self._session(mode)(np.ascontiguousarray(images, np.float32))

    def detect(self, data: bytes, threshold: float = DEFAULT_THRESHOLD, max_pixels: int = MAX_PIXELS) -> list[dict]:
        """Encoded image -> people (box in original pixels, score, gender, p_female, age); raises ImageError."""
        size = self.info("scene").input_size
        tensor, meta = preprocess_one(data, size, max_pixels=max_pixels)
        out = self.run("scene", tensor[None])
        return to_people(postprocess(out["boxes"], out["scores"], out["gender"], out["age"], meta[None],
                                     threshold))[0]

    def classify_crop(self, data: bytes, max_pixels: int = MAX_PIXELS) -> dict:
        """One face/body crop -> gender with its softmax confidence, P(female), age; raises ImageError.

        The confidence is the larger of the two-class softmax over (male, female), i.e. max(p, 1 - p) of the
        model's sigmoid P(female)."""
        size = self.info("crop").input_size
        tensor, _ = preprocess_one(data, size, max_pixels=max_pixels)
        out = self.run("crop", tensor[None])
        p_female = float(out["gender"].reshape(-1)[0])
        gender = "female" if p_female >= 0.5 else "male"
        return {"gender": gender, "confidence": max(p_female, 1.0 - p_female), "p_female": p_female,
                "age": float(out["age"].reshape(-1)[0])}


__all__ = ["DEFAULT_PRECISION", "ImageError", "ModelError", "ModelInfo", "Predictor", "default_model",
           "describe_model", "shipped_model"]
