"""`mouaadnet detect --model` (in-process ONNX Runtime path) and the client's input checks, without a server."""

from __future__ import annotations

import io
import json

import numpy as np
from _serving_utils import tiny_onnx
from PIL import Image
from typer.testing import CliRunner

from mouaadnet.cli.main import app


def write_photo(path, h=120, w=200):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)).save(path, "JPEG")
    return path


def test_detect_in_process_json_and_draw(tmp_path):
    onnx = tiny_onnx(tmp_path / "model.onnx")  # constant outputs: 100 zero-score rows
    photo = write_photo(tmp_path / "a.jpg")
    runner = CliRunner()
    result = runner.invoke(app, ["detect", str(photo), str(photo), "--model", str(onnx), "--threshold", "0",
                                 "--json", "--draw", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [p["image"] for p in payload] == [str(photo)] * 2
    assert len(payload[0]["people"]) == 100
    assert {"box", "score", "gender", "p_female", "age"} <= set(payload[0]["people"][0])
    assert Image.open(tmp_path / "out_0.png").size == (200, 120)
    text = runner.invoke(app, ["detect", str(photo), "--model", str(onnx)])
    assert text.exit_code == 0 and f"{photo}: 0 people" in text.output


def test_detect_reports_bad_files_and_missing_server(tmp_path):
    runner = CliRunner()
    notes = tmp_path / "notes.jpg"
    notes.write_text("hello")
    result = runner.invoke(app, ["detect", str(notes), "--url", "127.0.0.1:9"])
    assert result.exit_code == 1 and "notes.jpg: not an image" in result.output
    result = runner.invoke(app, ["detect", str(tmp_path / "missing.jpg")])
    assert result.exit_code == 1 and "no such file" in result.output
    photo = write_photo(tmp_path / "a.jpg")
    result = runner.invoke(app, ["detect", str(photo), "--url", "127.0.0.1:9"])
    assert result.exit_code == 1 and "is `mouaadnet serve` running?" in result.output


def test_draw_respects_exif_orientation(tmp_path):
    from mouaadnet.serving.client import draw

    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(np.zeros((60, 100, 3), np.uint8)).save(buf, "JPEG", exif=exif.tobytes())
    out = draw(buf.getvalue(), [{"box": [1, 2, 30, 40], "score": 0.9, "gender": "female", "p_female": 0.8,
                                 "age": 30.0}], tmp_path / "o.png")
    assert Image.open(out).size == (60, 100)


def test_detect_reports_an_unloadable_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    photo = write_photo(tmp_path / "a.jpg")
    result = CliRunner().invoke(app, ["detect", str(photo), "--model", str(bad)])
    assert result.exit_code == 1 and "cannot load with ONNX Runtime" in result.output
