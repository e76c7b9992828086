"""Yolo-Fastest 1.1 (dog-qiuqiu/Yolo-Fastest, YOLO licence), the person-detector peer of `mouaadnet bench-detect`.

Darknet cfg + weights from ``../shared/peers/yolo-fastest/`` read with OpenCV's DNN module, run as that folder's
README says (and as the authors' ncnn sample does): the image **stretched** to the cfg's input size (320x320), RGB,
values / 255, no mean; each ``[yolo]`` row is cx, cy, w, h (fractions of the input), objectness, then class scores
already multiplied by objectness, so the person score is column 5 + person class. OpenCV zeroes every class score
<= ``thresh`` (0.2 unless the cfg says otherwise), so the net is read from a copy of the cfg with ``thresh=0.0`` in
each ``[yolo]`` section: AP needs the whole score range. OpenCV applies no NMS there: class-agnostic NMS at IoU 0.45
(Darknet's default) with ``cv2.dnn.NMSBoxes``, the top 100 kept, boxes in the image's own pixels.

``detect`` returns ``{"boxes": [N,4] x1,y1,x2,y2, "scores": [N]}``, the per-image dict that
``mouaadnet.evaluation.metrics.detection_metrics`` scores. OpenCV is a bench extra (``pip install
'mouaadnet-ultra[bench]'``), imported only here and only when a peer is loaded.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mouaadnet.evaluation.evaluate import MIN_DETECTION_SCORE

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PEER_DIR = REPO.parent / "shared" / "peers" / "yolo-fastest"
NMS_IOU = 0.45  # Darknet's default
MAX_DETECTIONS = 100  # as our exported graph keeps (top-k 100) and COCO's maxDets
INSTALL_HINT = ("pip install 'mouaadnet-ultra[bench]' (opencv-python-headless>=4.8,<5; `make test`'s install "
                "includes it)")


class PeerError(RuntimeError):
    """The peer cannot run here: OpenCV missing or too new, or its folder or files missing."""


@dataclass(frozen=True)
class PeerSpec:
    label: str
    stem: str  # <stem>.cfg + <stem>.weights in the peer folder
    person_class: int  # class index of a person in the model's class list


PEERS: dict[str, PeerSpec] = {
    "body": PeerSpec("Yolo-Fastest 1.1 body", "yolo-fastest-1.1_body", 0),
    "xl": PeerSpec("Yolo-Fastest 1.1-XL (COCO person)", "yolo-fastest-1.1-xl", 0),
}


def import_cv2() -> Any:
    """OpenCV's module with the Darknet reader, else PeerError saying how to install it."""
    try:
        import cv2
    except ImportError:
        raise PeerError(f"the Yolo-Fastest peer needs OpenCV, which is not installed: {INSTALL_HINT}") from None
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):
        # OpenCV 5 dropped the Darknet importer.
        raise PeerError(f"OpenCV {cv2.__version__} has no cv2.dnn.readNetFromDarknet: {INSTALL_HINT}")
    return cv2


def peer_files(peer_dir: str | Path, name: str) -> tuple[Path, Path]:
    """(cfg, weights) of peer ``name`` ("body" / "xl") in ``peer_dir``; PeerError naming what is missing."""
    if name not in PEERS:
        raise PeerError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    folder = Path(peer_dir)
    if not folder.is_dir():
        raise PeerError(f"peer folder {folder} not found: it holds the Yolo-Fastest 1.1 darknet cfg + weights "
                        f"(../shared/peers/yolo-fastest beside the repository; give another with --peer-dir)")
    files = (folder / f"{PEERS[name].stem}.cfg", folder / f"{PEERS[name].stem}.weights")
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise PeerError(f"peer folder {folder} lacks {', '.join(missing)} (see its README.md)")
    return files


def with_thresh(cfg_text: str, thresh: float = 0.0) -> str:
    """The cfg with ``thresh=<thresh>`` as the only ``thresh`` key of every ``[yolo]`` section (others untouched;
    ``ignore_thresh`` / ``truth_thresh`` / ``iou_thresh`` are other keys)."""
    out, section = [], None
    for line in cfg_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.lower()
            out.append(line)
            if section == "[yolo]":
                out.append(f"thresh={thresh:g}")
            continue
        if section == "[yolo]" and re.fullmatch(r"thresh\s*=.*", stripped):
            continue  # replaced by the line written under the header
        out.append(line)
    return "\n".join(out) + "\n"


def net_size(cfg_text: str) -> tuple[int, int]:
    """(width, height) of the cfg's ``[net]`` section (Darknet's default 416 when absent)."""
    net = re.search(r"^\s*\[net\](.*?)(?=^\s*\[|\Z)", cfg_text, re.M | re.S)
    body = net.group(1) if net else ""

    def value(key: str) -> int:
        found = re.search(rf"^\s*{key}\s*=\s*(\d+)", body, re.M)
        return int(found.group(1)) if found else 416

    return value("width"), value("height")


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU, score_threshold: float = 0.0,
        top: int = MAX_DETECTIONS) -> np.ndarray:
    """Indices kept by class-agnostic NMS (cv2.dnn.NMSBoxes on x1,y1,x2,y2 boxes), highest score first, at most
    ``top``. NMSBoxes' own top_k caps the candidates *before* suppression, so the cap is applied after."""
    cv2 = import_cv2()
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(np.float64).tolist(), score_threshold, iou)
    return np.asarray(keep, np.int64).reshape(-1)[:top]


class YoloFastest:
    """One Yolo-Fastest net in OpenCV DNN (CPU, ``threads`` threads). ``prepare(image)`` is the untimed part
    (stretch + RGB / 255); ``detect(prepared)`` the network and its decode, what the bench times."""

    runtime = "OpenCV DNN"

    def __init__(self, cfg: str | Path, weights: str | Path, person_class: int = 0, label: str | None = None,
                 threads: int = 1, score_threshold: float = MIN_DETECTION_SCORE, nms_iou: float = NMS_IOU,
                 max_detections: int = MAX_DETECTIONS) -> None:
        cv2 = self.cv2 = import_cv2()
        cv2.setNumThreads(threads)
        text = with_thresh(Path(cfg).read_text())
        self.width, self.height = net_size(text)
        with tempfile.TemporaryDirectory(prefix="yolo-fastest-") as tmp:
            patched = Path(tmp) / Path(cfg).name  # OpenCV reads the cfg by path
            patched.write_text(text)
            self.net = cv2.dnn.readNetFromDarknet(str(patched), str(weights))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.outputs = list(self.net.getUnconnectedOutLayersNames())
        self.column = 5 + person_class
        self.label = label or Path(cfg).stem
        self.path = Path(weights)
        self.score_threshold, self.nms_iou, self.max_detections = score_threshold, nms_iou, max_detections

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, int, int]:
        """HxWx3 uint8 RGB -> (blob [1,3,h,w] stretched, RGB / 255; image width; image height)."""
        blob = self.cv2.dnn.blobFromImage(image, 1 / 255.0, (self.width, self.height), swapRB=False, crop=False)
        return blob, image.shape[1], image.shape[0]

    def rows(self, blob: np.ndarray) -> np.ndarray:
        """Every ``[yolo]`` row of the net on ``blob``: [R, 5 + classes]."""
        self.net.setInput(blob)
        return np.concatenate([o.reshape(-1, o.shape[-1]) for o in self.net.forward(self.outputs)])

    def detect(self, prepared: tuple[np.ndarray, int, int]) -> dict[str, np.ndarray]:
        """Persons in image pixels: {"boxes": [N,4] x1,y1,x2,y2, "scores": [N]}, NMS'd, best first."""
        blob, width, height = prepared
        return self.decode(self.rows(blob), width, height)

    def decode(self, rows: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
        """[yolo] rows -> person boxes scaled from input fractions to a ``width`` x ``height`` image."""
        scores = rows[:, self.column].astype(np.float32)
        cand = np.flatnonzero(scores >= self.score_threshold)  # the rest could never be kept: skip their NMS
        cx, cy, w, h = (rows[cand, i] for i in range(4))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * np.float32([width, height] * 2)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = nms(boxes, scores[cand], self.nms_iou, self.score_threshold, self.max_detections)
        return {"boxes": boxes[keep].astype(np.float32), "scores": scores[cand][keep]}

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return self.detect(self.prepare(image))


def load_peer(name: str, peer_dir: str | Path = DEFAULT_PEER_DIR, threads: int = 1) -> YoloFastest:
    """Peer ``name`` ("body" / "xl") from ``peer_dir``; PeerError with the fix when it cannot load."""
    import_cv2()  # the install hint before any file check
    cfg, weights = peer_files(peer_dir, name)
    spec = PEERS[name]
    return YoloFastest(cfg, weights, spec.person_class, spec.label, threads)
