"""Find and verify the shipped weights (`weights/`): the default model of `detect`, the app, the browser page,
the Triton repository's first version and the pipeline's starting point.

`weights/manifest.json` names each file (checkpoint; scene and crop ONNX in FP32 and INT8) and the precision a
mode runs by default: INT8 only when it passed the quality gates against FP32 on the real validation sets.
Every file has a JSON sidecar with its sha256 (`model.artifacts`), checked before the file is used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

MANIFEST = "manifest.json"
Mode = Literal["scene", "crop"]


class WeightsError(RuntimeError):
    """The shipped weights are missing, incomplete or do not match their sha256."""


def weights_dir() -> Path:
    """$MOUAADNET_WEIGHTS, else the checkout's `weights/` folder, else `./weights` (an installed package, e.g. the
    container image, whose working directory holds it)."""
    configured = os.environ.get("MOUAADNET_WEIGHTS")
    if configured:
        return Path(configured)
    checkout = Path(__file__).resolve().parents[2] / "weights"
    return checkout if checkout.is_dir() else Path.cwd() / "weights"


def load_manifest(directory: str | Path | None = None) -> dict[str, Any]:
    """The parsed manifest.json of a weights folder; WeightsError naming what is missing or malformed."""
    directory = Path(directory) if directory is not None else weights_dir()
    path = directory / MANIFEST
    if not path.is_file():
        raise WeightsError(f"no shipped weights: {path} not found (train and ship them: see docs/MODEL_CARD.md, "
                           "'How to retrain'; or pass --model FILE)")
    try:
        manifest = json.loads(path.read_text())
        _ = manifest["checkpoint"], manifest["models"]["scene"], manifest["models"]["crop"]
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{path} is not a valid weights manifest ({error!r})") from None
    return manifest


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file. The torch-free twin of ``model.artifacts.sha256_file``: the apps and the serving venv
    check the shipped files without importing ``model`` (whose package imports torch)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _checked(directory: Path, name: str) -> Path:
    """``directory/name`` after checking it against its sidecar ``name.json`` (model.artifacts' format; read
    here without importing `model`, so the apps' processes never load torch)."""
    path = directory / name
    sidecar = Path(str(path) + ".json")
    if not path.is_file():
        raise WeightsError(f"shipped weights incomplete: {path} is missing")
    try:
        expected = json.loads(sidecar.read_text())["sha256"]
    except FileNotFoundError:
        raise WeightsError(f"{path} has no sha256 sidecar {sidecar.name}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{sidecar} is not a valid sidecar ({error!r})") from None
    if sha256_file(path) != expected:
        raise WeightsError(f"{path}: sha256 differs from its sidecar {sidecar.name} (file changed or truncated?)")
    return path


def default_model(mode: Mode = "scene", precision: str | None = None, directory: str | Path | None = None) -> Path:
    """The shipped ONNX for ``mode`` at ``precision`` ("fp32" / "int8"; None = the manifest's default for the
    mode), sha256-checked against its sidecar."""
    directory = Path(directory) if directory is not None else weights_dir()
    entry = load_manifest(directory)["models"][mode]
    precision = precision or entry["default"]
    if precision not in entry:
        raise WeightsError(f"no shipped {mode} model in {precision}; have {sorted(k for k in entry if k != 'default')}")
    return _checked(directory, entry[precision])


def shipped_checkpoint(directory: str | Path | None = None) -> Path:
    """The shipped PyTorch checkpoint (EMA weights), sha256-checked."""
    directory = Path(directory) if directory is not None else weights_dir()
    return _checked(directory, load_manifest(directory)["checkpoint"])


def verify_weights(directory: str | Path | None = None) -> list[Path]:
    """Check every file the manifest names against its sidecar; returns them (WeightsError on the first bad one)."""
    directory = Path(directory) if directory is not None else weights_dir()
    manifest = load_manifest(directory)
    names = [manifest["checkpoint"]]
    for entry in manifest["models"].values():
        names += [name for key, name in entry.items() if key != "default"]
    return [_checked(directory, name) for name in names]
