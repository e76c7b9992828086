"""Fixtures for the apps' tests (browser page, Gradio app): a stand-in model exported once per session, and the
checks that the browser toolchain is there (skipped when it is not, except in CI, where `make test` installs it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def standin(tmp_path_factory) -> dict[str, Path]:
    """A seeded random MouaadNet exported as scene.onnx + crop.onnx (distinct peaks: see export_standin)."""
    from mouaadnet.export.standin import export_standin

    return export_standin(tmp_path_factory.mktemp("standin"))


@pytest.fixture(scope="session")
def shown_models(standin) -> dict[str, Path]:
    """What the screenshots show: the shipped weights the apps run by default (weights/), else the stand-in."""
    from mouaadnet.apps.models import shipped_model

    shipped = {mode: shipped_model(mode, "fp32") for mode in ("scene", "crop")}
    return shipped if all(shipped.values()) else standin


def missing_tool(message: str):
    """Skip, or fail under CI=true: CI's `make test` installs Chromium, Playwright and onnxruntime-web."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (make test installs it; CI must not skip the browser tests)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    """Where screenshots go: MOUAADNET_SCREENSHOTS (e.g. docs/, by `make screenshots`), else a temp folder."""
    path = Path(os.environ.get("MOUAADNET_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path
