"""Fast checks (no server) of the request guard's rules and of the image damage detection: what they refuse
and, as much, that they refuse nothing a real encoder writes."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
import _images as img  # noqa: E402

from mouaadnet.serving import prepost  # noqa: E402
from mouaadnet.serving.guard import control_refusal, restricted_args  # noqa: E402
from mouaadnet.serving.guard_rules import (  # noqa: E402
    check_inputs,
    ensemble_steps,
    gate_settings,
    grpc_bytes_elements,
    grpc_infer_inputs,
    http_bytes_elements,
    http_infer_inputs,
    input_rules,
    needed_models,
    stub_died,
)

REPO = Path(__file__).resolve().parents[1] / "triton_repo"


def _request(model: str, inputs: dict[str, list[int]], raw: bytes = b"x" * 100) -> bytes:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, shape in inputs.items():
        tensor = request.inputs.add(name=name, datatype="BYTES")
        tensor.shape.extend(shape)
        request.raw_input_contents.append(raw)
    return request.SerializeToString()


def test_rules_come_from_the_repository_configs():
    rules = input_rules(REPO)
    assert rules["mouaadnet"] == {"image": "BYTES [N,1]"}  # score_threshold is optional
    assert rules["detector"] == {"images": "FP32 [N,3,320,320]"}


def test_grpc_request_inputs_are_read_without_the_raw_contents():
    message = _request("mouaadnet", {"image": [2, 1], "score_threshold": [2, 1]}, raw=b"\0" * 100_000)
    assert grpc_infer_inputs(message) == ("mouaadnet", [("image", [2, 1]), ("score_threshold", [2, 1])])
    assert grpc_infer_inputs(_request("detector", {"images": [-1, 3, 320, 320]}))[1] == [("images", [-1, 3, 320, 320])]


def test_missing_required_input_and_empty_batch_are_refused():
    rules = input_rules(REPO)
    only_threshold = check_inputs(*grpc_infer_inputs(_request("mouaadnet", {"score_threshold": [1, 1]})), rules)
    assert "needs input 'image' (BYTES [N,1])" in only_threshold and "score_threshold" in only_threshold
    empty = check_inputs("mouaadnet", [("image", [0, 1])], rules)
    assert "shape [0,1]" in empty and "empty tensor" in empty and "BYTES [N,1]" in empty
    assert check_inputs("mouaadnet", [("image", [3, 1])], rules) is None
    assert check_inputs("mouaadnet", [], rules) is None  # Triton's own message names the missing input
    assert check_inputs("unknown", [("x", [1])], rules) is None
    header = {"inputs": [{"name": "score_threshold", "shape": [1, 1], "datatype": "FP32", "data": [0.3]}]}
    assert "needs input 'image'" in check_inputs(*http_infer_inputs("/v2/models/mouaadnet/infer", header), rules)
    assert http_infer_inputs("/v2/models/mouaadnet/versions/1/infer", header)[0] == "mouaadnet"
    assert http_infer_inputs("/v2/repository/index", {}) is None


def test_restricted_args_and_refusal_text():
    args = restricted_args("g", "a")
    assert "--grpc-restricted-protocol=health,metadata,inference,shared-memory,model-config,statistics:" \
           "mouaadnet-guard-key=g" in args
    assert "--http-restricted-api=model-repository,trace,logging:mouaadnet-admin-key=a" in args
    assert "'none'" in control_refusal("none") and "--model-control-mode explicit" in control_refusal("poll")


@pytest.mark.parametrize("make, expected", [
    (img.png_idat_zeroed_valid_crc, "fails its zlib checksum"),
    (img.png_half_rows, "holds 208 of 416 rows"),
    (img.webp_zeroed, "zero bytes in a row"),
    (img.webp_truncated, "truncated WebP: its RIFF header says"),
    (img.tiff_deflate_zeroed, "corrupt TIFF: deflate strip"),
])
def test_crafted_damage_is_refused(make, expected):
    with pytest.raises(prepost.ImageError, match=expected):
        prepost.preprocess_batch([make()])


def _interlaced_png(array: np.ndarray) -> bytes:
    h, w, _ = array.shape
    raw = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                           (0, 1, 1, 2)):
        for row in array[y0::dy, x0::dx]:
            if row.size:
                raw += b"\0" + row.tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + img.png_chunk(b"IHDR", ihdr) + img.png_chunk(b"IDAT", zlib.compress(raw))
            + img.png_chunk(b"IEND", b""))


def test_real_encodings_pass_the_damage_checks():
    base = Image.fromarray(img.photo()[:37, :53])
    variants = [base, base.convert("L"), base.convert("LA"), base.convert("P"), base.convert("RGBA"),
                base.convert("1"), Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)]
    blobs = []
    for image in variants:
        blobs += [img.encode(image, "PNG"), img.encode(image, "PNG", optimize=True),
                  img.encode(image, "TIFF", compression="tiff_adobe_deflate"),
                  img.encode(image, "TIFF", compression="tiff_deflate")]
    blobs += [img.encode(base.convert("P", colors=16), "PNG", bits=4)]
    rng = np.random.default_rng(0)
    for shape in ((37, 53), (1, 1), (3, 9), (16, 5)):
        array = rng.integers(0, 255, (*shape, 3), np.uint8)
        decoded, _ = prepost.decode_image(_interlaced_png(array))
        assert (decoded == array).all()
    # flat frames are where an encoder writes its longest zero runs (measured: ~1 per 10 000 pixels)
    for array in (img.photo(), np.zeros((1080, 1920, 3), np.uint8), np.full((1080, 1920, 3), 255, np.uint8)):
        for options in ({"quality": 5}, {"quality": 90}, {"lossless": True}):
            blobs.append(img.encode(array, "WEBP", **options))
    for blob in blobs:
        prepost.decode_image(blob)


def test_open_image_names_a_webp_it_cannot_parse():
    data = bytearray(img.encode(img.photo(), "WEBP"))
    data[20:40] = bytes(20)  # the VP8 frame header: libwebp refuses it ("could not create decoder object")
    with pytest.raises(prepost.ImageError, match="WebP"):
        prepost.open_image(bytes(data))


def test_decode_budget_is_shared_and_forgets_dead_instances(tmp_path):
    import os

    from mouaadnet.serving.admission import BusyError, DecodeBudget

    path = tmp_path / "budget"
    first = DecodeBudget(path, limit=64_000_000, always_admit=4_000_000)
    other = DecodeBudget(path, limit=64_000_000, always_admit=4_000_000)
    other.pid = os.getppid()  # another live process: another preprocess instance
    first.admit(50_000_000)
    with pytest.raises(BusyError, match="server busy: this request decodes 50.0 MP while 50.0 MP"):
        other.admit(50_000_000)
    other.admit(3_000_000)  # small requests always pass (and count)
    other.release()
    first.release()
    other.admit(50_000_000)
    other.release()
    path.write_text('{"999999999": 60000000}')  # an instance that died mid-decode: no such pid
    first.admit(60_000_000)
    first.release()


def test_cost_classes_small_never_wait_big_wait_then_busy():
    """The guard's gate: a small request passes while a big one is in flight; a second big one waits and gets
    the slot when the first leaves; one that cannot get it within ``wait`` is refused as busy (after the wait,
    not at once); with ``max_waiting`` already waiting the next is refused at once."""
    import threading
    import time

    from mouaadnet.serving.admission import BusyError, CostGate

    gate = CostGate(limit=64_000_000, always_admit=4_000_000, wait=0.3, max_waiting=1)
    assert gate.enter(50_000_000) is True
    assert gate.enter(3_000_000) is False  # small: nothing to wait for, nothing to leave
    started = time.monotonic()
    with pytest.raises(BusyError, match="server busy: this request decodes 50.0 MP while 50.0 MP .* after waiting"):
        gate.enter(50_000_000)
    assert 0.25 <= time.monotonic() - started < 2.0
    threading.Timer(0.1, gate.leave, args=(50_000_000,)).start()
    assert gate.enter(50_000_000) is True  # waited ~0.1 s for the slot the first one left
    admitted = []
    waiter = threading.Thread(target=lambda: admitted.append(gate.enter(20_000_000)))
    waiter.start()
    time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(BusyError, match="queue for big requests is full"):
        gate.enter(20_000_000)
    assert time.monotonic() - started < 0.05
    gate.leave(50_000_000)
    waiter.join(2)
    assert admitted == [True] and gate.in_flight == 20_000_000


def test_the_guard_reads_image_costs_from_headers_without_copying_the_request():
    from tritonclient.grpc import service_pb2

    bomb, jpeg = img.decode_bomb_png(), img.good_jpeg()
    request = service_pb2.ModelInferRequest(model_name="mouaadnet")
    for name, datatype, raw in (("image", "BYTES", b"".join(len(b).to_bytes(4, "little") + b for b in (bomb, jpeg))),
                                ("score_threshold", "FP32", struct.pack("<f", 0.3))):
        request.inputs.add(name=name, datatype=datatype).shape.extend([2, 1] if datatype == "BYTES" else [1, 1])
        request.raw_input_contents.append(raw)
    elements = grpc_bytes_elements(request.SerializeToString())
    assert [bytes(e) for e in elements] == [bomb, jpeg]
    assert prepost.header_cost(elements[0]) == 8192 * 6103
    assert prepost.header_cost(elements[1]) == 512 * 512  # a 512 px JPEG: no DCT reduction to reach 320
    assert prepost.header_cost(b"not an image") == 0  # preprocess names the problem later
    header = {"inputs": [{"name": "score_threshold", "datatype": "FP32", "shape": [1, 1],
                          "parameters": {"binary_data_size": 4}},
                         {"name": "image", "datatype": "BYTES", "shape": [1, 1],
                          "parameters": {"binary_data_size": len(bomb) + 4}}]}
    body = b"{}" + struct.pack("<f", 0.3) + len(bomb).to_bytes(4, "little") + bomb
    assert [bytes(e) for e in http_bytes_elements(header, body, 2)] == [bomb]
    assert gate_settings(REPO) == {"limit": 64_000_000, "always_admit": 4_000_000, "size": 320}


def test_stub_death_errors_and_what_each_model_needs():
    assert stub_died("in ensemble 'mouaadnet', Stub process 'detector_0_0' is not healthy.")
    assert stub_died("Failed to process the request(s) for model instance 'postprocess_0_0', message: The stub "
                     "process has exited unexpectedly.")
    assert not stub_died("preprocess: image 0: not an image (10 bytes starting b'junk'): no known image format")
    steps = ensemble_steps(REPO)
    assert steps == {"mouaadnet": ["preprocess", "detector", "postprocess"]}
    assert needed_models("mouaadnet", steps) == {"mouaadnet", "preprocess", "detector", "postprocess"}
    assert needed_models("detector", steps) == {"detector"}


def test_serve_mode_none_runs_triton_in_explicit_mode_behind_the_guard(tmp_path):
    """So that `serve` can reload the one model whose stub died; clients still cannot load (the guard says
    'none'), and every model is loaded at start as in mode none."""
    from mouaadnet.serving.triton_install import (
        ServerConfig,
        build_command,
        internal_config,
        triton_control_mode,
    )

    assert [triton_control_mode(m) for m in ("none", "explicit", "poll")] == ["explicit", "explicit", "poll"]
    cfg = internal_config(ServerConfig(repo=tmp_path), guard_key="g", admin_key="a")
    cmd = build_command(type("Install", (), {"binary": Path("/x/tritonserver")})(), tmp_path, cfg)
    assert "--model-control-mode=explicit" in cmd and "--load-model=*" in cmd
    assert "--disable-auto-complete-config" in cmd
    assert "'none'" in control_refusal("none")  # what a client asking to load is told
