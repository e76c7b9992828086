"""Checkpoints: atomic writes, safe loads (weights_only=True), RNG state capture."""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import ModelConfig, build_model
from model.artifacts import describe_load_error
from model.network import MouaadNet


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file."""


FULL_DISK_BYTES = 1 << 20  # less free space than this after a failed write: the disk was full


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save into a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:  # e.g. ENOSPC: say which file; the previous one at ``path`` is untouched
        raise OSError(error.errno, f"cannot write checkpoint {path} ({error.strerror or error}); "
                                   f"the previous {path.name} is unchanged") from None
    except RuntimeError:  # torch's zip writer reports a short write at the end of the file this way
        if shutil.disk_usage(path.parent).free >= FULL_DISK_BYTES:
            raise
        raise OSError(errno.ENOSPC, f"cannot write checkpoint {path} (No space left on device); "
                                    f"the previous {path.name} is unchanged") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    _remove_stale_temps(path)
    return path


def _remove_stale_temps(path: Path) -> None:
    """Temp files of earlier writers of ``path`` that were killed mid-write (their pid no longer runs)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            stale.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True`` (no pickled code runs); clear error for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign files
        raise CheckpointError(describe_load_error(path, error)) from None
    if isinstance(data, dict) and "model" not in data and all(isinstance(v, torch.Tensor) for v in data.values()):
        data = {"model": data}  # a bare state dict
    if not isinstance(data, dict) or "model" not in data:
        raise CheckpointError(f"checkpoint {path} has no 'model' state dict")
    return data


def architecture_difference(saved: dict[str, Any], cfg: ModelConfig) -> str:
    """'model.widths: checkpoint [24, ...], config [16, ...]; ...' for every model key whose values differ between
    a checkpoint's ``model_config`` and ``cfg`` (sizes and decode options too: they name what to set)."""
    try:
        theirs = ModelConfig.model_validate(saved).model_dump()
    except ValueError as error:
        return f"the checkpoint's model_config is invalid ({error})"
    ours = cfg.model_dump()
    differ = [f"model.{key}: checkpoint {theirs[key]}, config {ours[key]}" for key in ours if theirs[key] != ours[key]]
    return "; ".join(differ) or "the same model config, yet different tensors"


# Branches a config may add to a checkpoint's model, and the state-dict prefix of each: a fine-tune from that
# checkpoint starts them from their initialisation and every other tensor from the checkpoint (issue 21: the IoU
# branch trained on top of a converged detector).
ADDABLE_BRANCHES: dict[str, str] = {"iou_score": "detection.iou."}


def load_pretrained(model: MouaadNet, weights: dict[str, torch.Tensor], saved: dict[str, Any]) -> list[str]:
    """Load a checkpoint's ``weights`` into ``model``; returns the tensors left at their initialisation (only
    those of ``ADDABLE_BRANCHES`` the model has and the checkpoint lacks). Raises ValueError naming the model keys
    that differ for anything else."""
    added = tuple(prefix for key, prefix in ADDABLE_BRANCHES.items()
                  if getattr(model.cfg, key) and not any(name.startswith(prefix) for name in weights))
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        fits = not unexpected and all(name.startswith(added) for name in missing)
    except RuntimeError:  # a tensor of another shape
        fits = False
    if not fits:
        raise ValueError(f"{architecture_difference(saved, model.cfg)} (set those model keys as the checkpoint "
                         "has them, or pretrained: '')")
    return list(missing)


def model_from_checkpoint(path: str | Path, use_ema: bool = True) -> tuple[MouaadNet, dict[str, Any]]:
    """Rebuild the training-form model of a checkpoint (EMA weights when present)."""
    data = load_checkpoint(path)
    try:
        cfg = ModelConfig.model_validate(data.get("model_config") or {})
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path} has an invalid model_config: {error}") from None
    model = build_model(cfg)
    state = data.get("ema") if use_ema and data.get("ema") else data["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not match its model config: {error}") from None
    return model.eval(), data


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may touch, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
