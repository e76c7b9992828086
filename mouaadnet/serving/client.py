"""Query the served model over gRPC (`mouaadnet detect`), or run the same pipeline in-process (ONNX Runtime or
OpenVINO, ``mouaadnet.runtime``).

Both paths use mouaadnet.serving.prepost, so their results can be compared one to one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .prepost import (
    DEFAULT_THRESHOLD,
    ImageError,
    check_threshold,
    open_image,
    postprocess,
    preprocess_batch,
    to_people,
)

ENSEMBLE = "mouaadnet"
RESULT_NAMES = ("boxes", "scores", "gender", "age", "count")


class ClientError(RuntimeError):
    """Server down, model not ready, bad input file: the message says which and what to do."""


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".mpo")


def expand_paths(paths: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Files as given; a folder stands for the image files directly in it (sorted by name, by suffix
    ``IMAGE_SUFFIXES``; subfolders are not searched). Returns the files and one note per folder."""
    files, notes = [], []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        entries = sorted((p for p in path.iterdir() if p.is_file()), key=lambda p: p.name)
        images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise ClientError(f"{path}: a folder with no image files in it (looked for {' '.join(IMAGE_SUFFIXES)}; "
                              "subfolders are not searched)")
        skipped = len(entries) - len(images)
        notes.append(f"{path}: {len(images)} image(s)" + (f", {skipped} other file(s) skipped" if skipped else ""))
        files += images
    return files, notes


def read_images(paths: list[str | Path]) -> list[bytes]:
    """Read files and check each is an image we can decode (header check only); raises ClientError."""
    blobs = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ClientError(f"{path}: no such file or folder" if not path.exists() else f"{path}: not a file")
        data = path.read_bytes()
        try:
            open_image(data)
        except ImageError as error:
            raise ClientError(f"{path}: {error}") from None
        blobs.append(data)
    return blobs


class TritonDetector:
    """gRPC client of the `mouaadnet` ensemble; batches several images per request."""

    def __init__(self, url: str = "127.0.0.1:8001", model: str = ENSEMBLE, timeout: float = 30.0):
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError as error:  # pragma: no cover
            raise ClientError(f"tritonclient[grpc] is not installed: {error}") from None
        self._grpc, self._error_type = grpcclient, InferenceServerException
        self.url, self.model, self.timeout = url, model, timeout
        self.client = grpcclient.InferenceServerClient(url)
        self.max_batch = self._check_ready()

    def _check_ready(self) -> int:
        try:
            live = self.client.is_server_live(client_timeout=self.timeout)
        except self._error_type as error:
            raise ClientError(f"cannot reach Triton at {self.url} ({error.message()}); "
                              "is `mouaadnet serve` running?") from None
        if not live:
            raise ClientError(f"Triton at {self.url} is not live")
        try:
            ready = self.client.is_model_ready(self.model, client_timeout=self.timeout)
        except self._error_type as error:
            ready = False
            reason = error.message()
        else:
            reason = ""
        if not ready:
            try:
                index = self.client.get_model_repository_index(as_json=True).get("models", [])
                states = [f"{m['name']} {m.get('state', '?')} {m.get('reason', '')}".strip() for m in index]
            except self._error_type:
                states = []
            raise ClientError(f"model '{self.model}' is not ready on {self.url} {reason}".rstrip()
                              + (f" (repository: {'; '.join(states)})" if states else ""))
        config = self.client.get_model_config(self.model, as_json=True)["config"]
        return int(config.get("max_batch_size", 0)) or 1

    def infer_raw(self, blobs: list[bytes], threshold: float | None = None) -> dict[str, np.ndarray]:
        """One request with len(blobs) images; returns the padded output arrays."""
        grpc = self._grpc
        image = grpc.InferInput("image", [len(blobs), 1], "BYTES")
        image.set_data_from_numpy(np.array([[b] for b in blobs], dtype=np.object_).reshape(len(blobs), 1))
        inputs = [image]
        if threshold is not None:
            t = grpc.InferInput("score_threshold", [len(blobs), 1], "FP32")
            t.set_data_from_numpy(np.full((len(blobs), 1), check_threshold(threshold), np.float32))
            inputs.append(t)
        outputs = [grpc.InferRequestedOutput(name) for name in RESULT_NAMES]
        try:
            result = self.client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout)
        except self._error_type as error:
            raise ClientError(f"inference failed: {error.message()}") from None
        return {name: result.as_numpy(name) for name in RESULT_NAMES}

    def detect(self, blobs: list[bytes], threshold: float = DEFAULT_THRESHOLD) -> list[list[dict]]:
        people: list[list[dict]] = []
        for start in range(0, len(blobs), self.max_batch):
            people += to_people(self.infer_raw(blobs[start : start + self.max_batch], threshold))
        return people


class LocalDetector:
    """The same pipeline in-process: prepost + a CPU runtime (``mouaadnet.runtime``), no server.

    ``runtime``: "onnxruntime" (default), "openvino" (``precision`` "f32"/"bf16", None = OpenVINO's default on
    this CPU) or "auto" (the choice recorded by ``mouaadnet gates --choose`` beside the model, else ONNX Runtime).
    """

    def __init__(self, onnx_path: str | Path, threads: int | None = None, runtime: str = "onnxruntime",
                 precision: str | None = None):
        from mouaadnet.runtime import RuntimeLoadError, open_model

        if not Path(onnx_path).is_file():
            raise ClientError(f"{onnx_path}: no such model file")
        try:
            self.model = open_model(onnx_path, runtime, precision, threads)
        except RuntimeLoadError as error:
            raise ClientError(str(error)) from None
        if self.model.mode != "scene":
            raise ClientError(f"{onnx_path}: a crop-mode model; detect needs a scene-mode graph (boxes, scores, ...)")

    def describe(self) -> str:
        return self.model.describe()

    def infer_raw(self, blobs: list[bytes], threshold: float = DEFAULT_THRESHOLD) -> dict[str, np.ndarray]:
        try:
            images, meta = preprocess_batch(blobs, self.model.size)
        except ImageError as error:
            raise ClientError(str(error)) from None
        out = self.model(images)
        return postprocess(out["boxes"], out["scores"], out["gender"], out["age"], meta, threshold)

    def detect(self, blobs: list[bytes], threshold: float = DEFAULT_THRESHOLD) -> list[list[dict]]:
        return to_people(self.infer_raw(blobs, threshold))


def format_people(name: str, people: list[dict]) -> list[str]:
    lines = [f"{name}: {len(people)} {'person' if len(people) == 1 else 'people'}"]
    for p in people:
        x1, y1, x2, y2 = p["box"]
        prob = p["p_female"] if p["gender"] == "female" else 1 - p["p_female"]
        lines.append(f"  box [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]  score {p['score']:.2f}  "
                     f"{p['gender']} ({prob:.2f})  age {p['age']:.0f}")
    return lines


def as_json(paths: list, people: list[list[dict]]) -> str:
    return json.dumps([{"image": str(p), "people": ppl} for p, ppl in zip(paths, people)], indent=2)


def draw(image_bytes: bytes, people: list[dict], out: str | Path) -> Path:
    """Write the (EXIF-oriented) image with boxes and 'gender age score' labels."""
    image = annotate(image_bytes, people)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def annotate(image_bytes: bytes, people: list[dict], labelled: np.ndarray | None = None):
    """The (EXIF-oriented) image as a PIL image with ``labelled`` boxes [K, 4] (pixels) in yellow under the found
    people's boxes and 'gender age score' labels (pink: female, blue: male)."""
    import io

    from PIL import Image, ImageDraw, ImageOps

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes))).convert("RGB")
    pen = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    for box in [] if labelled is None else labelled.tolist():
        pen.rectangle(box, outline=(250, 230, 40), width=max(1, width // 2))
    for p in people:
        colour = (230, 60, 160) if p["gender"] == "female" else (40, 140, 240)
        pen.rectangle(p["box"], outline=colour, width=width)
        label = f"{p['gender'][0].upper()} {p['age']:.0f}y {p['score']:.2f}"
        x, y = p["box"][0], max(0, p["box"][1] - 12)
        pen.rectangle(pen.textbbox((x, y), label), fill=colour)
        pen.text((x, y), label, fill=(255, 255, 255))
    return image
