"""Limits in front of the real server (mouaadnet.serving.guard): oversized requests refused before Triton copies
them, memory back where it was; the admin APIs closed to clients without serve's admin key; Triton's internal
ports useless without the guard's key; malformed JSON answered 400; model load/unload in model-control mode
none refused with a message that says why.

Before (issue 24, measured the same way on this machine): a 256 MB / 1 GiB payload went through Triton into the
preprocess stub's shared memory and was refused there after 3.9 s / 33 s, the server's RSS +0.9 / +4.3 GiB for
good (1.3 GiB of it a /dev/shm region the Python backend never shrinks).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import _h2probe
import _images as img
import pytest
from _rel import image_input, server_rss_parts, server_shm_mb

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(600)]

grpc = pytest.importorskip("grpc")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

MEMORY_BOUND_MB = 64.0
ADMIN = "mouaadnet-admin-key"


def _model_infer_message(size: int) -> bytes:
    """A serialized ModelInferRequest for `mouaadnet` whose one BYTES element is ``size`` zero bytes, built in
    one allocation (the zeros come from calloc: only the copy into the message is touched)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="mouaadnet")
    tensor = request.inputs.add(name="image", datatype="BYTES")
    tensor.shape.extend([1, 1])
    content = size + 4  # Triton's BYTES serialization: 4-byte little-endian length, then the bytes
    varint, n = bytearray(), content
    while True:
        varint.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    # field 7 (raw_input_contents), wire type 2 (length-delimited)
    return request.SerializeToString() + b"\x3a" + bytes(varint) + size.to_bytes(4, "little") + bytes(size)


def _http(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def _http_announce(port: int, size: int) -> tuple[float, str]:
    """POST headers announcing ``size`` body bytes and only 1 KB of body; time to the answer (status line)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(f"POST /v2/models/mouaadnet/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     f"application/octet-stream\r\nInference-Header-Content-Length: 64\r\nContent-Length: {size}"
                     "\r\n\r\n".encode() + b"{" * 1024)
        answer = sock.recv(65536)
        seconds = time.monotonic() - started  # the status line is there: the refusal came
        while True:  # the rest of the answer (the guard closes the connection after a 413)
            try:
                more = sock.recv(65536)
            except OSError:
                break
            if not more:
                break
            answer += more
        return seconds, answer.decode(errors="replace")


def _memory(triton) -> tuple[float, float]:
    return sum(server_rss_parts(triton).values()), server_shm_mb(triton)


@pytest.mark.parametrize("size", [256 * 2**20, 2**30], ids=["256MB", "1GiB"])
def test_oversized_request_is_refused_before_triton_copies_it(triton, scoreboard, size):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    good = [image_input([img.good_jpeg()])]
    for _ in range(3):
        client.infer("mouaadnet", good, client_timeout=60)
    rss_before, shm_before = _memory(triton)
    # 1. server side: the guard ends the call from the message's 5-byte length prefix (16 KB of it sent)
    probe = _h2probe.announce_and_time(triton.cfg.grpc_port, size + 64)
    # 2. what a gRPC client sees, sending the whole message (its own copy of it included)
    message = _model_infer_message(size)
    call = grpc.insecure_channel(triton.grpc_url, options=[("grpc.max_send_message_length", -1)]).unary_unary(
        "/inference.GRPCInferenceService/ModelInfer")
    started = time.monotonic()
    try:
        call(message, timeout=120)
        grpc_answer = "accepted"
    except grpc.RpcError as error:
        grpc_answer = f"{error.code().name}: {error.details()}"
    grpc_seconds = time.monotonic() - started
    del message
    # 3. HTTP: refused from Content-Length, the body never read
    http_seconds, http_answer = _http_announce(triton.cfg.http_port, size)
    after_good = client.infer("mouaadnet", good, client_timeout=60).as_numpy("count").shape == (1, 1)
    time.sleep(1.0)
    rss_after, shm_after = _memory(triton)
    ok = (probe["ended_by"] in ("trailers", "RST_STREAM") and probe["seconds"] < 1.0
          and grpc_answer.startswith("RESOURCE_EXHAUSTED") and "larger than max" in grpc_answer
          and " 413 " in http_answer.split("\r\n")[0] and "request too large" in http_answer and http_seconds < 1.0
          and after_good and rss_after - rss_before <= MEMORY_BOUND_MB and shm_after - shm_before <= MEMORY_BOUND_MB)
    http_error = http_answer.split("\r\n\r\n", 1)[-1]
    scoreboard.record(
        "bad-input", f"triton: {size / 2**20:.0f} MiB payload",
        done=f"one image of {size / 2**20:.0f} MiB to mouaadnet: gRPC (a raw call that sends only the first 16 KB, "
             "then a real client sending all of it) and HTTP (Content-Length announced, 1 KB sent)",
        observed=f"server RSS (tritonserver + stubs + guard) {rss_before:.0f} -> {rss_after:.0f} MB, /dev/shm "
                 f"{shm_before:.0f} -> {shm_after:.0f} MB (bound +{MEMORY_BOUND_MB:.0f} each); gRPC call ended "
                 f"({probe['ended_by']}) {probe['seconds'] * 1000:.0f} ms after the length prefix, "
                 f"{probe['bytes_sent'] / 1000:.0f} KB read; a client sending it all: {grpc_seconds:.2f} s (its own "
                 f"copy included), {grpc_answer}; HTTP {http_answer.split(chr(13))[0].removeprefix('HTTP/1.1 ')} in "
                 f"{http_seconds * 1000:.0f} ms: {http_error}; next good request served: {after_good}",
        ok=ok, bad_inputs=1, requests=4, failed=3, good_failed=0 if after_good else 1)
    assert ok, (probe, grpc_answer, grpc_seconds, http_answer, rss_before, rss_after, shm_before, shm_after)


def test_admin_apis_need_the_admin_key(triton, scoreboard):
    """Through the public ports: logging, trace, repository index/load/unload need serve's admin key; Triton's own
    (internal) ports answer nothing without the guard's key, not even health."""
    public, internal = triton.http_url, triton.internal_http_url
    key = {ADMIN: triton.admin_key}
    checks = []  # (what, refused without the key?, allowed with it?, what came back without)
    # (method, path, body, also try it with the key: not the calls that would change this shared server)
    for method, path, body, with_key in (
            ("GET", "/v2/logging", None, True), ("POST", "/v2/logging", b'{"log_verbose_level": 1}', False),
            ("GET", "/v2/trace/setting", None, True), ("POST", "/v2/repository/index", b"{}", True),
            ("POST", "/v2/repository/models/detector/unload", b"{}", False)):
        status, text = _http(public + path, method, body)
        allowed = _http(public + path, method, body, key)[0] == 200 if with_key else None
        checks.append((f"HTTP {method} {path}", status == 403 and "restricted" in text, allowed, f"{status} {text}"))
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    for what, call in (("gRPC RepositoryIndex", lambda h: client.get_model_repository_index(headers=h)),
                       ("gRPC LogSettings", lambda h: client.get_log_settings(headers=h)),
                       ("gRPC TraceSetting", lambda h: client.get_trace_settings(headers=h))):
        try:
            call(None)
            refused, text = False, "allowed"
        except InferenceServerException as error:
            refused, text = "restricted" in error.message(), error.message()
        try:
            call(key)
            allowed = True
        except InferenceServerException:
            allowed = False
        checks.append((what, refused, allowed, text))
    for path in ("/v2/health/ready", "/v2/logging"):
        status, text = _http(internal + path)
        checks.append((f"internal port {path}", status == 403 and "restricted" in text, None, f"{status} {text}"))
    bad = [c for c in checks if not c[1] or c[2] is False]
    scoreboard.record("security", "admin APIs need the admin key; Triton's own ports need the guard's key",
                      done=f"{len(checks)} admin calls without a key through the public ports (then with serve's "
                           "admin key), health/logging straight to Triton's internal HTTP port",
                      observed=f"{len(checks) - len(bad)} of {len(checks)} refused without the key and served with "
                               f"it; e.g. {checks[0][3][:110]}" + (f"; NOT: {bad}" if bad else ""), ok=not bad)
    assert not bad, bad


def test_malformed_json_over_http_gets_400(triton, scoreboard):
    """Malformed JSON (Triton 2.51 answers 500) and JSON that is not an inference request get 400; a real HTTP
    inference (binary-data extension) still passes through."""
    url = f"{triton.http_url}/v2/models/mouaadnet/infer"
    cases = [("malformed JSON", b"{bad", "malformed JSON"), ("JSON that is not a request", b"[1, 2]", "parse")]
    results = []
    for name, body, expected in cases:
        status, text = _http(url, "POST", body, {"Content-Type": "application/json"})
        results.append((name, status == 400 and expected in text, f"{status} {text[:120]}"))
    jpeg = img.good_jpeg()
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(jpeg) + 4}}],
                         "outputs": [{"name": "count", "parameters": {"binary_data": False}}]}).encode()
    status, text = _http(url, "POST", header + len(jpeg).to_bytes(4, "little") + jpeg,
                         {"Inference-Header-Content-Length": str(len(header))})
    served = status == 200 and '"count"' in text
    ok = all(r[1] for r in results) and served
    scoreboard.record("bad-input", "http: malformed JSON bodies",
                      done="POST /v2/models/mouaadnet/infer with '{bad' and '[1, 2]', then a real binary-data request",
                      observed="; ".join(f"{n}: {o}" for n, _, o in results)
                               + f"; real request over HTTP: {status} served {served}",
                      ok=ok, bad_inputs=2, requests=3, failed=2, good_failed=0 if served else 1)
    assert ok, (results, status, text[:300])


def test_load_unload_outside_explicit_mode_is_refused_with_the_reason(triton, scoreboard):
    """The guard of a server in model-control mode none (as `serve` runs it by default) in front of this
    server's Triton: Triton's own answer for none is 'explicit model load / unload is not allowed if polling is
    enabled' (one message for every mode but explicit), the guard says what the mode is and what to do."""
    from mouaadnet.serving.guard import GUARD_HEADER, Guard
    from mouaadnet.serving.triton_install import free_port

    guard = Guard(grpc_port=free_port(), http_port=free_port(), grpc_upstream=triton.internal_grpc_url,
                  http_upstream=triton.internal_http_url.removeprefix("http://"),
                  guard_key=triton._keys[GUARD_HEADER], control_mode="none").start()
    try:
        key = {ADMIN: triton.admin_key}
        status, text = _http(f"http://127.0.0.1:{guard.http_port}/v2/repository/models/detector/unload", "POST",
                             b"{}", key)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{guard.grpc_port}")
        try:
            client.unload_model("detector", headers=key)
            grpc_text = "unloaded"
        except InferenceServerException as error:
            grpc_text = error.message()
        still_ready = client.is_model_ready("detector")
    finally:
        guard.stop()
    ok = (status == 400 and "--model-control-mode explicit" in text and "'none'" in text
          and "--model-control-mode explicit" in grpc_text and still_ready)
    scoreboard.record("bad-input", "unload while model control is none",
                      done="POST /v2/repository/models/detector/unload and gRPC RepositoryModelUnload, with the "
                           "admin key, to a server in model-control mode none",
                      observed=f"HTTP {status}: {text[:260]}; gRPC: {grpc_text[:80]}...; detector still ready: "
                               f"{still_ready}", ok=ok, bad_inputs=1, requests=3, failed=2)
    assert ok, (status, text, grpc_text)
