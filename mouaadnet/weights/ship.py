"""Turn a trained checkpoint into the shipped weights folder: checkpoint, FP32 + INT8 ONNX per mode, sidecars,
quality gates on the real validation sets, and the manifest that says which precision runs by default."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.artifacts import write_sidecar
from mouaadnet.weights.shipped import MANIFEST

MODES = ("scene", "crop")


@dataclass
class ShipReport:
    directory: Path
    manifest: dict[str, Any]
    gates_passed: bool
    gates_text: str


def _shipped_checkpoint(checkpoint: Path, out: Path) -> tuple[torch.nn.Module, Path]:
    """Write the EMA weights alone (no optimizer state): what `evaluate` and `train --pretrained` read."""
    from mouaadnet.training.checkpoint import load_checkpoint, model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoint)
    data = load_checkpoint(checkpoint)
    state = {"model": model.state_dict(), "model_config": data.get("model_config") or model.cfg.model_dump(),
             "config": data.get("config"), "metrics": data.get("metrics") or {}, "epoch": data.get("epoch"),
             "data_fingerprint": data.get("data_fingerprint")}
    path = out / "mouaadnet.pt"
    torch.save(state, path)
    write_sidecar(path, "fp32", source=checkpoint, extra={"epoch": data.get("epoch")})
    return model.eval(), path


def calibration_images(config_path: Path, mode: str, size: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` letterboxed images of ``mode`` from the config's training split (never its validation split,
    which the gates then measure)."""
    from mouaadnet.data.dataset import CropDataset, SceneDataset
    from mouaadnet.training.config import TrainConfig
    from mouaadnet.training.sources import load_training_data

    cfg = TrainConfig.from_yaml(config_path)
    samples = getattr(load_training_data(cfg.data, cfg.seed), mode).samples
    if not samples:
        raise ValueError(f"{config_path} has no {mode}-mode training samples to calibrate INT8 with")
    dataset = (SceneDataset if mode == "scene" else CropDataset)(samples, size, augment=False)
    order = np.random.default_rng(seed).permutation(len(samples))[:count]
    return torch.stack([dataset[int(i)][0] for i in sorted(order)])


def _export_mode(model, mode: str, size: int, calib: torch.Tensor, out: Path, source: Path,
                 calibration: str = "MinMax") -> dict[str, Path]:
    from model.export import count_qdq, export_onnx, int8_agreement, quantize_int8

    fp32, int8 = out / f"mouaadnet.{mode}.fp32.onnx", out / f"mouaadnet.{mode}.int8.onnx"
    parity = export_onnx(model, fp32, mode, size, images=calib[:8])
    write_sidecar(fp32, "fp32", source=source, metrics={"parity_fp32_vs_torch": parity},
                  extra={"mode": mode, "size": size})
    quantize_int8(fp32, int8, calib, "u8", calibrate_method=calibration)
    write_sidecar(int8, "int8-calib-u8", source=source,
                  metrics={"int8_vs_fp32": int8_agreement(fp32, int8, calib[:8]), "calibration_images": len(calib),
                           **count_qdq(int8)},
                  extra={"mode": mode, "size": size, "fp32": fp32.name, "calibration_method": calibration})
    return {"fp32": fp32, "int8": int8}


def ship(checkpoint: str | Path, config: str | Path, out: str | Path, num_calib: int = 64,
         val_limit: int | None = None, extra_val: list[str] | None = None, calibration: str = "MinMax") -> ShipReport:
    """Build ``out`` (written beside, then swapped in whole, so a failed run leaves the old folder intact);
    ``calibration``: ONNX Runtime's calibration method for the INT8 activation ranges."""
    from onnxruntime.quantization import CalibrationMethod

    if calibration not in CalibrationMethod.__members__:
        raise ValueError(f"calibration must be one of {sorted(CalibrationMethod.__members__)}, got {calibration!r}")
    from mouaadnet.evaluation.gates import load_eval_sets, run_gates

    checkpoint, config, out = Path(checkpoint), Path(config), Path(out)
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model, pt = _shipped_checkpoint(checkpoint, staging)
    files = {}
    for mode in MODES:
        size = model.cfg.scene_size if mode == "scene" else model.cfg.crop_size
        files[mode] = _export_mode(model, mode, size, calibration_images(config, mode, size, num_calib), staging, pt,
                                   calibration)
    sets = load_eval_sets(list(extra_val or []), val_limit, config)
    report = run_gates(sets, model, [files[m]["fp32"] for m in MODES], {"int8_ptq": [files[m]["int8"] for m in MODES]},
                       model.cfg.scene_size, model.cfg.crop_size, gated="int8_ptq")
    default = "int8" if report.passed else "fp32"  # INT8 runs by default only when it passed on real data
    manifest = {
        "checkpoint": pt.name,
        "models": {m: {"fp32": files[m]["fp32"].name, "int8": files[m]["int8"].name, "default": default} for m in MODES},
        "gates": report.to_dict(),
        "trained_with": str(config),
        "licence": "research and non-commercial use only (trained on research-only data; see docs/MODEL_CARD.md)",
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float) + "\n")
    keep = [p for p in out.glob("*") if p.is_dir()] if out.is_dir() else []  # e.g. a resume/ checkpoint folder
    for folder in keep:
        shutil.move(str(folder), staging / folder.name)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return ShipReport(out, manifest, report.passed, report.format())


def link_triton_seed(weights: str | Path, triton_repo: str | Path, model: str = "detector") -> Path:
    """Make Triton's committed version 1 of ``model`` serve the shipped default scene ONNX: a relative symlink
    (and one for its sidecar), so the repository's first version is always exactly the shipped file."""
    import os

    from mouaadnet.weights.shipped import default_model

    target = default_model("scene", directory=weights)
    version = Path(triton_repo) / model / "1"
    for name, source in (("model.onnx", target), ("model.onnx.json", Path(str(target) + ".json"))):
        link = version / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(source.resolve(), version.resolve()))
    return version / "model.onnx"
