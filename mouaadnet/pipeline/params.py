"""The pipeline's parameters: the `config` text, the TrainConfig built from it, and checks on the rest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

DATA_PREFIX = "data/"  # source paths in a pipeline config that point into the versioned dataset
SERVE_PRECISIONS = ("fp32", "int8")
SERVE_BACKENDS = ("python", "onnxruntime")


class PipelineStepError(RuntimeError):
    """A step refuses to go on (dirty data, failed check); the message says why."""


def load_config_text(config: str, repo_dir: str | os.PathLike = ".") -> str:
    """The pipeline's `config` parameter is YAML text (what the CLI passes, so the cache key sees the content)
    or a path (relative to ``repo_dir``: the default in the compiled spec, a file in the image)."""
    if "\n" in config or ":" in config.split("/", 1)[0] and not Path(config).exists():
        return config
    path = Path(config)
    if not path.is_absolute():
        path = Path(repo_dir) / path
    if not path.is_file():
        raise PipelineStepError(f"pipeline config {path} does not exist")
    return path.read_text(encoding="utf-8")


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_config(config_text: str, dataset_dir: str | os.PathLike | None = None, epochs: int = 0,
                 steps_per_epoch: int = 0):
    """TrainConfig from YAML text; source paths under ``data/`` are re-rooted at the dataset artifact."""
    from model.config import ConfigError
    from mouaadnet.training.config import TrainConfig

    try:
        cfg = TrainConfig.model_validate(yaml.safe_load(config_text) or {})
    except Exception as error:  # pydantic ValidationError / YAML errors -> one message
        raise ConfigError(f"invalid pipeline config: {error}") from None
    if dataset_dir is not None:
        root = Path(dataset_dir)
        for source in [*cfg.data.scene, *cfg.data.crop]:
            for attr in ("path", "val"):
                value = getattr(source, attr)
                if value and value.startswith(DATA_PREFIX):
                    setattr(source, attr, str(root / value[len(DATA_PREFIX):]))
    if epochs:
        cfg.optim.epochs = int(epochs)
    if steps_per_epoch:
        cfg.optim.steps_per_epoch = int(steps_per_epoch)
    return cfg


def val_specs(cfg) -> list[str]:
    return [s.val or s.path for s in [*cfg.data.scene, *cfg.data.crop]]


def validate_params(params: dict[str, Any]) -> None:
    """Fail the pipeline at its first step on parameter values the later steps cannot honour."""
    if params.get("serve_precision", "fp32") not in SERVE_PRECISIONS:
        raise PipelineStepError(f"serve_precision must be one of {SERVE_PRECISIONS}, got {params['serve_precision']!r}")
    if params.get("target_backend", "python") not in SERVE_BACKENDS:
        raise PipelineStepError(f"target_backend must be one of {SERVE_BACKENDS} (a TensorRT engine is built with "
                                f"build_tensorrt and logged, not published yet), got {params['target_backend']!r}")
