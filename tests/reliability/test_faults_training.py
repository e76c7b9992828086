"""Faults during training: SIGKILL mid-epoch and mid-checkpoint-write, a full disk, the MLflow server going away.

Every run is a real `mouaadnet train` subprocess on a tiny synthetic config; the reference is an uninterrupted
run of the same config, and "resumed exactly" means every tensor of the final checkpoint (weights, EMA,
optimizer moments) is bit-identical to it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from _rel import FULL, PYTHON, child_env, full_only

from mouaadnet.training.checkpoint import CheckpointError, load_checkpoint

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]

EPOCHS = 3


def _config(path: Path, experiment: str = "rel-train", epochs: int = EPOCHS) -> Path:
    cfg = {"experiment": experiment, "seed": 3, "model": {"scene_size": 64, "crop_size": 32},
           "data": {"scene": [{"path": "synthetic:24:0", "val": "synthetic:4:99", "max_val": 4}],
                    "crop": [{"path": "synthetic-crops:24:1", "val": "synthetic-crops:4:98", "max_val": 4}],
                    "scene_batch_size": 4, "crop_batch_size": 4},
           "optim": {"epochs": epochs, "steps_per_epoch": 4},
           "threads": 1}  # not "auto": runs compared bit for bit must use the same kernels (thread count)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_cmd(cfg: Path, out: Path, *extra) -> list[str]:
    return [PYTHON, "-m", "mouaadnet.cli", "train", "--config", str(cfg), "--out", str(out), "--quiet", *extra]


def _env(tmp: Path, **extra) -> dict[str, str]:
    return child_env(MLFLOW_TRACKING_URI=extra.pop("uri", f"sqlite:///{tmp / 'mlflow.db'}"), **extra)


def _run(cmd, env, cwd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, dict):
            out.update(_tensors(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out.update(_tensors(dict(enumerate(value)), f"{name}."))
    return out


def _compare(a: Path, b: Path) -> tuple[bool, str]:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    ta = _tensors({k: sa[k] for k in ("model", "ema", "optimizer")})
    tb = _tensors({k: sb[k] for k in ("model", "ema", "optimizer")})
    if ta.keys() != tb.keys():
        return False, f"different tensors: {sorted(set(ta) ^ set(tb))[:5]}"
    differing = [k for k in ta if not torch.equal(ta[k], tb[k])]
    if differing:
        worst = max(float((ta[k].double() - tb[k].double()).abs().max()) for k in differing)
        return False, f"{len(differing)} of {len(ta)} tensors differ (max |diff| {worst:.3g}), e.g. {differing[:3]}"
    return True, f"all {len(ta)} tensors (weights, EMA, optimizer) bit-identical; epoch {sa['epoch']} == {sb['epoch']}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: the target every interrupted-and-resumed run must reproduce."""
    root = tmp_path_factory.mktemp("train-ref")
    cfg = _config(root / "cfg.yaml")
    result = _run(_train_cmd(cfg, root / "out"), _env(root), root)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "cfg": cfg, "last": root / "out" / "last.pt",
            "size": (root / "out" / "last.pt").stat().st_size}


def _wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def _epoch_of(path: Path) -> int | None:
    try:
        return int(load_checkpoint(path)["epoch"])
    except (CheckpointError, KeyError, OSError):
        return None


def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference, tmp_path, scoreboard):
    out = tmp_path / "out"
    proc = subprocess.Popen(_train_cmd(reference["cfg"], out), env=_env(tmp_path), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        saw_epoch = _wait_for(lambda: _epoch_of(out / "last.pt") == 0, 300)
        time.sleep(0.4)  # into epoch 2: its steps run, its checkpoint is not written yet
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    kept = _epoch_of(out / "last.pt")
    leftovers = sorted(p.name for p in out.glob(".last.pt.tmp-*"))
    resumed = _run(_train_cmd(reference["cfg"], out, "--resume"), _env(tmp_path), tmp_path)
    same, why = _compare(reference["last"], out / "last.pt") if resumed.returncode == 0 else (False, resumed.stderr[-800:])
    ok = saw_epoch and kept is not None and resumed.returncode == 0 and same
    scoreboard.record("fault", "SIGKILL of training mid-epoch",
                      done=f"SIGKILL 0.4 s after epoch 1's last.pt appeared ({EPOCHS} epochs x 4 steps), then --resume",
                      observed=f"last.pt kept epoch index {kept} (complete, loadable); temp files left {leftovers}; "
                               f"resume exit {resumed.returncode}; vs the uninterrupted run: {why}",
                      ok=ok, faults=1, data_lost=0 if ok else 1)
    assert ok, why


KILL_IN_SAVE = r"""
import os, signal, sys
import torch
calls = {"n": 0}
real_save = torch.save
def save(obj, handle, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == int(os.environ["KILL_AT_SAVE"]):
        import io
        buf = io.BytesIO(); real_save(obj, buf)
        handle.write(buf.getvalue()[: len(buf.getvalue()) // 2]); handle.flush(); os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)  # half the checkpoint on disk, then gone
    return real_save(obj, handle, *args, **kwargs)
torch.save = save
from mouaadnet.cli.main import app
sys.argv = ["mouaadnet"] + sys.argv[1:]
app()
"""


def test_sigkill_mid_checkpoint_write_never_leaves_a_truncated_last_pt(reference, tmp_path, scoreboard):
    out = tmp_path / "out"
    # saves: epoch 1 -> last.pt (+ best.pt when improved); kill inside the 3rd torch.save: epoch 2's write.
    cmd = [PYTHON, "-c", KILL_IN_SAVE, "train", "--config", str(reference["cfg"]), "--out", str(out), "--quiet"]
    killed = _run(cmd, _env(tmp_path, KILL_AT_SAVE=3), tmp_path)
    kept = _epoch_of(out / "last.pt")
    partial = sorted(p.name for p in out.glob(".*.tmp-*"))
    resumed = _run(_train_cmd(reference["cfg"], out, "--resume"), _env(tmp_path), tmp_path)
    same, why = _compare(reference["last"], out / "last.pt") if resumed.returncode == 0 else (False, resumed.stderr[-800:])
    cleaned = not list(out.glob(".*.tmp-*"))
    ok = killed.returncode == -signal.SIGKILL and kept is not None and resumed.returncode == 0 and same and cleaned
    scoreboard.record("fault", "SIGKILL of training mid-checkpoint-write",
                      done="torch.save wrote half of epoch 2's checkpoint to the temp file, then SIGKILL; --resume",
                      observed=f"exit {killed.returncode}; last.pt still the complete epoch index {kept}; half-written "
                               f"temp files {partial} never read and removed by the next save ({cleaned}); "
                               f"resume: {why}",
                      ok=ok, faults=1, data_lost=0 if ok else 1)
    assert ok, (killed.stderr[-1500:], why)


def test_truncated_last_pt_is_refused_not_loaded(reference, tmp_path, scoreboard):
    """Even a last.pt truncated by something else (a copy, a non-atomic writer) is never loaded."""
    out = tmp_path / "out"
    out.mkdir()
    data = reference["last"].read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])
    result = _run(_train_cmd(reference["cfg"], out, "--resume"), _env(tmp_path), tmp_path)
    line = (result.stderr.strip().splitlines() or [""])[-1]
    ok = result.returncode == 1 and "last.pt" in line and "corrupt, truncated" in line and "Traceback" not in result.stderr
    scoreboard.record("fault", "--resume from a truncated last.pt", done="last.pt cut to half its bytes, then --resume",
                      observed=f"exit {result.returncode}: {line}", ok=ok, faults=1)
    assert ok, result.stderr[-2000:]


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int):
    """A size-limited tmpfs at ``path`` (we run as root in the sandbox); skips where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` free bytes."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    with open(disk / "filler", "wb") as handle:
        remaining = max(0, free - leave)
        while remaining > 0:
            chunk = min(remaining, 1 << 20)
            handle.write(b"\0" * chunk)
            remaining -= chunk


def test_disk_full_while_writing_a_checkpoint(reference, tmp_path, scoreboard):
    size = reference["size"]
    with small_disk(tmp_path / "disk", max(4, 4 * size // 2**20 + 2)) as disk:
        out = disk / "out"
        _fill(disk, int(2.5 * size))  # room for epoch 1's last.pt and best.pt, not for epoch 2's temp file
        result = _run(_train_cmd(reference["cfg"], out), _env(tmp_path), tmp_path)
        line = (result.stderr.strip().splitlines() or [""])[-1]
        kept = _epoch_of(out / "last.pt")
        temps = sorted(p.name for p in out.glob(".*.tmp-*"))
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rel-train").experiment_id])
    status = runs[0].info.status if runs else "?"
    ok = (result.returncode == 1 and "No space left on device" in line and kept == 0 and not temps
          and status == "FAILED" and "Traceback" not in result.stderr)
    scoreboard.record("fault", "disk full while writing a checkpoint",
                      done=f"--out on a tmpfs filled to leave 2.5 checkpoints ({size / 1e6:.1f} MB each)",
                      observed=f"exit {result.returncode}: {line}; last.pt = complete epoch index {kept}; temp files "
                               f"left {temps}; MLflow run {status}", ok=ok, faults=1, data_lost=0 if kept == 0 else 1)
    assert ok, result.stderr[-2000:]


@full_only("two ONNX exports")
def test_disk_full_while_exporting_onnx(reference, tmp_path, scoreboard):
    from model.artifacts import sha256_file

    with small_disk(tmp_path / "disk", 8) as disk:
        target = disk / "model.onnx"
        cmd = [PYTHON, "-m", "mouaadnet.cli", "export", str(reference["last"]), "--out", str(target),
               "--int8", "none"]
        first = _run(cmd, _env(tmp_path), tmp_path)
        assert first.returncode == 0, first.stderr[-2000:]
        before = sha256_file(target)
        _fill(disk, 64 * 1024)
        second = _run(cmd, _env(tmp_path), tmp_path)
        line = (second.stderr.strip().splitlines() or [""])[-1]
        intact = sha256_file(target) == before
        temps = sorted(p.name for p in disk.glob(".*.tmp-*"))
    ok = second.returncode != 0 and "No space left" in second.stderr and intact and not temps \
        and "Traceback" not in second.stderr
    scoreboard.record("fault", "disk full while exporting ONNX",
                      done="mouaadnet export over an existing model.onnx on a tmpfs with 64 KB left",
                      observed=f"exit {second.returncode}: {line}; previous model.onnx intact (sha256 unchanged): "
                               f"{intact}; temp files left {temps}", ok=ok, faults=1, data_lost=0 if intact else 1)
    assert ok, second.stderr[-2000:]


@pytest.mark.integration
@full_only("two mlflow server starts and a 4-6 epoch run")
def test_mlflow_server_outage_during_training(reference, tmp_path, scoreboard):
    """The tracking server stops after epoch 1 and comes back (same port, same store) while training goes on:
    training never stops, the epochs logged during the outage are delivered late, the run ends FINISHED."""
    from mlflow import MlflowClient

    from mouaadnet.pipeline.services import (
        ManagedProcess,
        find_executable,
        free_ports,
        mlflow_command,
        mlflow_server_env,
    )

    epochs = 6 if FULL else 4
    cfg = _config(tmp_path / "cfg.yaml", experiment="rel-outage", epochs=epochs)
    port = free_ports(1)[0]
    uri = f"http://127.0.0.1:{port}"
    store = f"sqlite:///{tmp_path / 'server.db'}"
    cmd = mlflow_command(find_executable("mlflow"), port, store, str(tmp_path / "artifacts"))

    def start(n):
        proc = ManagedProcess("mlflow server", cmd, tmp_path / f"mlflow-{n}.log", env=mlflow_server_env(None),
                              cwd=tmp_path).start()
        import urllib.request

        def ready():
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                return response.status == 200

        proc.wait_ready(ready, 180, interval=0.5)
        return proc

    server = start(1)
    out = tmp_path / "out"
    train = subprocess.Popen(_train_cmd(cfg, out), env=_env(tmp_path, uri=uri, MOUAADNET_MLFLOW_WAIT=240),
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    down_at_epoch = None
    try:
        assert _wait_for(lambda: _epoch_of(out / "last.pt") == 0, 300), "epoch 1 never finished"
        server.stop(grace=5)
        down_at_epoch = 1
        # the outage lasts until training has finished at least one more epoch without the server
        _wait_for(lambda: (_epoch_of(out / "last.pt") or 0) >= 2 or train.poll() is not None, 300, 0.2)
        server = start(2)
        stdout, stderr = train.communicate(timeout=600)
    finally:
        if train.poll() is None:
            train.kill()
        try:
            client = MlflowClient(uri)
            runs = client.search_runs([client.get_experiment_by_name("rel-outage").experiment_id])
            run = runs[0]
            history = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
            status = run.info.status
        finally:
            server.stop(grace=5)
    spool_left = (out / "mlflow-pending.jsonl").exists()
    warned = "MLflow unreachable" in stderr
    ok = (train.returncode == 0 and status == "FINISHED" and sorted(history) == list(range(1, epochs + 1))
          and warned and not spool_left)
    scoreboard.record("fault", "MLflow server stops during training and comes back",
                      done=f"mlflow server SIGTERMed after epoch {down_at_epoch} of {epochs}, restarted on the same "
                           "port and store after training finished another epoch without it",
                      observed=f"training exit {train.returncode}; warned on stderr: {warned}; loss logged for steps "
                               f"{sorted(history)}; run {status}; local spool left: {spool_left}",
                      ok=ok, faults=1, data_lost=epochs - len(set(history)))
    assert ok, stderr[-3000:]
