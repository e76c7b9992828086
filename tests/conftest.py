"""Shared test helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine weights, so folding bugs cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.2)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.3)
        for m in model.modules():  # after the shared ones, so those stay what every fixture had before
            if hasattr(m, "crop_running_mean"):  # ModeBatchNorm2d: crop statistics of their own
                m.crop_running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.crop_running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.2)
    return model


def checkpoint_and_config(folder, model: nn.Module, scenes: int = 12, crops: int = 12):
    """A checkpoint of ``model`` (epoch 3) and a training config over synthetic scenes and crops, in ``folder``."""
    import yaml

    ckpt = folder / "best.pt"
    torch.save({"model": model.state_dict(), "model_config": model.cfg.model_dump(), "epoch": 3}, ckpt)
    config = folder / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": model.cfg.model_dump(),
        "data": {"scene": [{"path": f"synthetic:{scenes}:0", "val": "synthetic:6:12345"}],
                 "crop": [{"path": f"synthetic-crops:{crops}:1", "val": "synthetic-crops:8:54321"}]}}))
    return ckpt, config


@pytest.fixture
def rand_bn():
    return randomize_batchnorm


# Real local services (SeaweedFS S3, mlflow server) for `integration` tests.
# The apps' stand-in model and browser-toolchain helpers (tests/test_web*.py, tests/test_app.py).
from conftest_apps import screenshot_dir, shown_models, standin  # noqa: E402, F401
from conftest_services import mlflow_server_uri, mlflow_tracking_server, s3_service  # noqa: E402, F401

# Session fixtures of tests/reliability/ (the stand-in ONNX and one real Triton server).
from reliability._fixtures import standin_onnx, triton  # noqa: E402, F401

# The reliability scoreboard (tests/scoreboard.py): the `scoreboard` fixture and the hooks that write it.
from scoreboard import (  # noqa: E402, F401
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
    scoreboard,
)
