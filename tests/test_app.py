"""`mouaadnet app`: the inference it runs (Predictor), and the running Gradio app end to end through gradio_client.

The app is started as a real subprocess (`python -m mouaadnet.cli app`) on a free 127.0.0.1 port and stopped by
its PID. A real photo in -> the people Predictor finds (same boxes, scores, genders, ages); bad files in -> a
clear error out, and the next request is still served.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from mouaadnet.apps.models import ModelError, Predictor
from mouaadnet.data.samples import sample_images
from mouaadnet.serving.prepost import ImageError

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def photos() -> dict[str, Path]:
    found = sample_images()
    if set(found) != {"astronaut.png", "grace_hopper.jpg"}:
        pytest.skip("scikit-image / matplotlib sample photos missing")
    return found


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, photos) -> dict[str, Path]:
    from PIL import Image

    out = tmp_path_factory.mktemp("bad")
    (out / "notes.jpg").write_text("this is not an image")
    data = photos["grace_hopper.jpg"].read_bytes()
    (out / "half.jpg").write_bytes(data[: len(data) // 2])
    Image.new("1", (20_000, 20_000)).save(out / "bomb.png", optimize=True)  # 400 MP in ~50 kB
    (out / "empty.png").write_bytes(b"")
    with open(out / "big.jpg", "wb") as f:  # over the app's 20 MB upload limit
        f.write(np.random.default_rng(0).integers(0, 255, 21_000_000, dtype=np.uint8).tobytes())
    return {p.name: p for p in out.iterdir()}


# ------------------------------------------------------------------------------------------- Predictor


def test_predictor_loads_lazily_and_matches_the_detect_path(standin, photos):
    from mouaadnet.serving.client import LocalDetector

    predictor = Predictor(standin["scene"], standin["crop"])
    assert predictor.loaded() == []
    data = photos["astronaut.png"].read_bytes()
    people = predictor.detect(data, 0.3)
    assert predictor.loaded() == ["scene"]
    assert people == LocalDetector(standin["scene"], threads=1).detect([data], 0.3)[0]
    assert len(people) >= 3


def test_crop_gives_gender_with_softmax_confidence_and_age(standin, photos):
    predictor = Predictor(standin["scene"], standin["crop"])
    result = predictor.classify_crop(photos["grace_hopper.jpg"].read_bytes())
    assert predictor.loaded() == ["crop"]
    p = result["p_female"]
    assert result["gender"] == ("female" if p >= 0.5 else "male")
    assert result["confidence"] == pytest.approx(max(p, 1 - p)) and 0.5 <= result["confidence"] <= 1
    assert 0 <= result["age"] <= 100


def test_predictor_refuses_bad_input_and_wrong_models(standin, bad_files):
    predictor = Predictor(standin["scene"], standin["crop"])
    with pytest.raises(ImageError, match="not an image"):
        predictor.detect(bad_files["notes.jpg"].read_bytes())
    with pytest.raises(ImageError, match="truncated"):
        predictor.detect(bad_files["half.jpg"].read_bytes())
    with pytest.raises(ImageError, match="too large"):
        predictor.detect(bad_files["bomb.png"].read_bytes(), max_pixels=24_000_000)
    with pytest.raises(ModelError, match="crop-mode model"):
        Predictor(standin["crop"]).detect(b"")
    with pytest.raises(ModelError, match="runtime must be one of"):  # `mouaadnet app` exits 2 with it
        Predictor(standin["scene"], runtime="tensorflow")


def test_predictor_runs_openvino_with_the_same_people(standin, photos):
    """`mouaadnet app --runtime openvino` (f32): the same people as ONNX Runtime, and it says what ran."""
    pytest.importorskip("openvino", reason="openvino is not installed: pip install 'mouaadnet-ultra[openvino]'")
    photo = photos["astronaut.png"].read_bytes()
    reference = Predictor(standin["scene"], standin["crop"]).detect(photo, 0.3)
    predictor = Predictor(standin["scene"], standin["crop"], runtime="openvino", precision="f32")
    people = predictor.detect(photo, 0.3)
    assert len(people) == len(reference) > 0
    for got, want in zip(people, reference):
        assert np.allclose(got["box"], want["box"], atol=1.0) and abs(got["score"] - want["score"]) < 1e-3
    assert "openvino" in predictor.describe_runtime("scene") and "f32" in predictor.describe_runtime("scene")
    crop = predictor.classify_crop(photo)
    assert crop == pytest.approx(Predictor(standin["scene"], standin["crop"]).classify_crop(photo), abs=1e-3)


def test_annotated_picture_keeps_the_photo_upright_and_bounded(photos):
    from PIL import Image

    from mouaadnet.apps.gradio_app import annotate

    person = {"box": [100.0, 50.0, 300.0, 500.0], "score": 0.9, "gender": "female", "p_female": 0.9, "age": 40.0}
    picture = annotate(photos["grace_hopper.jpg"].read_bytes(), [person])
    assert picture.size == (512, 600)
    big = io.BytesIO()
    Image.new("RGB", (4000, 3000), (20, 30, 40)).save(big, "JPEG")
    assert max(annotate(big.getvalue(), [person]).size) == 1280


def test_error_messages_are_plain_text(bad_files):
    from mouaadnet.apps.gradio_app import explain
    from mouaadnet.serving.prepost import preprocess_one

    with pytest.raises(ImageError) as error:
        preprocess_one(bad_files["notes.jpg"].read_bytes())
    text = explain(error.value)
    assert "<" not in text and "BytesIO" not in text and text.startswith("not an image (20 bytes")
    # prepost no longer passes Pillow's object reprs on; explain still strips one and escapes HTML if a message
    # carries them (another reader's error, a future Pillow wording)
    raw = ImageError("not an image: cannot identify image file <_io.BytesIO object at 0x7f00> & <b>x</b>")
    assert explain(raw) == "not an image: cannot identify image file &amp; &lt;b&gt;x&lt;/b&gt;"


# ------------------------------------------------------------------------------------------- running app


@pytest.fixture(scope="module")
def app(standin, tmp_path_factory):
    """`mouaadnet app` as a subprocess on a free port; stopped by PID at the end."""
    from mouaadnet.apps.app_bench import free_port, start_app, stop

    log = tmp_path_factory.mktemp("app") / "app.log"
    port = free_port()
    proc = start_app(standin["scene"], standin["crop"], port, log=log)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "proc": proc, "log": log}
    finally:
        stop(proc)
    assert proc.returncode is not None


@pytest.fixture(scope="module")
def client(app):
    return gradio_client.Client(app["url"], verbose=False)


def _scene(client, path: Path, threshold: float = 0.3):
    return client.predict(gradio_client.handle_file(str(path)), threshold, api_name="/scene")


def test_app_finds_the_people_predictor_finds(client, standin, photos):
    from PIL import Image

    expected = Predictor(standin["scene"], standin["crop"]).detect(photos["astronaut.png"].read_bytes(), 0.3)
    picture, table, note = _scene(client, photos["astronaut.png"])
    assert table["headers"] == ["#", "score", "gender", "probability", "P(female)", "age", "box (x1, y1, x2, y2)"]
    assert len(table["data"]) == len(expected) >= 3 and note.startswith(f"{len(expected)} people")
    for row, person in zip(table["data"], expected):
        n, score, gender, prob, p_female, age, box = row
        assert score == pytest.approx(person["score"], abs=1e-3) and gender == person["gender"]
        assert p_female == pytest.approx(person["p_female"], abs=1e-3)
        assert prob == pytest.approx(p_female if gender == "female" else 1 - p_female, abs=1e-3)
        assert age == pytest.approx(person["age"], abs=0.1)
        assert [float(v) for v in box.split(",")] == pytest.approx(person["box"], abs=0.6)
    with Image.open(picture) as im:
        assert im.size == (512, 512)


def test_app_crop_tab(client, photos):
    label, text = client.predict(gradio_client.handle_file(str(photos["grace_hopper.jpg"])), api_name="/crop")
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(confidences) == {"female", "male"} and sum(confidences.values()) == pytest.approx(1.0)
    assert label["label"] == max(confidences, key=confidences.get)
    assert "softmax confidence" in text and "±5 y" in text


@pytest.mark.parametrize("name, message", [("notes.jpg", "not an image"), ("half.jpg", "truncated"),
                                           ("bomb.png", "too large"), ("empty.png", "empty input")])
def test_app_refuses_bad_files_clearly_and_keeps_serving(client, bad_files, photos, name, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        _scene(client, bad_files[name])
    with pytest.raises(AppError, match=message):
        client.predict(gradio_client.handle_file(str(bad_files[name])), api_name="/crop")
    _, table, _ = _scene(client, photos["grace_hopper.jpg"])  # the next request is served
    assert table["data"]


def test_app_refuses_uploads_over_its_limit(client, bad_files, photos):
    with pytest.raises(Exception, match="maximum file size"):
        _scene(client, bad_files["big.jpg"])
    assert _scene(client, photos["astronaut.png"])[1]["data"]


def test_app_process_stays_light(app, client, photos):
    """No torch in the serving process (it would add hundreds of MB), and the models loaded lazily."""
    from mouaadnet.apps.app_bench import memory_mb

    _scene(client, photos["astronaut.png"])
    maps = Path(f"/proc/{app['proc'].pid}/maps").read_text()
    assert "libtorch" not in maps and "onnxruntime" in maps
    assert memory_mb(app["proc"].pid)["rss_mb"] < 600  # measured ~300 MB; docs/BENCHMARKS.md has the numbers


@pytest.mark.browser
def test_app_screenshot(shown_models, photos, screenshot_dir, tmp_path):
    """docs/app.png: the app as a user gets it (the shipped weights when there are some)."""
    from conftest_apps import missing_tool

    from mouaadnet.apps.app_bench import free_port, start_app, stop
    from mouaadnet.apps.browser import BrowserMissing, chromium, open_page

    port = free_port()
    proc = start_app(shown_models["scene"], shown_models["crop"], port, log=tmp_path / "app.log")
    try:
        with chromium() as browser:
            page = open_page(browser, f"http://127.0.0.1:{port}/", viewport=(1280, 900))
            page.locator("input[type=file]").first.set_input_files(str(photos["astronaut.png"]))
            page.get_by_role("button", name="Find people").click()
            page.wait_for_function("document.body.innerText.includes(' at score ')", timeout=120_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(screenshot_dir / "app.png"), full_page=True)
    except BrowserMissing as error:
        missing_tool(str(error))
    finally:
        stop(proc)
    assert (screenshot_dir / "app.png").stat().st_size > 10_000
