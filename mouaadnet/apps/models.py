"""Which ONNX files the apps run, what they are (sha256, precision, version), and the one place that runs them.

`default_model(mode)` is the single switch for the apps' default weights: the shipped files in `weights/`
(`mouaadnet.weights`: named by its manifest, sha256-checked), and where none are shipped a seeded random
stand-in exported once into the user cache, announced loudly (its detections mean nothing). `Predictor` is the
only code that calls a model: prepost preprocessing -> ONNX Runtime (in-process) -> prepost postprocessing, with
lazy session creation, so another runtime (OpenVINO) becomes one option here.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mouaadnet.serving.prepost import (
    DEFAULT_THRESHOLD,
    MAX_PIXELS,
    ImageError,
    postprocess,
    preprocess_one,
    to_people,
)
from mouaadnet.weights import weights_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
# The precision each app runs by default: the browser's by measurement (docs/BENCHMARKS.md, "Browser": WASM runs
# INT8 slower); the Python app's is the shipped manifest's (INT8 when it passed the gates on real data).
DEFAULT_PRECISION: dict[str, str | None] = {"web": "fp32", "app": None}
STANDIN_SEED = 0
STANDIN_VERSION = f"stand-in: random weights (seed {STANDIN_SEED}), no trained model in weights/"


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


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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

    code = ("import sys; from mouaadnet.apps.models import export_standin; "
            "export_standin(sys.argv[1], int8=sys.argv[2] == '1')")
    done = subprocess.run([sys.executable, "-c", code, str(out_dir), "1" if int8 else "0"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelError(f"could not export the stand-in model into {out_dir}: {done.stderr.strip()[-2000:]}")
    return paths


def sample_images() -> dict[str, Path]:
    """Example photos that ship in pip packages: scikit-image's astronaut, matplotlib's grace_hopper."""
    found: dict[str, Path] = {}
    try:
        import skimage.data

        path = Path(skimage.data.__file__).parent / "astronaut.png"
        if path.is_file():
            found["astronaut.png"] = path
    except ImportError:
        pass
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if path.is_file():
            found["grace_hopper.jpg"] = path
    except ImportError:
        pass
    return found


_STANDIN_LOCK = threading.Lock()


def export_standin(out_dir: str | Path, seed: int = STANDIN_SEED, int8: bool = False) -> dict[str, Path]:
    """Export (once) a seeded random MouaadNet as scene.onnx + crop.onnx with sidecars (``int8``: also
    scene.int8.onnx, static INT8 calibrated on the sample photos, for latency comparisons); needs torch and onnx.

    A freshly initialised head is flat (every score ~ the heatmap prior), so the stand-in rescales the last
    convs of the heads on the sample photos: distinct peaks, boxes of varied size, genders across [0, 1].
    That keeps the apps and their tests meaningful to look at (distinct detections to compare between the
    browser and Python) without trained weights; it is still a random model.
    """
    out_dir = Path(out_dir)
    paths = {"scene": out_dir / "scene.onnx", "crop": out_dir / "crop.onnx"}
    if int8:
        paths["scene_int8"] = out_dir / "scene.int8.onnx"
    with _STANDIN_LOCK:
        if all(p.is_file() and Path(str(p) + ".json").is_file() for p in paths.values()):
            return paths
        import torch

        from model import ModelConfig, build_model
        from model.artifacts import write_sidecar
        from model.export import export_onnx

        torch.manual_seed(seed)
        net = build_model(ModelConfig()).eval()
        samples = sample_images()
        if samples:
            calib = np.stack([preprocess_one(p.read_bytes(), 320)[0] for p in samples.values()])
        else:
            calib = np.random.default_rng(seed).random((2, 3, 320, 320), dtype=np.float32)
        _spread_heads(net, torch.from_numpy(calib))
        out_dir.mkdir(parents=True, exist_ok=True)
        for mode in ("scene", "crop"):
            path = paths[mode]
            tmp = path.with_name(path.stem + ".tmp.onnx")
            export_onnx(net, tmp, mode, 320 if mode == "scene" else 112)
            tmp.replace(path)
            write_sidecar(path, "fp32", extra={"mode": mode, "version": STANDIN_VERSION})
        if int8:
            from model.export import quantize_int8

            path = paths["scene_int8"]
            tmp = path.with_name(path.stem + ".tmp.onnx")
            quantize_int8(paths["scene"], tmp, torch.from_numpy(np.concatenate([calib, calib[..., ::-1]])))
            tmp.replace(path)
            write_sidecar(path, "int8", source=paths["scene"], extra={"mode": "scene", "version": STANDIN_VERSION})
    return paths


def _spread_heads(net, calib) -> None:
    """Rescale the heads' last convs so their outputs over ``calib`` have a chosen mean and spread."""
    import torch

    seen = {}
    convs = {"heat": net.detection.heatmap, "size": net.detection.size, "attr": net.attributes.decision}
    hooks = [conv.register_forward_hook(lambda _m, _i, out, key=key: seen.__setitem__(key, out.detach()))
             for key, conv in convs.items()]
    with torch.no_grad():
        net(calib)
        for hook in hooks:
            hook.remove()
        attr_std = torch.ones(seen["attr"].shape[1])
        attr_std[0] = 2.0  # the gender logit
        targets = {"heat": (2.0, -6.0), "size": (0.4, float(np.log(8.0))), "attr": (attr_std, 0.0)}
        for key, (std, mean) in targets.items():
            out, conv = seen[key], convs[key]
            mu, sd = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3)).clamp_min(1e-6)
            factor = std / sd
            conv.weight.mul_(factor.view(-1, 1, 1, 1))
            conv.bias.copy_((conv.bias - mu) * factor + mean)


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
        with self._lock:
            if mode not in self._sessions:
                from mouaadnet.serving.onnx_model import ort_session

                self.info(mode)
                if self.runtime == "onnxruntime" and self.precision is None:
                    self._sessions[mode] = ort_session(self.paths[mode], self.threads)
                else:
                    from mouaadnet.runtime import RuntimeLoadError, open_model

                    try:
                        self._sessions[mode] = open_model(self.paths[mode], self.runtime, self.precision,
                                                          self.threads)
                    except RuntimeLoadError as error:
                        raise ModelError(f"{self.paths[mode]}: {error}") from None
            return self._sessions[mode]

    def describe_runtime(self, mode: str) -> str:
        """How ``mode`` runs (runtime, precision, threads); loads its model if it is not loaded yet."""
        from mouaadnet.runtime import RuntimeModel

        session = self._session(mode)
        if isinstance(session, RuntimeModel):
            return session.describe()
        return f"{self.paths[mode].name}: onnxruntime, {self.threads} thread(s)"

    def loaded(self) -> list[str]:
        return sorted(self._sessions)

    def run(self, mode: str, images: np.ndarray) -> dict[str, np.ndarray]:
        """The one model call: float32 [N,3,S,S] -> the graph's outputs by name."""
        from mouaadnet.runtime import RuntimeModel

        session = self._session(mode)
        images = np.ascontiguousarray(images, np.float32)
        if isinstance(session, RuntimeModel):  # OpenVINO or auto, through mouaadnet.runtime
            return session(images)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, {"images": images})))

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
           "describe_model", "export_standin", "sample_images", "shipped_model"]
