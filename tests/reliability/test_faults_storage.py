"""The S3 endpoint down or erroring during `dvc push` / `dvc pull`: a clear error after bounded retries, and
nothing half-written taken as valid (a corrupted remote object is caught by md5: tests/test_dvc.py records it)."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest
from _proxy import FaultProxy
from _rel import FULL

pytest.importorskip("dvc", reason="dvc not installed (pip install -e '.[pipeline]')")

from mouaadnet.pipeline import dvc_data  # noqa: E402
from mouaadnet.pipeline.dvc_data import DvcError  # noqa: E402
from mouaadnet.pipeline.services import free_ports  # noqa: E402

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]
BOUND_S = 180.0  # a failing push/pull must give up within this (botocore's retries included)


def _repo(tmp_path):
    from test_dvc import _make_repo

    return _make_repo(tmp_path / "repo", remote_url=f"s3://mouaadnet-data/rel-{uuid.uuid4().hex[:8]}")


def _env(endpoint: str):
    return dvc_data.remote_env(endpoint, "mouaadnet-test", "mouaadnet-test-secret", "us-east-1")


@pytest.mark.parametrize("fault", ["endpoint down", pytest.param("HTTP 500 on every request", marks=pytest.mark.skipif(
    not FULL, reason="full run only (make reliability): dvc retries the 500s for ~20 s"))])
def test_dvc_push_against_a_failing_endpoint(tmp_path, scoreboard, fault):
    repo = _repo(tmp_path)
    started = time.monotonic()
    if fault == "endpoint down":
        endpoint, proxy = f"http://127.0.0.1:{free_ports(1)[0]}", None  # nothing listens there
    else:
        proxy = FaultProxy(status=500).__enter__()
        endpoint = proxy.url
    try:
        with pytest.raises(DvcError) as info:
            dvc_data.push(repo, env=_env(endpoint))
    finally:
        if proxy:
            proxy.__exit__(None, None, None)
    elapsed = time.monotonic() - started
    message = str(info.value)
    hint = message.split("hint:", 1)[1].strip() if "hint:" in message else ""
    attempts = f"; {proxy.connections} connections to the endpoint (bounded retries)" if proxy else ""
    ok = elapsed < BOUND_S and (hint or "500" in message or "InternalError" in message)
    scoreboard.record("fault", f"S3 {fault} during dvc push", done=f"dvc push with the remote endpoint {fault}",
                      observed=f"DvcError after {elapsed:.0f} s: {message.splitlines()[0][:120]} ... "
                               f"{'hint: ' + hint if hint else message.splitlines()[-1][:160]}{attempts}",
                      ok=ok, faults=1)
    assert ok, message


@pytest.mark.integration
def test_dvc_survives_a_flaky_endpoint_and_verifies_what_it_pulls(tmp_path, s3_service, scoreboard):
    """The first S3 connections answer 503, the rest reach SeaweedFS: push and pull succeed by retrying, and
    the pulled data is re-hashed against data.dvc."""
    repo = _repo(tmp_path)
    host, port = s3_service.endpoint_url.removeprefix("http://").split(":")
    with FaultProxy(upstream=(host, int(port)), status=503, fail_first=3) as proxy:
        env = _env(proxy.url)
        started = time.monotonic()
        dvc_data.push(repo, env=env)
        shutil.rmtree(repo / ".dvc" / "cache")
        shutil.rmtree(repo / "data")
        pinned = dvc_data.pull(repo, env=env)
        elapsed = time.monotonic() - started
    ok = pinned == dvc_data.pinned_md5(repo) and proxy.failed == 3
    scoreboard.record("fault", "S3 answers 503 to the first 3 connections (dvc push + pull)",
                      done="a proxy in front of SeaweedFS fails the first 3 connections with 503 Slow Down",
                      observed=f"push and pull succeeded by retrying in {elapsed:.0f} s ({proxy.connections} "
                               f"connections, {proxy.failed} failed); pulled data re-hashed: md5 {pinned[:12]}.. "
                               "matches data.dvc", ok=ok, faults=1, data_lost=0 if ok else 1)
    assert ok
