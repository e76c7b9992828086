"""Bad and odd requests to the real server: each gets a clear error naming the problem (or, for odd but valid
images, a correct answer), and the next good request is still served.

Covers the ensemble (`mouaadnet`) and the inner models clients can also call (`detector`, `postprocess`:
Triton 2.51 cannot hide an ensemble's steps; its restricted-API options work per API, not per model).
"""

from __future__ import annotations

import threading
import time

import _images as img
import numpy as np
import pytest
from _rel import THRESHOLD, image_input, tensor_input

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(600)]

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def client(triton):
    return grpcclient.InferenceServerClient(triton.grpc_url)


@pytest.fixture(scope="module")
def good():
    return img.good_jpeg()


def _threshold(values):
    return tensor_input("score_threshold", np.asarray(values, np.float32).reshape(-1, 1))


def _frame(value=0.5, shape=(1, 3, 320, 320)):
    return np.full(shape, value, np.float32)


def _post_inputs(meta=None, boxes=None):
    n, k = 1, 100
    arrays = {"boxes": boxes if boxes is not None else np.tile(np.array([10, 10, 50, 90], np.float32), (n, k, 1)),
              "scores": np.full((n, k), 0.9, np.float32), "gender": np.full((n, k), 0.5, np.float32),
              "age": np.full((n, k), 30.0, np.float32),
              "meta": meta if meta is not None else np.array([[1.0, 0, 0, 320, 320]], np.float32)}
    return [tensor_input(name, a) for name, a in arrays.items()]


def _cases(good):
    """(name, model, inputs, expected error substring or None for success, what was sent)."""
    png16, png8 = img.png16_and_png8()
    nan_frame = _frame()
    nan_frame[0, 1, 5, 5] = np.nan
    inf_frame = _frame()
    inf_frame[0, 0, 0, 0] = np.inf
    f32 = tensor_input("image", np.zeros((1, 1), np.float32))
    return [
        ("wrong input name", "mouaadnet", [image_input([good], name="picture")], "picture", "image sent as 'picture'"),
        ("wrong dtype (FP32 for BYTES)", "mouaadnet", [f32], "expects 'BYTES'", "image as FP32 [1,1]"),
        ("wrong shape [1,2]", "mouaadnet", [image_input([good, good], shape=(1, 2))], "shape", "image BYTES [1,2]"),
        ("batch over max_batch_size", "mouaadnet", [image_input([good] * 17)], "batch-size must be <= 16",
         "17 images in one request"),
        ("empty bytes", "mouaadnet", [image_input([b""])], "empty input", "b''"),
        ("non-image bytes", "mouaadnet", [image_input([b"GIF89 but really just text"])], "not an image",
         "26 bytes of text"),
        ("truncated JPEG", "mouaadnet", [image_input([img.jpeg_truncated()])], "truncated or corrupt",
         "first third of a JPEG"),
        ("JPEG with zeroed bytes mid-image", "mouaadnet", [image_input([img.jpeg_zeroed()])], "Corrupt JPEG data",
         "2000 bytes zeroed inside the entropy-coded data"),
        ("PNG whose IDAT CRC fails", "mouaadnet", [image_input([img.png_bad_idat_crc()])], "fails its CRC",
         "valid PNG with its IDAT checksum flipped"),
        ("PNG with a damaged IDAT byte", "mouaadnet", [image_input([img.png_damaged_idat()])], "corrupt PNG",
         "one compressed byte flipped"),
        ("decompression bomb header", "mouaadnet", [image_input([img.png_header_only(100_000, 100_000)])],
         "too large", "PNG header claiming 100000x100000"),
        ("20000x10 image", "mouaadnet", [image_input([img.png_header_only(20_000, 10)])], "too large",
         "PNG 20000x10 (over 16384 px a side)"),
        ("batch of 16 huge PNG headers over the request budget", "mouaadnet",
         [image_input([img.png_header_only(16_384, 3_051)] * 16)], "request too expensive",
         "16 x 16384x3051 (800 MP) in one request"),
        ("unsupported format (PPM)", "mouaadnet", [image_input([img.ppm()])], "unsupported image format",
         "a PPM image"),
        ("PNG IDAT zeroed, CRCs recomputed", "mouaadnet", [image_input([img.png_idat_zeroed_valid_crc()])],
         "fails its zlib checksum", "512x416 PNG, 2000 IDAT bytes zeroed, chunk CRCs recomputed"),
        ("PNG with only half its rows", "mouaadnet", [image_input([img.png_half_rows()])], "208 of 416 rows",
         "512x416 PNG whose (valid) zlib stream holds 208 rows"),
        ("zeroed WebP", "mouaadnet", [image_input([img.webp_zeroed()])], "zero bytes in a row",
         "512x416 WebP, 2000 bytes zeroed a third of the way in"),
        ("truncated WebP", "mouaadnet", [image_input([img.webp_truncated()])], "truncated WebP",
         "first half of a WebP"),
        ("zeroed deflate TIFF", "mouaadnet", [image_input([img.tiff_deflate_zeroed()])], "corrupt TIFF",
         "512x416 deflate TIFF, 2000 bytes zeroed a third of the way in"),
        ("score_threshold without an image", "mouaadnet", [_threshold([0.3])], "needs input 'image'",
         "score_threshold [1,1] only"),
        ("empty image tensor [0,1]", "mouaadnet", [image_input([], shape=(0, 1))], "empty tensor",
         "image BYTES of shape [0,1]"),
        ("threshold NaN", "mouaadnet", [image_input([good]), _threshold([np.nan])], "score_threshold", "NaN"),
        ("threshold negative", "mouaadnet", [image_input([good]), _threshold([-0.1])], "score_threshold", "-0.1"),
        ("threshold 2.0", "mouaadnet", [image_input([good]), _threshold([2.0])], "score_threshold", "2.0"),
        ("threshold INT32", "mouaadnet", [image_input([good]),
                                          tensor_input("score_threshold", np.ones((1, 1), np.int32), "INT32")],
         "expects 'FP32'", "score_threshold as INT32"),
        ("unknown model", "nosuchmodel", [image_input([good])], "nosuchmodel", "request to model 'nosuchmodel'"),
        ("detector: NaN input", "detector", [tensor_input("images", nan_frame)], "contains NaN",
         "FP32 frame with one NaN"),
        ("detector: Inf input", "detector", [tensor_input("images", inf_frame)], "Inf", "FP32 frame with +Inf"),
        ("detector: 0..255 instead of 0..1", "detector", [tensor_input("images", _frame(128.0))],
         "must lie in [0, 1]", "pixel values not divided by 255"),
        ("detector: wrong size 64x64", "detector", [tensor_input("images", _frame(shape=(1, 3, 64, 64)))],
         "shape", "[1,3,64,64]"),
        ("postprocess: NaN meta", "postprocess", _post_inputs(meta=np.array([[np.nan, 0, 0, 320, 320]], np.float32)),
         "meta column scale contains NaN", "meta scale NaN"),
        ("postprocess: negative scale", "postprocess",
         _post_inputs(meta=np.array([[-1.0, 0, 0, 320, 320]], np.float32)), "meta column scale", "scale -1"),
        ("postprocess: orig size 0", "postprocess", _post_inputs(meta=np.array([[1.0, 0, 0, 0, 320]], np.float32)),
         "meta column orig_w", "orig_w 0"),
        ("postprocess: Inf boxes", "postprocess",
         _post_inputs(boxes=np.full((1, 100, 4), np.inf, np.float32)), "boxes contains +Inf", "boxes +Inf"),
    ]


def test_bad_requests_get_clear_errors_and_the_next_good_request_is_served(client, good, scoreboard):
    good_inputs = [image_input([good])]
    problems = []
    for name, model, inputs, expected, sent in _cases(good):
        started = time.monotonic()
        try:
            client.infer(model, inputs, client_timeout=60)
            observed, ok = "succeeded (no error)", False
        except InferenceServerException as error:
            observed = error.message()
            ok = expected in observed
        elapsed = time.monotonic() - started
        try:
            after = client.infer("mouaadnet", good_inputs, client_timeout=60).as_numpy("count").shape == (1, 1)
        except InferenceServerException as error:
            after, observed = False, f"{observed}; next good request FAILED: {error.message()}"
        ok = ok and after
        scoreboard.record("bad-input", f"triton: {name}", done=f"{sent} -> {model}",
                          observed=f"{observed} ({elapsed * 1000:.0f} ms); next good request served" if after
                          else observed, ok=ok, bad_inputs=1, requests=2, failed=1, good_failed=0 if after else 1)
        if not ok:
            problems.append(f"{name}: {observed}")
    assert not problems, problems


def _serve(client, blobs, threshold=THRESHOLD):
    result = client.infer("mouaadnet", [image_input(blobs), _threshold([threshold] * len(blobs))],
                          client_timeout=60)
    return {name: result.as_numpy(name) for name in ("boxes", "scores", "count")}


def test_odd_but_valid_images_are_served_correctly(client, scoreboard):
    from mouaadnet.serving import prepost

    png16, png8 = img.png16_and_png8()
    cases = [
        ("1x1 image", img.tiny_png(1, 1), "a 1x1 PNG", None),
        ("CMYK JPEG", img.cmyk_jpeg(), "the photo as a CMYK JPEG", None),
        ("16-bit PNG", png16, "the photo as a 16-bit grey PNG", png8),
        ("PNG with alpha", img.rgba_png(), "RGBA PNG, alpha 128", None),
        ("animated GIF", img.animated_gif(), "2-frame GIF", None),
        ("EXIF-rotated JPEG", img.exif_rotated_jpeg(), "320x200 JPEG with orientation 6", None),
    ]
    problems = []
    for name, blob, sent, twin in cases:
        try:
            out = _serve(client, [blob])
            count = int(out["count"][0, 0])
            observed, ok = f"served: {count} people", True
            if name == "EXIF-rotated JPEG" and count:  # boxes live in the upright 200x320 frame
                ok = float(out["boxes"][0, :count, 0::2].max()) <= 200 and float(out["boxes"][0, :count, 1::2].max()) <= 320
                observed += f", boxes within the upright 200x320 frame: {ok}"
            if twin is not None:  # same picture at 8 bits: the model input must be the same (scaled by 65535)
                a, _ = prepost.preprocess_one(blob, 320)
                b, _ = prepost.preprocess_one(twin, 320)
                diff = float(np.abs(a - b).max())
                same = diff <= 1.5 / 255
                observed += f"; model input vs the 8-bit PNG: max diff {diff:.4f}"
                ok = ok and same
        except InferenceServerException as error:
            observed, ok = f"error: {error.message()}", False
        scoreboard.record("bad-input", f"triton: {name}", done=f"{sent} -> mouaadnet", observed=observed, ok=ok,
                          bad_inputs=1, requests=1, failed=0 if ok else 1)
        if not ok:
            problems.append(f"{name}: {observed}")
    assert not problems, problems


def test_expensive_requests_do_not_stall_others(client, triton, good, scoreboard):
    """Two requests with a 50 MP PNG each (the issue's stall), then a small unrelated request: with one request
    per preprocess execute() and a 64 MP per-request budget the small one waits for at most one decode."""
    huge = img.huge_png()
    timings: dict[str, float] = {}
    errors: list[str] = []

    def heavy(i):
        own = grpcclient.InferenceServerClient(triton.grpc_url)
        started = time.monotonic()
        try:
            own.infer("mouaadnet", [image_input([huge])], client_timeout=120)
        except InferenceServerException as error:
            errors.append(error.message())
        timings[f"heavy{i}"] = time.monotonic() - started

    threads = [threading.Thread(target=heavy, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    started = time.monotonic()
    client.infer("mouaadnet", [image_input([good])], client_timeout=120)
    timings["small"] = time.monotonic() - started
    for t in threads:
        t.join(180)
    bound = 8.0  # seconds, on the shared 2-core machine under load (issue: 17 s before the fix)
    # admission control (64 MP in flight across the server): the second 50 MP request may be refused as busy
    busy = [e for e in errors if "server busy" in e]
    ok = len(busy) == len(errors) <= 1 and timings["small"] < bound
    scoreboard.record("bad-input", "triton: two 50 MP PNG requests + one small request",
                      done="2 concurrent requests with a 16384x3051 PNG each, then a 512x512 JPEG",
                      observed=f"heavy requests {timings['heavy0']:.2f} s / {timings['heavy1']:.2f} s, small request "
                               f"{timings['small']:.2f} s (bound {bound:.0f} s)"
                               + (f"; {len(busy)} heavy refused as busy" if busy else "")
                               + (f"; errors {[e for e in errors if e not in busy]}" if len(busy) < len(errors) else ""),
                      ok=ok, bad_inputs=1, requests=3, failed=len(errors), good_failed=int(timings["small"] >= bound))
    assert ok, (timings, errors)
