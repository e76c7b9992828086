"""The shipped weights (weights/): every file matches its sha256 sidecar, the manifest's default precision
passed the gates on real data, and `mouaadnet detect` with no server and no --model finds the astronaut."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mouaadnet.weights import WeightsError, default_model, load_manifest, verify_weights, weights_dir

pytestmark = pytest.mark.skipif(not (weights_dir() / "manifest.json").is_file(),
                                reason="no shipped weights in weights/ (mouaadnet ship)")

# Where she is in skimage.data.astronaut() (512x512): top of her hair to the bottom edge, her left arm to her
# right shoulder; the helmet she holds, the flag and the shuttle model excluded. Read off the picture by hand,
# not from a detection.
ASTRONAUT_BOX = (20.0, 15.0, 370.0, 512.0)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_every_shipped_file_matches_its_sidecar() -> None:
    files = verify_weights()
    names = {p.name for p in files}
    assert {"mouaadnet.pt", "mouaadnet.scene.fp32.onnx", "mouaadnet.scene.int8.onnx", "mouaadnet.crop.fp32.onnx",
            "mouaadnet.crop.int8.onnx"} <= names
    assert all(p.stat().st_size > 0 for p in files)


def test_int8_is_default_only_when_it_passed_and_fits_a_megabyte() -> None:
    manifest = load_manifest()
    for mode in ("scene", "crop"):
        assert manifest["models"][mode]["default"] in ("fp32", "int8")
        if manifest["models"][mode]["default"] == "int8":
            assert manifest["gates"]["passed"] is True
            assert default_model(mode).stat().st_size <= 1_000_000


def test_a_changed_file_is_refused(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "weights"
    shutil.copytree(weights_dir(), copy, ignore=shutil.ignore_patterns("resume"))
    onnx = copy / load_manifest(copy)["models"]["scene"]["fp32"]
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    with pytest.raises(WeightsError, match="sha256"):
        default_model("scene", "fp32", copy)


def test_detect_with_no_server_and_no_model_finds_the_astronaut(tmp_path: Path) -> None:
    from PIL import Image
    from skimage import data

    from mouaadnet.cli.main import app

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    result = CliRunner().invoke(app, ["detect", str(photo), "--json"])
    assert result.exit_code == 0, result.output
    people = json.loads(result.stdout)[0]["people"]  # stderr says which model and runtime ran
    on_her = [p for p in people if _iou(p["box"], ASTRONAUT_BOX) >= 0.3]
    assert len(on_her) == 1, people  # she is found, with no duplicate box on her (v2 adds one on the flag)
    person = on_her[0]
    assert _iou(person["box"], ASTRONAUT_BOX) >= 0.5, person
    assert 0.0 <= person["p_female"] <= 1.0 and 0 <= person["age"] <= 100
    assert np.isfinite(person["score"])
