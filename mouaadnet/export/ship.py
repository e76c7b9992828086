"""Turn a trained checkpoint into the shipped weights folder: checkpoint, FP32 + INT8 ONNX per mode, sidecars,
quality gates on the real validation sets, and the manifest that says which precision runs by default. The export
and the gates are ``mouaadnet.export.exporter``'s; reading the folder back is ``mouaadnet.weights``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.artifacts import sidecar_path, write_sidecar
from mouaadnet.evaluation.gates import GateReport, variant_passed, with_gated
from mouaadnet.export.exporter import MODES, Exporter
from mouaadnet.export.images import TrainingImages
from mouaadnet.tracking import quick_http, training_lineage
from mouaadnet.weights.shipped import MANIFEST


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
             "data_fingerprint": data.get("data_fingerprint"), "mlflow_run_id": data.get("mlflow_run_id")}
    path = out / "mouaadnet.pt"
    torch.save(state, path)
    write_sidecar(path, "fp32", source=checkpoint, extra={"epoch": data.get("epoch")})
    return model.eval(), path


def lineage(checkpoint: str | Path) -> dict[str, Any]:
    """The lineage of the checkpoint's MLflow train run (``tracking.training_lineage``); only the run id when the
    tracking store does not have that run (trained on another machine, a store since wiped)."""
    from mouaadnet.training.checkpoint import load_checkpoint

    run_id = load_checkpoint(checkpoint).get("mlflow_run_id")
    if not run_id:
        return {}
    try:
        with quick_http():  # an unreachable tracking server: a few seconds, not MLflow's minutes of retries
            return training_lineage(run_id)
    except Exception as error:  # any store error (no such run, server down): keep the id, say why
        return {"train_run": run_id, "not_in_store": f"{type(error).__name__}: {str(error)[:200]}"}


def ship(checkpoint: str | Path, config: str | Path, out: str | Path, num_calib: int = 64,
         val_limit: int | None = None, extra_val: list[str] | None = None, calibration: str = "MinMax",
         qat_steps: int = 0) -> ShipReport:
    """Build ``out`` (written beside, then swapped in whole, so a failed run leaves the old folder intact);
    ``calibration``: ONNX Runtime's calibration method for the INT8 activation ranges (PTQ). ``qat_steps`` > 0:
    a quantization-aware fine-tune of that many steps on the config's training data learns the ranges instead
    (as the pipeline's qat step); both INT8 variants are gated, and the QAT one ships unless it fails a gate that
    the PTQ one passes (``choose_int8``)."""
    from onnxruntime.quantization import CalibrationMethod

    if calibration not in CalibrationMethod.__members__:
        raise ValueError(f"calibration must be one of {sorted(CalibrationMethod.__members__)}, got {calibration!r}")
    checkpoint, config, out = Path(checkpoint), Path(config), Path(out)
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model, pt = _shipped_checkpoint(checkpoint, staging)
    exporter, images = Exporter(model, pt), TrainingImages(config)  # calibrated on the training split
    qat = _qat_ranges(checkpoint, config, qat_steps, staging) if qat_steps > 0 else None
    variants = ["int8_qat", "int8_ptq"] if qat else ["int8_ptq"]  # in order of preference
    files = {}
    for mode in MODES:
        fp32 = exporter.export_fp32(staging / f"mouaadnet.{mode}.fp32.onnx", mode, images)
        # each variant is written aside, gated, and the one chosen is then moved to the shipped name
        int8 = {v: staging / ".compare" / f"mouaadnet.{mode}.{v.replace('_', '-')}.onnx" for v in variants}
        for variant, path in int8.items():
            exporter.export_int8(fp32, path, images, num_calib, calibrate_method=calibration,
                                 qat=qat if variant == "int8_qat" else None)
        files[mode] = {"fp32": fp32.path, **int8}
    report = exporter.gate(list(extra_val or []), val_limit, config, fp32=[files[m]["fp32"] for m in MODES],
                           int8={v: [files[m][v] for m in MODES] for v in variants}, gated=variants[0])
    shipped_variant, choice = choose_int8(report, variants)
    report = with_gated(report, shipped_variant)
    for mode in MODES:
        files[mode]["int8"] = _adopt(files[mode][shipped_variant], staging / f"mouaadnet.{mode}.int8.onnx")
    shutil.rmtree(staging / ".compare", ignore_errors=True)
    default = "int8" if report.passed else "fp32"  # INT8 runs by default only when it passed on real data
    manifest = {
        "checkpoint": pt.name,
        "models": {m: {"fp32": files[m]["fp32"].name, "int8": files[m]["int8"].name, "default": default} for m in MODES},
        "gates": report.to_dict(),
        "trained_with": str(config),
        "lineage": lineage(checkpoint),
        "int8_variant": shipped_variant,
        "int8_choice": choice,
        **({"qat_steps": qat_steps} if qat else {}),
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


def choose_int8(report: GateReport, variants: list[str]) -> tuple[str, str]:
    """The INT8 variant to ship, and why: the first of ``variants`` (QAT, then PTQ) that passed every gate; the
    first one when none did (FP32 then stays the default)."""
    for variant in variants:
        if variant_passed(report, variant):
            skipped = [f"{v} failed {', '.join(g.name for g in report.gates if g.name.startswith(f'{v}_') and not g.passed)}"
                       for v in variants[:variants.index(variant)]]
            return variant, "; ".join([*skipped, f"{variant} passed every gate"])
    return variants[0], f"no INT8 variant passed every gate ({', '.join(variants)}): FP32 is the default"


def _adopt(path: Path, shipped: Path) -> Path:
    """Move an INT8 file and its sidecar to the shipped name; the sidecar names its new file."""
    path.rename(shipped)
    meta = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).unlink()
    sidecar_path(shipped).write_text(json.dumps({**meta, "artifact": shipped.name}, indent=2) + "\n")
    return shipped


def _qat_ranges(checkpoint: Path, config: Path, steps: int, staging: Path) -> dict:
    """Activation ranges from a QAT fine-tune of ``checkpoint`` on the config's training data (not shipped)."""
    from mouaadnet.export.exporter import qat_ranges
    from mouaadnet.training.config import TrainConfig, load_config
    from mouaadnet.training.qat import run_qat

    out = staging / ".compare" / "qat.pt"
    run_qat(checkpoint, load_config(TrainConfig, config), out, steps=steps, progress=False)
    return qat_ranges(out)


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
