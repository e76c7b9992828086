"""Serving pre/post-processing without a server: decode, EXIF, bounds, letterbox, normalise, map back."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mouaadnet.serving import prepost
from mouaadnet.serving.prepost import ImageError


def encode(array: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny (invalid) body: a decompression-bomb stand-in."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_pad_value_matches_model():
    from model.preprocess import PAD_VALUE

    assert prepost.PAD_VALUE == PAD_VALUE


def test_letterbox_matches_training_letterbox():
    from mouaadnet.data.augment import letterbox

    image = gradient(120, 200)
    ours, box = prepost.letterbox_image(image, 320)
    theirs, _, scale, (pad_x, pad_y) = letterbox(image, None, 320)
    assert (box.pad_x, box.pad_y) == (pad_x, pad_y) and box.scale == pytest.approx(scale)
    assert ours.shape == theirs.shape == (320, 320, 3)
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 2.0  # same geometry; resamplers may differ


def test_preprocess_png_geometry_and_normalisation():
    image = gradient(100, 200)
    tensor, meta = prepost.preprocess_one(encode(image), 320)
    assert tensor.shape == (3, 320, 320) and tensor.dtype == np.float32
    scale, pad_x, pad_y, w, h = meta
    assert (w, h) == (200, 100) and scale == pytest.approx(1.6) and (pad_x, pad_y) == (0, 80)
    assert tensor.min() >= 0 and tensor.max() <= 1
    assert np.allclose(tensor[:, 0, 0], 114 / 255)  # padding grey
    assert np.allclose(tensor[:, 319, 319], 114 / 255)


def test_normalize_matches_model_preprocess():
    from model.preprocess import image_to_tensor

    image = gradient(64, 32)
    assert np.allclose(prepost.normalize(image), image_to_tensor(image).numpy(), atol=1e-7)


def test_exif_orientation_is_applied():
    image = gradient(60, 100)  # 100 wide, 60 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    decoded, full = prepost.decode_image(buf.getvalue())
    assert decoded.shape[:2] == (100, 60) and full == (60, 100)
    _, meta = prepost.preprocess_one(buf.getvalue(), 320)
    assert tuple(meta[3:]) == (60, 100)


def test_jpeg_draft_decode_keeps_full_size_geometry():
    image = gradient(960, 1280)
    data = encode(image, "JPEG", quality=90)
    decoded, full = prepost.decode_image(data, 320)
    assert full == (1280, 960)
    assert max(decoded.shape[:2]) >= 320 and decoded.shape[1] < 1280  # reduced DCT scale, not below target
    tensor, meta = prepost.preprocess_one(data, 320)
    assert tuple(meta[3:]) == (1280, 960) and meta[0] == pytest.approx(0.25)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_other_modes_become_rgb(mode):
    image = Image.fromarray(gradient(40, 50)).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 256)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    tensor, _ = prepost.preprocess_one(buf.getvalue(), 64)
    assert tensor.shape == (3, 64, 64)


@pytest.mark.parametrize("data, message", [
    (b"", "empty input"),
    (b"this is not an image at all", "not an image"),
    (b"\x89PNG\r\n\x1a\n", "not an image"),
])
def test_bad_bytes_raise_clear_errors(data, message):
    with pytest.raises(ImageError, match=message):
        prepost.preprocess_one(data)


def test_truncated_jpeg_is_refused():
    data = encode(gradient(200, 300), "JPEG", quality=90)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        prepost.preprocess_one(data[: len(data) // 2])


def test_huge_dimensions_refused_before_decoding():
    with pytest.raises(ImageError, match="too large"):
        prepost.open_image(png_header_only(100_000, 100_000))
    with pytest.raises(ImageError, match="too large"):
        prepost.open_image(png_header_only(20_000, 10), max_side=16_384)
    with pytest.raises(ImageError, match="too large"):
        prepost.open_image(png_header_only(8_000, 8_000), max_pixels=50_000_000)


def test_preprocess_batch_names_the_bad_image():
    good = encode(gradient(50, 50))
    images, meta = prepost.preprocess_batch([good, good], 64)
    assert images.shape == (2, 3, 64, 64) and meta.shape == (2, 5)
    with pytest.raises(ImageError, match="image 1: empty"):
        prepost.preprocess_batch([good, b""], 64)
    with pytest.raises(ImageError, match="no images"):
        prepost.preprocess_batch([], 64)


def test_postprocess_threshold_and_map_back():
    # image 200x100 letterboxed to 320: scale 1.6, pad (0, 80)
    meta = np.array([[1.6, 0, 80, 200, 100], [1.6, 0, 80, 200, 100]], np.float32)
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, 0] = [16, 96, 160, 160]  # -> (10, 10, 100, 50)
    boxes[0, 1] = [-50, 70, 400, 300]  # clipped to the image
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.1, 0.05]], np.float32)
    gender = np.full((2, 3), 0.7, np.float32)
    age = np.full((2, 3), 33.0, np.float32)
    out = prepost.postprocess(boxes, scores, gender, age, meta, 0.3)
    assert out["count"].tolist() == [[2], [0]]
    assert out["boxes"].shape == (2, 2, 4)
    assert np.allclose(out["boxes"][0, 0], [10, 10, 100, 50])
    assert np.allclose(out["boxes"][0, 1], [0, 0, 200, 100])
    assert np.all(out["boxes"][1] == 0) and np.all(out["scores"][1] == 0)
    people = prepost.to_people(out)
    assert len(people[0]) == 2 and people[1] == []
    assert people[0][0]["gender"] == "female" and people[0][0]["age"] == 33.0
    per_image = prepost.postprocess(boxes, scores, gender, age, meta, np.array([0.95, 0.15], np.float32))
    assert per_image["count"].ravel().tolist() == [0, 1]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_postprocess_rejects_bad_threshold(bad):
    z = np.zeros((1, 2), np.float32)
    with pytest.raises(ValueError, match="score_threshold"):
        prepost.postprocess(np.zeros((1, 2, 4), np.float32), z, z, z, np.ones((1, 5), np.float32), bad)


def test_postprocess_round_trips_a_letterboxed_box():
    """A box drawn in original pixels, pushed through the letterbox, comes back unchanged."""
    box, _, _ = prepost.letterbox_geometry(640, 427, 320)
    original = np.array([100.0, 50.0, 300.0, 400.0], np.float32)
    model_px = original * box.scale + np.array([box.pad_x, box.pad_y] * 2, np.float32)
    out = prepost.postprocess(model_px[None, None], np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32),
                              np.zeros((1, 1), np.float32), box.as_row()[None], 0.5)
    assert np.allclose(out["boxes"][0, 0], original, atol=1e-3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(orientation):
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(gradient(30, 50)).save(buf, "PNG", exif=exif.tobytes())
    ours, full = prepost.decode_image(buf.getvalue())
    theirs = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    assert np.array_equal(ours, theirs) and full == (theirs.shape[1], theirs.shape[0])


def test_corrupt_png_and_jpeg_are_refused_not_decoded():
    png = bytearray(encode(gradient(60, 80)))
    pos = png.find(b"IDAT")
    (length,) = struct.unpack(">I", png[pos - 4:pos])
    png[pos + 4 + length] ^= 0xFF  # the IDAT CRC only: the pixels themselves would still inflate
    with pytest.raises(ImageError, match="fails its CRC check"):
        prepost.preprocess_one(bytes(png), 64)
    jpeg = bytearray(encode(gradient(300, 400), "JPEG", quality=90))
    start = len(jpeg) // 3
    jpeg[start:start + 2000] = b"\0" * 2000
    with pytest.raises(ImageError, match="Corrupt JPEG data"):
        prepost.preprocess_one(bytes(jpeg), 64)


def test_16_bit_png_is_scaled_by_65535():
    grey = gradient(40, 50)[..., 0] // 2  # max 127: stretching by the image's own max would double it
    png16 = encode(grey.astype(np.uint16) * 257)
    png8 = encode(grey)
    a, _ = prepost.preprocess_one(png16, 64)
    b, _ = prepost.preprocess_one(png8, 64)
    np.testing.assert_allclose(a, b, atol=1 / 255)


def test_request_budget_is_checked_before_decoding():
    with pytest.raises(prepost.BudgetError, match="request too expensive"):
        prepost.preprocess_batch([png_header_only(16_384, 3_051)] * 2, 64)  # 100 MP of headers, nothing decoded
    images, _ = prepost.preprocess_batch([encode(gradient(50, 50))] * 3, 64, max_request_pixels=10_000)
    assert images.shape == (3, 3, 64, 64)


def test_model_input_and_meta_checks():
    prepost.check_model_input(np.zeros((1, 3, 8, 8), np.float32))
    for bad, message in ((np.nan, "NaN"), (np.inf, "Inf"), (2.0, "must lie in")):
        frame = np.zeros((1, 3, 8, 8), np.float32)
        frame[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match=message):
            prepost.check_model_input(frame)
    with pytest.raises(ValueError, match="meta column scale"):
        prepost.check_meta(np.array([[0.0, 0, 0, 10, 10]], np.float32))
