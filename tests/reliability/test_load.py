"""Load: concurrency 8 against the ensemble with 10 % bad requests mixed in (60 s in the full run, 10 s bounded).
Guarantees: 0 good requests fail, every bad one gets its error, no request hangs, server RSS stays bounded."""

from __future__ import annotations

import random
import threading
import time

import _images as img
import numpy as np
import pytest
from _rel import FULL, image_input, server_rss_parts

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(600)]

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

CONCURRENCY = 8
SECONDS = 60.0 if FULL else 10.0
MAX_REQUESTS = 100_000  # a hard cap besides the time bound
RSS_BOUND_MB = 64.0  # allowed growth of tritonserver + its stubs + the guard over the second half of the run
# Warm-up at full concurrency first: ONNX Runtime's arena in each detector stub grows once to the largest batch
# the dynamic batcher forms (~70 MB each), then stays flat (measured: 5 windows of 20 s, flat after ~40 s).
WARMUP_SECONDS = 30.0 if FULL else 5.0


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
    rss_start = sum(server_rss_parts(triton).values())
    # The bound applies to the second half of the run: which batch sizes the dynamic batcher forms (and so when the
    # arenas reach their size) depends on the CPU's speed against the request rate; a leak grows in both halves.
    started = time.monotonic()
    run(SECONDS / 2, 0)
    first_half = list(results)
    time.sleep(1.0)
    before_parts = server_rss_parts(triton)
    rss_before = sum(before_parts.values())
    run(SECONDS / 2, 500)
    results[:0] = first_half
    wall = time.monotonic() - started - 1.0
    time.sleep(1.0)
    after_parts = server_rss_parts(triton)
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
                               f"server RSS (tritonserver + stubs + guard, after a {WARMUP_SECONDS:.0f} s warm-up) {rss_start:.0f} -> "
                               f"{rss_before:.0f} MB at half time -> {rss_after:.0f} MB "
                               f"(second half {growth:+.0f} MB, bound +{RSS_BOUND_MB:.0f} MB: {by_part})",
                      ok=ok, requests=len(results), failed=sum(1 for r in results if r[2]),
                      good_failed=len(good_failed))
    assert ok, (good_failed[:3], bad_passed[:3], growth)


BOMB_SENDERS = 32 if FULL else 8
BOMB_SECONDS = 30.0 if FULL else 8.0


def test_decode_bombs_are_refused_as_busy_and_good_clients_keep_their_latency(triton, scoreboard):
    """Senders of in-budget decode bombs (48.6 KB PNGs that decode to 50 MP) in a loop beside 2 good clients: the
    request guard's cost classes (admission.CostGate: the image headers say what a request will decode) let one
    bomb at a time into Triton, make the others wait up to 0.5 s for that slot and then refuse them as busy, so
    a preprocess instance is always free for the good requests, which never wait for a bomb. Issue 24, before:
    good p50 13.9 ms alone -> 0.83 s / 5.6 s / 11.2 s beside 4 / 16 / 32 senders, 0 bombs refused; with the
    budget inside preprocess only: 111 ms at 32 senders (every refusal crossed Triton first)."""
    bomb, good = img.decode_bomb_png(), [img.good_jpeg()]
    lock = threading.Lock()

    def run(seconds: float, senders: int) -> tuple[list, dict]:
        goods, bombs = [], {"served": 0, "busy": 0, "other": []}
        stop = time.monotonic() + seconds

        def good_client():
            client = grpcclient.InferenceServerClient(triton.grpc_url)
            while time.monotonic() < stop and len(goods) < MAX_REQUESTS:
                started = time.monotonic()
                try:
                    client.infer("mouaadnet", [image_input(good)], client_timeout=60)
                    error = None
                except InferenceServerException as exc:
                    error = exc.message()
                with lock:
                    goods.append((time.monotonic() - started, error))

        def bomb_sender():
            client = grpcclient.InferenceServerClient(triton.grpc_url)
            while time.monotonic() < stop:
                try:
                    client.infer("mouaadnet", [image_input([bomb])], client_timeout=60)
                    key = "served"
                except InferenceServerException as exc:
                    key = "busy" if "server busy" in exc.message() else "other"
                    if key == "other":
                        bombs["other"].append(exc.message()[:200])
                with lock:
                    if key != "other":
                        bombs[key] += 1

        threads = [threading.Thread(target=good_client) for _ in range(2)]
        threads += [threading.Thread(target=bomb_sender) for _ in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 120)
        return goods, bombs

    def stats(goods):
        lat = np.array([g[0] for g in goods if g[1] is None]) * 1000
        return (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if len(lat) else (float("nan"),) * 2

    alone, _ = run(3.0, 0)
    beside, bombs = run(BOMB_SECONDS, BOMB_SENDERS)
    (a50, a99), (b50, b99) = stats(alone), stats(beside)
    good_failed = [g for g in beside if g[1] is not None]
    # targets of issue 24: p50 <= 100 ms, p99 <= 500 ms beside 32 senders, measured against a quiet core (good p50
    # 13.9 ms alone); on a machine whose cores other work takes, 3x what the good clients get alone (before
    # admission control: 60x-800x with 4-32 senders)
    p50_bound, p99_bound = max(100.0, 3 * a50), max(500.0, 3 * a99)
    ok = not good_failed and not bombs["other"] and bombs["busy"] > 0 and bombs["served"] > 0 and b50 <= p50_bound \
        and b99 <= p99_bound
    scoreboard.record("load", f"{BOMB_SENDERS} senders of in-budget decode bombs + 2 good clients",
                      done=f"{BOMB_SECONDS:.0f} s: {BOMB_SENDERS} threads sending 48.6 KB PNGs that decode to 50 MP "
                           "in a loop, 2 clients sending a 512x512 JPEG; before that 3 s of the good clients alone",
                      observed=f"good p50 / p99 {a50:.0f} / {a99:.0f} ms alone -> {b50:.0f} / {b99:.0f} ms beside "
                               f"the bombs (bound {p50_bound:.0f} / {p99_bound:.0f}: 100 / 500 or 3x alone), "
                               f"{len(beside)} good requests, {len(good_failed)} failed; "
                               f"bombs: {bombs['served']} decoded, {bombs['busy']} refused as busy, "
                               f"{len(bombs['other'])} other errors {bombs['other'][:2]}",
                      ok=ok, requests=len(alone) + len(beside) + bombs["served"] + bombs["busy"],
                      failed=bombs["busy"] + len(bombs["other"]) + len(good_failed), good_failed=len(good_failed),
                      bad_inputs=1)
    assert ok, (a50, a99, b50, b99, bombs, good_failed[:3])
