"""JSON sidecars: every artifact ``X`` (checkpoint, .onnx, .plan) gets ``X.json`` describing it.

Fields: artifact (file name), sha256, bytes, precision, inputs/outputs (names, dtypes, shapes; dynamic axes by
name), source (path and sha256 of the checkpoint it came from), metrics measured at export, extra.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

SIDECAR_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(artifact: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (the full name is kept so model.onnx and model.pt never collide)."""
    return Path(str(artifact) + ".json")


def write_sidecar(artifact: str | Path, precision: str, source: str | Path | None = None,
                  metrics: dict | None = None, io: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``<artifact>.json``; ``io`` defaults to the ONNX graph's I/O for .onnx files."""
    artifact = Path(artifact)
    if io is None and artifact.suffix == ".onnx":
        import onnx

        from .export import describe_io

        io = describe_io(onnx.load(str(artifact)))
    data = {
        "version": SIDECAR_VERSION,
        "artifact": artifact.name,
        "sha256": sha256_file(artifact),
        "bytes": artifact.stat().st_size,
        "precision": precision,
        "inputs": (io or {}).get("inputs", []),
        "outputs": (io or {}).get("outputs", []),
        "source": None if source is None else {"path": str(source), "sha256": sha256_file(source)},
        "metrics": metrics or {},
        "created_unix": int(time.time()),
        "extra": extra or {},
    }
    path = sidecar_path(artifact)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:  # temp + rename: a full disk never leaves half a sidecar next to a good artifact
        tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_sidecar(artifact: str | Path, verify: bool = True) -> dict:
    """Load ``<artifact>.json``; with ``verify`` raise ValueError when the artifact's sha256 does not match."""
    data = json.loads(sidecar_path(artifact).read_text())
    if verify and data["sha256"] != sha256_file(artifact):
        raise ValueError(f"{artifact}: sha256 differs from its sidecar {sidecar_path(artifact)} (file changed?)")
    return data


def describe_load_error(path: str | Path, error: BaseException) -> str:
    """One clear line for a torch.load(weights_only=True) failure, without torch's advice to retry with
    weights_only=False (that would run whatever code the file pickled)."""
    import pickle
    import re

    text = str(error)
    if "Unsupported operand" in text:
        return (f"checkpoint {path} is not a MouaadNet checkpoint (a plain pickle or another file format); "
                "refused without running it")
    if isinstance(error, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"(Unsupported global: GLOBAL \S+|Unsupported operand \S+|"
                          r"Trying to load unsupported GLOBAL \S+|Trying to [^\n]*?)(?: whose|\.?\n|\.?$)", text)
        why = found.group(1) if found else text.splitlines()[-1][:200] if text else type(error).__name__
        return (f"refusing checkpoint {path}: it holds pickled objects other than tensors and plain containers "
                f"({why}); MouaadNet checkpoints never do, so it is foreign or tampered with and is not loaded "
                "(only weights are ever read: weights_only=True)")
    first = text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__
    return f"checkpoint {path} is corrupt, truncated or not a MouaadNet checkpoint: {first}"


def load_model_checkpoint(path: str | Path):
    """Checkpoint -> (eval-mode model, ModelConfig). Accepts {"model": state_dict, "model_config": dict, ...}
    (training, reparam and QAT checkpoints; ``"form": "deploy"`` marks a fused state dict) or a bare state dict
    of the training form with the default config. A training checkpoint's "ema" weights are used when present,
    as ``evaluate`` and checkpoint selection do."""
    import torch

    from .config import ModelConfig
    from .network import build_model
    from .reparam import reparameterize_model

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated, foreign or tampered files: one clear line
        raise ValueError(describe_load_error(path, error)) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(data).__name__}")
    state = data.get("ema") or data.get("model", data)  # EMA weights when present: what validation measured
    cfg = ModelConfig.model_validate(data["model_config"]) if data.get("model_config") else ModelConfig()
    model = build_model(cfg).eval()
    if data.get("form") == "deploy" or any(".fused." in k for k in state):
        model = reparameterize_model(model)
        for name, module in model.named_modules():  # QAT folds a BN into bias-free convs (PConv): give them one
            if isinstance(module, torch.nn.Conv2d) and module.bias is None and f"{name}.bias" in state:
                module.bias = torch.nn.Parameter(torch.zeros(module.out_channels))
    model.load_state_dict(state)
    return model.eval(), cfg
