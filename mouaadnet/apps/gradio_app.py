"""`mouaadnet app`: a Gradio Blocks demo on 127.0.0.1, CPU only, ONNX Runtime in-process.

Tabs: **scene** (a photo or a webcam frame -> the picture with every person's box, P(female) and age + a table)
and **crop** (one face or body crop, the kiosk case -> gender with its softmax confidence and age with a ±5 y
band). Example photos come from pip packages. Models load on the first request (`Predictor`); the header shows
each model's file, precision, version and sha256 without loading it.

Uploads reach our own decoder unopened (`raw_image`), so a file that is not an image, a truncated one or one too
large gets prepost's message (`gr.Error`, shown in the page and returned to API clients), and the app keeps
serving. Gradio itself refuses files over `MAX_UPLOAD` before they reach us.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

from mouaadnet.data.samples import sample_images
from mouaadnet.serving.prepost import DEFAULT_THRESHOLD, ImageError, open_image

from .models import ModelError, Predictor, describe_model

logger = logging.getLogger("mouaadnet.app")
HOST = "127.0.0.1"
MAX_UPLOAD = "20mb"  # Gradio refuses larger uploads itself
MAX_PIXELS = 24_000_000  # decoded-size bound for the app (prepost allows 50 MP; one RGB copy here is 72 MB)
DISPLAY_SIDE = 1280  # the annotated picture is drawn on a copy no larger than this
AGE_BAND = 5.0
FEMALE, MALE = (230, 60, 160), (40, 140, 240)
SCENE_COLUMNS = ["#", "score", "gender", "probability", "P(female)", "age", "box (x1, y1, x2, y2)"]


# How the page names the runtime the app was started with (`mouaadnet app --runtime`).
RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "auto": "The gated fastest runtime (auto)"}
# Crop-tab examples: (file written, face box in the pip-packaged photo).
EXAMPLE_CROPS = {"astronaut.png": ("astronaut_face.png", (140, 10, 350, 250)),
                 "grace_hopper.jpg": ("grace_hopper_face.png", (110, 40, 400, 380))}


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls (and no network here)
    import gradio as gr

    return gr


def _read(value) -> bytes:
    """What a `raw_image` hands over (a path, or a data: URL for pasted images) -> the encoded bytes."""
    if value is None:
        raise ImageError("no image: upload a photo, take one with the webcam, or click an example")
    if isinstance(value, str) and value.startswith("data:"):
        try:
            return base64.b64decode(value.split(",", 1)[1], validate=False)
        except (IndexError, ValueError):
            raise ImageError("could not read the pasted image (bad data: URL)") from None
    try:
        return Path(value).read_bytes()
    except OSError as error:
        raise ImageError(f"could not read the upload: {error}") from None


def display_image(data: bytes, max_side: int = DISPLAY_SIDE):
    """Encoded bytes -> an upright RGB PIL image no larger than max_side (JPEG draft keeps huge ones cheap)."""
    from PIL import Image, ImageOps

    image = open_image(data, max_pixels=MAX_PIXELS)
    try:
        if image.format in ("JPEG", "MPO") and max(image.size) > max_side:
            image.draft("RGB", (max_side, max_side))
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB")
    except Exception as error:  # noqa: BLE001 - truncated data fails here, with Pillow's words
        raise ImageError(f"truncated or corrupt {image.format} image ({len(data)} bytes): {error}") from None
    image.thumbnail((max_side, max_side), Image.BILINEAR)
    return image


def annotate(data: bytes, people: list[dict]):
    """The photo with each person's box and 'P(f) 0.82 · 34 y' (female magenta, male blue), as on the web page."""
    from PIL import ImageDraw, ImageFont

    image = display_image(data)
    full_w, full_h = _oriented_size(data)
    sx, sy = image.width / full_w, image.height / full_h
    pen = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    font_px = max(12, round(max(image.size) / 45))
    try:
        font = ImageFont.load_default(font_px)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    for p in people:
        x1, y1, x2, y2 = p["box"]
        box = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
        colour = FEMALE if p["gender"] == "female" else MALE
        pen.rectangle(box, outline=colour, width=width)
        label = f"P(f) {p['p_female']:.2f} · {p['age']:.0f} y"
        left, top, right, bottom = pen.textbbox((0, 0), label, font=font)
        ty = max(0, box[1] - (bottom - top) - 6)
        tx = max(0, min(box[0], image.width - (right - left) - 6))  # keep the label inside the picture
        pen.rectangle([tx, ty, tx + right - left + 6, ty + bottom - top + 6], fill=colour)
        pen.text((tx + 3 - left, ty + 3 - top), label, fill=(255, 255, 255), font=font)
    return image


def _oriented_size(data: bytes) -> tuple[int, int]:
    from mouaadnet.serving.prepost import _orientation, _oriented_size

    image = open_image(data, max_pixels=MAX_PIXELS)
    return _oriented_size(image, _orientation(image))


def scene_rows(people: list[dict]) -> list[list]:
    rows = []
    for i, p in enumerate(people, 1):
        prob = p["p_female"] if p["gender"] == "female" else 1.0 - p["p_female"]
        rows.append([i, round(p["score"], 3), p["gender"], round(prob, 3), round(p["p_female"], 3),
                     round(p["age"], 1), ", ".join(f"{v:.0f}" for v in p["box"])])
    return rows


def crop_text(result: dict) -> str:
    low, high = max(0.0, result["age"] - AGE_BAND), min(100.0, result["age"] + AGE_BAND)
    return (f"**{result['gender']}** ({result['confidence']:.1%} softmax confidence; "
            f"P(female) = {result['p_female']:.3f})  \n"
            f"**age {result['age']:.0f} y** (band {low:.0f}–{high:.0f} y, ±{AGE_BAND:.0f} y)")


def example_crops(out_dir: Path) -> list[Path]:
    """Crop-tab examples cut from the pip-packaged photos: the astronaut's head and shoulders, Grace Hopper."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    samples = sample_images()
    made = []
    for photo, (name, box) in EXAMPLE_CROPS.items():
        if photo not in samples:
            continue
        path = out_dir / name
        if not path.is_file():
            with Image.open(samples[photo]) as im:
                im.convert("RGB").crop(box).save(path)
        made.append(path)
    return made


def explain(error: Exception) -> str:
    """The message a user sees: prepost's words without Pillow's object reprs, safe as HTML (Gradio renders it)."""
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(error))
    return html.escape(text, quote=False)


def _refuse(gr, error: Exception):
    """A gr.Error for a request we cannot serve: shown in the page, returned to API clients; one log line."""
    message = explain(error)
    logger.warning("refused a request: %s", message)
    return gr.Error(message, title="Cannot use this image", print_exception=False)


def _model_line(mode: str, path: Path | None) -> str:
    if path is None:
        return f"- **{mode}**: none configured"
    try:
        info = describe_model(path, check=False)
    except ModelError as error:
        return f"- **{mode}**: {error}"
    return (f"- **{mode}**: `{info.file}` · {info.precision} · {info.version} · "
            f"{info.bytes / 1e6:.2f} MB · sha256 `{info.sha256}`")


def build_app(predictor: Predictor, examples_dir: Path | None = None):
    """The Blocks app around ``predictor`` (nothing is loaded until the first request)."""
    gr = _gradio()

    def raw_image(**kwargs):
        """A gr.Image whose value reaches our function unopened (the upload's path, or a data: URL): prepost
        decodes and reports bad files, not Pillow inside Gradio's own preprocessing. The instance's preprocess
        is replaced (a subclass would make Gradio write a .pyi stub next to this file)."""
        component = gr.Image(type="filepath", **kwargs)

        def preprocess(payload):
            if payload is None:
                return None
            if payload.url and payload.url.startswith("data:"):
                return payload.url
            return payload.path

        component.preprocess = preprocess
        return component

    def run_scene(image, threshold):
        started = time.perf_counter()
        try:
            data = _read(image)
            people = predictor.detect(data, float(threshold), max_pixels=MAX_PIXELS)
            picture = annotate(data, people)
        except (ImageError, ModelError, ValueError) as error:
            raise _refuse(gr, error) from None
        ms = (time.perf_counter() - started) * 1e3
        note = (f"{len(people)} {'person' if len(people) == 1 else 'people'} at score ≥ {float(threshold):.2f} "
                f"· {ms:.0f} ms (decode, model, drawing)")
        return np.asarray(picture), scene_rows(people), note

    def run_crop(image):
        started = time.perf_counter()
        try:
            result = predictor.classify_crop(_read(image), max_pixels=MAX_PIXELS)
        except (ImageError, ModelError, ValueError) as error:
            raise _refuse(gr, error) from None
        ms = (time.perf_counter() - started) * 1e3
        label = {"female": result["p_female"], "male": 1.0 - result["p_female"]}
        return label, crop_text(result) + f"  \n{ms:.0f} ms"

    samples = sample_images()
    crops = example_crops(examples_dir) if examples_dir is not None else []
    header = "\n".join([_model_line(mode, predictor.paths[mode]) for mode in ("scene", "crop")])
    with gr.Blocks(title="MouaadNet-Ultra") as demo:
        runtime = RUNTIME_NAMES.get(predictor.runtime, predictor.runtime)
        gr.Markdown(f"## MouaadNet-Ultra: people, gender, age  \n{runtime} on this CPU; the models load on "
                    "the first request.\n" + header)
        with gr.Tab("scene"):
            with gr.Row():
                with gr.Column():
                    scene_in = raw_image(label="photo or webcam", sources=["upload", "webcam", "clipboard"])
                    threshold = gr.Slider(0.05, 0.95, value=DEFAULT_THRESHOLD, step=0.05, label="min score")
                    scene_go = gr.Button("Find people", variant="primary")
                with gr.Column():
                    scene_out = gr.Image(label="people found", type="numpy", format="png", interactive=False)
                    scene_note = gr.Markdown()
            scene_table = gr.Dataframe(headers=SCENE_COLUMNS, label="people", interactive=False, wrap=True)
            if samples:
                gr.Examples([[str(p)] for p in samples.values()], inputs=[scene_in], label="examples (pip packages)")
            scene_go.click(run_scene, [scene_in, threshold], [scene_out, scene_table, scene_note],
                           api_name="scene")
        with gr.Tab("crop"):
            with gr.Row():
                with gr.Column():
                    crop_in = raw_image(label="one face or body crop", sources=["upload", "webcam", "clipboard"])
                    crop_go = gr.Button("Gender and age", variant="primary")
                with gr.Column():
                    crop_label = gr.Label(label="gender (softmax)", num_top_classes=2)
                    crop_note = gr.Markdown()
            if crops:
                gr.Examples([[str(p)] for p in crops], inputs=[crop_in], label="examples (cut from pip-package photos)")
            crop_go.click(run_crop, [crop_in], [crop_label, crop_note], api_name="crop")
    return demo


def launch(predictor: Predictor, port: int = 7860, examples_dir: Path | None = None, block: bool = True):
    """Serve on 127.0.0.1:port; returns the Blocks (``block=False`` returns at once, for tests)."""
    gr = _gradio()
    demo = build_app(predictor, examples_dir)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    allowed = [str(p.parent) for p in sample_images().values()] + ([str(examples_dir)] if examples_dir else [])
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=HOST, server_port=port, show_error=True, max_file_size=MAX_UPLOAD, theme=theme,
                allowed_paths=allowed, prevent_thread_lock=not block, quiet=True)
    return demo
