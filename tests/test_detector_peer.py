"""The Yolo-Fastest peer of `bench-detect` on tiny darknet nets written here (no ../shared, no real weights): the cfg
copy with thresh=0.0, the person column, NMS and top 100, boxes in image pixels, the clear errors; and one run of
the whole bench on synthetic scenes with the random stand-in as ours."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from mouaadnet.bench.detector_peer import (
    PEERS,
    PeerError,
    YoloFastest,
    import_cv2,
    net_size,
    nms,
    peer_files,
    with_thresh,
)

try:
    import_cv2()
    HAS_CV2 = True
except PeerError:  # not installed, or OpenCV 5 (no Darknet reader)
    HAS_CV2 = False
needs_cv2 = pytest.mark.skipif(not HAS_CV2, reason="no OpenCV with the Darknet reader (the [bench] extra: "
                                                    "pip install 'mouaadnet-ultra[bench]')")


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def write_net(folder: Path, stem: str = "tiny", size: int = 32, stride: int = 8, anchors: tuple = ((8, 8), (9, 9)),
              biases: dict[int, float] | None = None, weights: dict[tuple[int, int], float] | None = None,
              random: bool = False, extra: str = "thresh=0.25\nignore_thresh=.5\n") -> tuple[Path, Path]:
    """One 1x1 conv (no BN, linear; stride ``stride``) and a one-class [yolo] layer, as <stem>.cfg + .weights.

    Per anchor the conv's 6 channels are x, y, w, h, objectness, class logits. ``biases`` {channel: value} and
    ``weights`` {(out channel, input channel): value} set them (zeros elsewhere): with zero weights every cell
    predicts the same box around its own centre, so what the peer returns is known exactly."""
    filters = 6 * len(anchors)
    cfg = folder / f"{stem}.cfg"
    cfg.write_text(
        f"[net]\nwidth={size}\nheight={size}\nchannels=3\n\n"
        f"[convolutional]\nfilters={filters}\nsize=1\nstride={stride}\npad=0\nactivation=linear\n\n"
        f"[yolo]\nmask={','.join(str(i) for i in range(len(anchors)))}\n"
        f"anchors={', '.join(f'{w},{h}' for w, h in anchors)}\nclasses=1\nnum={len(anchors)}\n{extra}")
    rng = np.random.default_rng(0)
    bias = rng.normal(0, 1, filters).astype(np.float32) if random else np.zeros(filters, np.float32)
    kernel = rng.normal(0, 1, (filters, 3)).astype(np.float32) if random else np.zeros((filters, 3), np.float32)
    for channel, value in (biases or {}).items():
        bias[channel] = value
    for (out, inp), value in (weights or {}).items():
        kernel[out, inp] = value
    header = np.array([0, 2, 0], np.int32).tobytes() + np.zeros(1, np.int64).tobytes()  # major, minor, rev, seen
    path = folder / f"{stem}.weights"
    path.write_bytes(header + bias.tobytes() + kernel.tobytes())  # no BN: biases, then the weights
    return cfg, path


def test_with_thresh_sets_it_in_every_yolo_section_only() -> None:
    text = ("[net]\nthresh=0.7\n[yolo]\nmask=0\nthresh = 0.25\nignore_thresh=.5\ntruth_thresh=1\n"
            "[convolutional]\nfilters=1\n[yolo]\nmask=1\niou_thresh=0.2\n")
    patched = with_thresh(text)
    sections = patched.split("[")
    yolos = [s for s in sections if s.startswith("yolo]")]
    assert len(yolos) == 2 and all(s.count("thresh=0\n") == 1 for s in yolos)
    assert "thresh = 0.25" not in patched
    assert all(k in patched for k in ("[net]\nthresh=0.7", "ignore_thresh=.5", "truth_thresh=1", "iou_thresh=0.2"))
    assert net_size(patched) == (416, 416) and net_size("[net]\nwidth=320\nheight=192\n") == (320, 192)


@needs_cv2
def test_reads_a_random_darknet_net(tmp_path: Path) -> None:
    cfg, weights = write_net(tmp_path, random=True)
    peer = YoloFastest(cfg, weights)
    assert (peer.width, peer.height) == (32, 32)
    image = np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    rows = peer.rows(peer.prepare(image)[0])
    assert rows.shape == (4 * 4 * 2, 6)  # 4x4 cells x 2 anchors, cx cy w h objectness person
    out = peer(image)
    assert out["boxes"].shape == (len(out["scores"]), 4) and out["boxes"].dtype == np.float32
    assert len(out["scores"]) <= 100 and np.all(np.diff(out["scores"]) <= 0)


@needs_cv2
def test_thresh_zero_keeps_the_scores_opencv_would_drop(tmp_path: Path) -> None:
    """Anchor 0: objectness 0.5 x class 0.5 = 0.25; anchor 1: 0.12 x 0.12 = 0.014, under OpenCV's default 0.2."""
    cv2 = import_cv2()
    cfg, weights = write_net(tmp_path, biases={10: -2.0, 11: -2.0}, extra="")
    blob = np.zeros((1, 3, 32, 32), np.float32)
    raw = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    raw.setInput(blob)
    default = np.concatenate(raw.forward(raw.getUnconnectedOutLayersNames()))
    low = sigmoid(-2) ** 2
    assert np.allclose(default[1::2, 5], 0)  # the cfg as it is: OpenCV cut them
    rows = YoloFastest(cfg, weights).rows(blob)
    assert np.allclose(rows[0::2, 5], 0.25, atol=1e-5) and np.allclose(rows[1::2, 5], low, atol=1e-5)


@needs_cv2
def test_nms_removes_the_duplicate_and_keeps_the_better(tmp_path: Path) -> None:
    """Each cell predicts two boxes around the same centre (anchors 8 and 9 px: IoU 0.79): one survives, the one
    with the higher score; neighbouring cells' boxes only touch, so all 16 cells keep one."""
    cfg, weights = write_net(tmp_path, biases={10: -1.0, 11: -1.0})
    out = YoloFastest(cfg, weights)(np.zeros((32, 32, 3), np.uint8))
    assert len(out["scores"]) == 16 and np.allclose(out["scores"], 0.25, atol=1e-5)
    assert np.allclose(out["boxes"][:, 2] - out["boxes"][:, 0], 8)  # the 8 px anchor's box, not the 9 px one

    boxes = np.array([[0, 0, 10, 10], [0.5, 0, 10.5, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.5, 0.9, 0.3], np.float32)).tolist() == [1, 2]


@needs_cv2
def test_keeps_the_top_100(tmp_path: Path) -> None:
    cfg, weights = write_net(tmp_path, stride=2, anchors=((2, 2),), biases={4: 3.0, 5: 3.0})  # 256 disjoint boxes
    out = YoloFastest(cfg, weights)(np.zeros((32, 32, 3), np.uint8))
    assert len(out["scores"]) == 100


@needs_cv2
def test_boxes_come_back_in_the_image_pixels(tmp_path: Path) -> None:
    """Stretched input: a 40x20 image's cells are 10x5 px and the 8 px anchor (1/4 of the input) is 10x5 px too."""
    cfg, weights = write_net(tmp_path, anchors=((8, 8),))
    out = YoloFastest(cfg, weights)(np.zeros((20, 40, 3), np.uint8))
    boxes = out["boxes"]
    assert len(boxes) == 16
    assert np.allclose(boxes[:, 2] - boxes[:, 0], 10) and np.allclose(boxes[:, 3] - boxes[:, 1], 5)
    assert sorted(set(boxes[:, 0].round(3))) == [0, 10, 20, 30] and sorted(set(boxes[:, 1].round(3))) == [0, 5, 10, 15]


@needs_cv2
def test_input_is_rgb_over_255(tmp_path: Path) -> None:
    """The class logit reads the first input channel: 1.0 for a pure red RGB image (255 / 255), 0 for blue."""
    cfg, weights = write_net(tmp_path, anchors=((8, 8),), weights={(5, 0): 1.0})
    peer = YoloFastest(cfg, weights)
    red, blue = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    assert np.allclose(peer(red)["scores"], 0.5 * sigmoid(1.0), atol=1e-5)
    assert np.allclose(peer(blue)["scores"], 0.25, atol=1e-5)


def test_missing_opencv_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    with pytest.raises(PeerError, match=r"pip install 'mouaadnet-ultra\[bench\]'"):
        import_cv2()


def test_missing_peer_folder_or_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(PeerError, match="not found.*--peer-dir"):
        peer_files(tmp_path / "nope", "body")
    (tmp_path / f"{PEERS['xl'].stem}.cfg").write_text("[net]\n")
    with pytest.raises(PeerError, match=r"lacks yolo-fastest-1.1-xl.weights"):
        peer_files(tmp_path, "xl")


def test_cli_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mouaadnet.cli.main import app

    args = ["bench-detect", "--model", str(tmp_path / "x.onnx"), "--peer-dir", str(tmp_path / "nope")]
    if HAS_CV2:
        done = CliRunner().invoke(app, args)
        assert done.exit_code == 2 and "peer folder" in done.output and "--peer-dir" in done.output
    monkeypatch.setitem(sys.modules, "cv2", None)
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2 and "pip install 'mouaadnet-ultra[bench]'" in done.output


@needs_cv2
def test_bench_runs_ours_and_the_peers_on_the_same_images(tmp_path: Path) -> None:
    from mouaadnet.bench.detectors import bench_detect, format_table
    from mouaadnet.export.standin import export_standin_onnx

    for name in PEERS:  # the tiny net under both peers' file names
        write_net(tmp_path, stem=PEERS[name].stem, size=64, stride=16, anchors=((16, 32),), biases={4: 1.0})
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  scene:\n    - path: synthetic:8:1\n      val_fraction: 0.5\n")
    ours = export_standin_onnx(tmp_path / "standin.onnx", seed=0)
    result = bench_detect([ours], config, limit=3, peer_dir=tmp_path, extra=["synthetic:2:5"], progress=False)
    assert list(result["models"]) == ["ours (standin.onnx)", PEERS["body"].label, PEERS["xl"].label]
    assert [s["images"] for s in result["sets"].values()] == [3, 2]
    for model in result["models"].values():
        assert model["ms_p50"] > 0 and set(model["sets"]) == set(result["sets"])
        assert all(0 <= m["AP50"] <= 1 for m in model["sets"].values())
    table = format_table(result)
    assert sum(line.startswith("| ") for line in table.splitlines()) == 4 and "AP50 / AP75 / AP50:95" in table and "1 thread(s)" in table
