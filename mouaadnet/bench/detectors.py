"""`mouaadnet bench-detect`: our scene model beside the Yolo-Fastest 1.1 peers (``detector_peer``) on the same
person validation images, in one run: AP50 / AP75 / AP50:95 per set and ms per image.

The sets are the scene validation splits of a training config (the identity split training used, as
``mouaadnet evaluate --config`` reads them) plus extra sources (Penn-Fudan by default: never trained on). Every model
sees the same decoded image (EXIF applied, RGB: ``mouaadnet.data.dataset.load_image``, as ``evaluate`` reads it) and is scored against the same boxes in the image's own pixels by
the one AP implementation, ``mouaadnet.evaluation.metrics.detection_metrics`` (pycocotools), with the detections
``evaluate`` keeps (score >= ``MIN_DETECTION_SCORE``, top 100). Each model gets its own input as it was built for
(ours: letterbox, grey 114; the peer: stretched); the timing covers the network and its decode back to image boxes
(ours: the exported graph, which already decodes and keeps the top 100, then the letterbox undone; the peer: the
forward pass, the person column, NMS), batch 1, 1 thread, the models taking turns image by image so that a change
of load on a shared CPU hits them alike.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mouaadnet.bench.detector_peer import DEFAULT_PEER_DIR, PEERS, REPO, load_peer
from mouaadnet.evaluation.evaluate import MIN_DETECTION_SCORE
from mouaadnet.evaluation.metrics import detection_metrics
from mouaadnet.runtime.timing import cpu_name

DEFAULT_EXTRA = (str(REPO.parent / "shared" / "data" / "pennfudan"),)
# The names and order of the sets; others keep their source name, after these.
SET_LABELS = {"street_person": "street val", "coco_person": "COCO val", "cctv_clinic": "clinic val",
              "pennfudan": "Penn-Fudan"}
WARMUP = 5  # untimed calls per model first: first-run allocations out of the timing


class Detector(Protocol):
    label: str
    runtime: str
    path: Path

    def prepare(self, image: np.ndarray) -> Any: ...

    def detect(self, prepared: Any) -> dict[str, np.ndarray]: ...


class OursOnnx:
    """Our scene ONNX in ONNX Runtime (the graph decodes: boxes, scores, gender, age [1,K])."""

    def __init__(self, path: str | Path, threads: int = 1, label: str | None = None) -> None:
        from mouaadnet.runtime import open_model

        self.session = open_model(path, "onnxruntime", threads=threads)
        if self.session.mode != "scene":
            raise ValueError(f"{path}: a crop-mode graph; bench-detect needs a scene-mode export")
        self.path = Path(path)
        self.label = label or f"ours ({self.path.name})"
        self.runtime = f"ORT {self.session.precision.upper()}"

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Letterboxed RGB / 255 [1,3,S,S] and its geometry row (scale, pad_x, pad_y, orig_w, orig_h)."""
        from mouaadnet.data.letterbox import letterbox_image
        from mouaadnet.serving.prepost import normalize

        boxed, box = letterbox_image(image, self.session.size)
        return normalize(boxed)[None], box.as_row()[None]

    def detect(self, prepared: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        """Persons in image pixels, as ``evaluate`` keeps them (score >= MIN_DETECTION_SCORE)."""
        from mouaadnet.serving.prepost import postprocess

        x, meta = prepared
        out = self.session(x)
        people = postprocess(out["boxes"], out["scores"], out["gender"], out["age"], meta, MIN_DETECTION_SCORE)
        count = int(people["count"][0, 0])
        return {"boxes": people["boxes"][0, :count], "scores": people["scores"][0, :count]}


def ours(path: str | Path, workdir: Path, threads: int = 1) -> OursOnnx:
    """Our model from a scene ONNX, or from a checkpoint (any arch) exported to FP32 ONNX in ``workdir`` first."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OursOnnx(path, threads)
    from model.artifacts import load_model_checkpoint
    from model.export import export_onnx

    model, cfg = load_model_checkpoint(path)
    onnx = workdir / f"{path.stem}.scene.fp32.onnx"
    export_onnx(model, onnx, "scene", cfg.scene_size)
    return OursOnnx(onnx, threads, label=f"ours ({path.name}, {cfg.arch})")


def scene_sets(config: str | Path, extra: Sequence[str], limit: int | None) -> list:
    """The config's scene validation splits plus ``extra`` sources, first ``limit`` images each, in SET_LABELS
    order (``mouaadnet.evaluation.gates.load_eval_sets``, as `evaluate --config --data` reads them)."""
    from mouaadnet.evaluation.gates import load_eval_sets

    sets = [s for s in load_eval_sets(list(extra), limit, config) if s.mode == "scene"]
    order = list(SET_LABELS)
    return sorted(sets, key=lambda s: order.index(s.name) if s.name in order else len(order))


def _warm_up(detectors: list[Detector], image: np.ndarray, calls: int = WARMUP) -> None:
    for detector in detectors:
        prepared = detector.prepare(image)
        for _ in range(calls):
            detector.detect(prepared)


def _run_set(detectors: list[Detector], samples: list, bar: Any) -> tuple[dict[str, list], dict[str, list], list]:
    """Detections and ms per image of every model, taking turns (the first model rotates per image)."""
    from mouaadnet.data.dataset import load_image

    preds: dict[str, list] = {d.label: [] for d in detectors}
    times: dict[str, list] = {d.label: [] for d in detectors}
    truths = []
    for index, sample in enumerate(samples):
        image = load_image(sample)
        truths.append({"boxes": sample.boxes})
        for detector in detectors[index % len(detectors):] + detectors[:index % len(detectors)]:
            prepared = detector.prepare(image)
            start = time.perf_counter()
            preds[detector.label].append(detector.detect(prepared))
            times[detector.label].append((time.perf_counter() - start) * 1e3)
        bar.update(1)
    return preds, times, truths


def bench_detect(models: Sequence[str | Path], config: str | Path, limit: int | None = None,
                 peer_dir: str | Path = DEFAULT_PEER_DIR, peers: Sequence[str] = tuple(PEERS),
                 extra: Sequence[str] = DEFAULT_EXTRA, threads: int = 1, progress: bool = True) -> dict[str, Any]:
    """{"sets": {name: {label, images, people}}, "models": {label: {runtime, path, sets: {name: AP50, AP75,
    AP50_95, AR100, ms_p50, ms_mean}, ms_p50, ms_mean}}, "cpu", "threads", "load_average"}.

    Raises ``detector_peer.PeerError`` (OpenCV or the peer folder missing) before any data is read."""
    from tqdm import tqdm

    with ExitStack() as stack:
        detectors: list[Detector] = [load_peer(name, peer_dir, threads) for name in peers]
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-detect-")))
        detectors = [ours(m, workdir, threads) for m in models] + detectors
        labels = [d.label for d in detectors]
        if len(set(labels)) != len(labels):
            raise ValueError(f"two models with the same name: {labels}")
        sets = scene_sets(config, extra, limit)
        if not sets or not any(s.samples for s in sets):
            raise ValueError(f"no scene validation images in {config} / {list(extra)}")
        from mouaadnet.data.dataset import load_image

        _warm_up(detectors, load_image(next(s for s in sets if s.samples).samples[0]))
        bar = stack.enter_context(tqdm(total=sum(len(s.samples) for s in sets), unit="img", desc="bench-detect",
                                       disable=not progress))
        result: dict[str, Any] = {"sets": {}, "models": {d.label: {"runtime": d.runtime, "path": str(d.path),
                                                                   "sets": {}} for d in detectors}}
        all_ms: dict[str, list[float]] = {label: [] for label in labels}
        for eval_set in sets:
            bar.set_description(eval_set.name)
            preds, times, truths = _run_set(detectors, eval_set.samples, bar)
            result["sets"][eval_set.name] = {"label": SET_LABELS.get(eval_set.name, eval_set.name),
                                             "images": len(truths), "people": int(sum(len(t["boxes"]) for t in truths))}
            for label in labels:
                metrics = detection_metrics(preds[label], truths)
                row = {k: metrics[k] for k in ("AP50", "AP75", "AP50_95", "AR100")}
                row.update(ms_p50=float(np.median(times[label])), ms_mean=float(np.mean(times[label])))
                result["models"][label]["sets"][eval_set.name] = row
                all_ms[label] += times[label]
    for label, ms in all_ms.items():
        result["models"][label].update(ms_p50=float(np.median(ms)), ms_mean=float(np.mean(ms)))
    result.update(cpu=cpu_name(), cores=os.cpu_count(), threads=threads,
                  load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    return result


def format_table(result: dict[str, Any]) -> str:
    """One Markdown table: a row per model, per set AP50 / AP75 / AP50:95, then ms / image over every image."""
    def ap(value: float) -> str:
        return "–" if not np.isfinite(value) else f"{value:.3f}"

    sets = result["sets"]
    total = sum(s["images"] for s in sets.values())
    head = ["model", "runtime"] + [f"{s['label']} ({s['images']} img, {s['people']} people) AP50 / AP75 / AP50:95"
                                   for s in sets.values()]
    head.append(f"ms / image p50 (mean), {total} images")
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for label, m in result["models"].items():
        cells = [label, m["runtime"]]
        cells += [" / ".join(ap(m["sets"][name][k]) for k in ("AP50", "AP75", "AP50_95")) for name in sets]
        cells.append(f"{m['ms_p50']:.2f} ({m['ms_mean']:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    load = result.get("load_average")
    lines.append("")
    lines.append(f"Batch 1, {result['threads']} thread(s), {result['cpu']} ({result['cores']} cores)"
                 + (f"; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end." if load else "."))
    return "\n".join(lines)
