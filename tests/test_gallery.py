"""The contact sheet of `mouaadnet detect --sheet` (the model card's failure pictures): matching, captions,
label files and the command's checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from _serving_utils import tiny_onnx
from PIL import Image
from typer.testing import CliRunner

from mouaadnet.cli.main import app
from mouaadnet.serving.gallery import caption, contact_sheet, count_matches, labelled_boxes


def person(box, score=0.9):
    return {"box": list(box), "score": score, "gender": "female", "p_female": 0.8, "age": 30.0}


def photo_bytes(w=200, h=100) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_matches_are_one_to_one_in_score_order():
    labelled = np.array([[0, 0, 10, 10], [100, 100, 120, 140]], np.float32)
    # two boxes on the first person: only the higher-scoring one counts; a box at IoU 0.25 counts for none
    people = [person((0, 0, 10, 10), 0.5), person((0, 0, 10, 11), 0.9), person((100, 100, 110, 120))]
    assert count_matches(people, labelled) == 1
    assert count_matches(people + [person((101, 101, 120, 140), 0.2)], labelled) == 2
    assert count_matches([], labelled) == 0


def test_captions_count_found_and_extra_boxes():
    labelled = np.array([[0, 0, 10, 10]], np.float32)
    assert caption(2, "a.jpg", [person((0, 0, 10, 10)), person((50, 50, 60, 60))], labelled) == \
        "2 a.jpg: 1/1 labelled found at IoU 0.5, 1 extra"
    assert caption(1, "b.png", [person((0, 0, 5, 5), 0.31)], None) == "1 b.png: 1 found, top score 0.31"
    assert caption(1, "c.png", [], None) == "1 c.png: 0 found"


def test_label_files_are_read_in_pixels_and_bad_lines_named(tmp_path):
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n1 0.5 0.5 0.1 0.1\n")
    boxes = labelled_boxes(tmp_path / "a.jpg", photo_bytes(200, 100), tmp_path)
    np.testing.assert_allclose(boxes, [[50, 25, 150, 75]])  # class 1 is not a person
    assert labelled_boxes(tmp_path / "none.jpg", photo_bytes(), tmp_path) is None
    (tmp_path / "bad.txt").write_text("0 0.5 0.5 0.5 0.5\n0 0.5 oops 0.5 0.5\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        labelled_boxes(tmp_path / "bad.jpg", photo_bytes(), tmp_path)


def test_sheet_tiles_every_image(tmp_path):
    blobs = [photo_bytes(200, 100), photo_bytes(100, 300), photo_bytes(50, 50), photo_bytes(80, 60)]
    names = [tmp_path / f"{i}.png" for i in range(4)]
    out = contact_sheet(names, blobs, [[person((10, 10, 40, 40))], [], [], []], tmp_path / "s.jpg",
                        columns=3, tile=120)
    sheet = np.asarray(Image.open(out))
    assert sheet.shape[:2] == (2 * (120 + 22), 3 * 120)
    assert sheet[2 * 142 - 30: 2 * 142 - 22, 120:].min() > 240  # the second row has one image only


def test_detect_writes_a_sheet_and_checks_labels(tmp_path):
    onnx = tiny_onnx(tmp_path / "model.onnx")
    photo = tmp_path / "a.png"
    photo.write_bytes(photo_bytes())
    runner = CliRunner()
    result = runner.invoke(app, ["detect", str(photo), "--model", str(onnx), "--sheet", str(tmp_path / "s.png"),
                                 "--labels", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "s.png").size == (3 * 420, 420 + 22)
    result = runner.invoke(app, ["detect", str(photo), "--model", str(onnx), "--labels", str(tmp_path)])
    assert result.exit_code == 2 and "needs --sheet" in result.output
    (tmp_path / "a.txt").write_text("0 0.5 0.5\n")
    result = runner.invoke(app, ["detect", str(photo), "--model", str(onnx), "--sheet", str(tmp_path / "s.png"),
                                 "--labels", str(tmp_path)])
    assert result.exit_code == 1 and "a.txt:1" in result.output
