"""Load: concurrency 8 against the ensemble with 10 % bad requests mixed in (60 s in the full run, 10 s bounded).
Guarantees: 0 good requests fail, every bad one gets its error, no request hangs, server RSS stays bounded."""

from __future__ import annotations

import random
import threading
import time

import _images as img
import numpy as np
import psutil
import pytest
from _rel import FULL, image_input

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(600)]

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

CONCURRENCY = 8
SECONDS = 60.0 if FULL else 10.0
MAX_REQUESTS = 100_000  # a hard cap besides the time bound
RSS_BOUND_MB = 64.0  # allowed growth of tritonserver + its stubs over the second half of the run
# Warm-up at full concurrency first: ONNX Runtime's arena in each detector stub grows once to the largest batch
# the dynamic batcher forms (~70 MB each), then stays flat (measured: 5 windows of 20 s, flat after ~40 s).
WARMUP_SECONDS = 30.0 if FULL else 5.0


def _rss_parts(pid: int) -> dict[str, float]:
    """RSS in MB of tritonserver and each stub (by model instance name)."""
    proc = psutil.Process(pid)
    parts = {"tritonserver": proc.memory_info().rss / 2**20}
    for child in proc.children(recursive=True):
        try:
            instance = next((a for a in child.cmdline() if "_0_" in a), str(child.pid))
            parts[instance] = child.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            pass
    return parts



def test_load_with_bad_requests_mixed_in(triton, scoreboard):
    good = [img.good_jpeg(), img.encode(img.photo()[:300, :400], "PNG"), img.exif_rotated_jpeg()]
    bad = [b"", b"junk bytes", img.jpeg_truncated(), img.jpeg_zeroed(), img.png_bad_idat_crc(),
           img.png_header_only(100_000, 100_000)]
    results: list[tuple[bool, float, str | None]] = []  # (was good, latency s, error)
    lock = threading.Lock()

    def run(seconds: float, seed: int):
        nonlocal deadline
        results.clear()
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=worker, args=(seed + i,)) for i in range(CONCURRENCY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 120)

    deadline = 0.0

    def worker(seed: int):
        rng = random.Random(seed)
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        while time.monotonic() < deadline and len(results) < MAX_REQUESTS:
            is_good = rng.random() >= 0.10
            blob = rng.choice(good if is_good else bad)
            started = time.monotonic()
            try:
                client.infer("mouaadnet", [image_input([blob])], client_timeout=30)
                error = None
            except InferenceServerException as exc:
                error = exc.message()
            with lock:
                results.append((is_good, time.monotonic() - started, error))

    # warm-up at full concurrency: the first batches of 8 grow ONNX Runtime's and the stubs' buffers once
    run(WARMUP_SECONDS, 1000)
    time.sleep(1.0)
    rss_start = sum(_rss_parts(triton.pid).values())
    # The bound applies to the second half of the run: which batch sizes the dynamic batcher forms (and so when the
    # arenas reach their size) depends on the CPU's speed against the request rate; a leak grows in both halves.
    started = time.monotonic()
    run(SECONDS / 2, 0)
    first_half = list(results)
    time.sleep(1.0)
    before_parts = _rss_parts(triton.pid)
    rss_before = sum(before_parts.values())
    run(SECONDS / 2, 500)
    results[:0] = first_half
    wall = time.monotonic() - started - 1.0
    time.sleep(1.0)
    after_parts = _rss_parts(triton.pid)
    rss_after = sum(after_parts.values())
    by_part = ", ".join(f"{name} {after_parts[name] - before_parts.get(name, 0):+.0f}" for name in sorted(after_parts))
    goods = [r for r in results if r[0]]
    bads = [r for r in results if not r[0]]
    good_failed = [r for r in goods if r[2]]
    bad_passed = [r for r in bads if not r[2]]
    lat = np.array([r[1] for r in goods]) * 1000
    p50, p99 = (float(np.percentile(lat, q)) for q in (50, 99)) if len(lat) else (float("nan"),) * 2
    growth = rss_after - rss_before
    ok = bool(goods) and not good_failed and not bad_passed and growth <= RSS_BOUND_MB and wall < SECONDS + 60
    scoreboard.record("load", f"{SECONDS:.0f} s at concurrency {CONCURRENCY}, 10 % bad requests",
                      done=f"{CONCURRENCY} clients, each request one image: 3 good kinds, 6 bad kinds (empty, junk, "
                           "truncated JPEG, zeroed JPEG, bad-CRC PNG, bomb header)",
                      observed=f"{len(results)} requests in {wall:.1f} s ({len(results) / wall:.1f}/s): {len(goods)} good, "
                               f"{len(good_failed)} failed; {len(bads)} bad, {len(bad_passed)} wrongly accepted; good "
                               f"latency p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {lat.max() if len(lat) else 0:.0f} ms; "
                               f"server RSS (tritonserver + stubs, after a {WARMUP_SECONDS:.0f} s warm-up) {rss_start:.0f} -> "
                               f"{rss_before:.0f} MB at half time -> {rss_after:.0f} MB "
                               f"(second half {growth:+.0f} MB, bound +{RSS_BOUND_MB:.0f} MB: {by_part})",
                      ok=ok, requests=len(results), failed=sum(1 for r in results if r[2]),
                      good_failed=len(good_failed))
    assert ok, (good_failed[:3], bad_passed[:3], growth)
