"""Data-parallel training (DistributedDataParallel under torchrun, gloo on this CPU).

What is pinned, and with which tolerance:
- the per-rank batches are slices of the one-process draw; the loss normalised by global counts sums to the
  one-process loss (unit tests, no processes);
- 2 processes x batch B == 1 process x batch 2B, for 6 steps (scene and crop batches, augmentation on):
  * BatchNorm frozen, dropout off (SGD): losses within rtol 1e-5, weights after the first step within atol 1e-6;
  * BatchNorm in training mode, dropout off (AdamW One-Cycle), against one process that normalises each half of the
    batch on its own (what per-process BatchNorm is): losses within rtol 1e-5;
  The tolerances are float32 reduction order: gloo sums two partial gradients where one process sums one batch,
  and the loss sums two partial sums: ~1e-7 relative per reduction (measured: 7e-8 on the losses, 7e-9 on the
  weights, 0 against the half-batch BatchNorm reference); 1e-5 / 1e-6 leave room for a few steps of
  accumulation and for another CPU's kernels.
  * the whole recipe (BatchNorm training mode, dropout 0.1, AdamW) against plain 1 x 2B for 8 steps: within 10 %
    per step and 3 % on the mean of the curve. What differs is only what the exact cases isolate: BatchNorm
    statistics over B instead of 2B images (PyTorch has no CPU SyncBatchNorm) and other dropout draws (measured on
    this CPU with B = 8 scenes of 64 px: at most 4.4 % on a step, 0.4 % on the mean);
- a rank SIGKILLed mid-epoch ends the torchrun job with an error naming it; `--resume` then ends on exactly the
  weights, EMA and optimizer state of an uninterrupted 2-process run (atol 1e-6; the rerun repeats the same
  reductions in the same order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.losses import MultiTaskLoss, _normalise
from mouaadnet.data.assembly import ModeData
from mouaadnet.training import distributed
from mouaadnet.training.checkpoint import load_checkpoint
from mouaadnet.training.config import TrainConfig
from mouaadnet.training.distributed import DistContext
from mouaadnet.training.recipe import BatchStream, peak_lr, step_modes

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return env


def _torchrun(args: list[str], tmp_path: Path, nproc: int = 2, env_extra: dict | None = None,
              timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**_env(tmp_path), **(env_extra or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


# ---- no processes: the pieces ----------------------------------------------------------------------------
class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return index

    def set_epoch(self, epoch):
        pass


def _stream(ctx: DistContext, batch: int = 8) -> BatchStream:
    weights = [0.05] * 10 + [0.5 / 30] * 30  # two sources of different weight
    return BatchStream(_Indices(40), ModeData(list(range(40)), weights), batch, torch.tensor, 0, 7, 0, ctx)


def test_rank_batches_are_slices_of_the_one_process_batches():
    one = [b.tolist() for b in _stream(distributed.SINGLE).epoch(3, 5)]
    ranks = [[b.tolist() for b in _stream(DistContext(r, 2, r, "gloo")).epoch(3, 5)] for r in range(2)]
    assert [len(b) for b in ranks[0]] == [4] * 5
    for step in range(5):
        assert ranks[0][step] + ranks[1][step] == one[step]  # the global batch, in order, split in two
    four = [[b.tolist() for b in _stream(DistContext(r, 4, r, "gloo")).epoch(3, 5)] for r in range(4)]
    assert [sum((four[r][s] for r in range(4)), []) for s in range(5)] == one
    assert [b.tolist() for b in _stream(distributed.SINGLE).epoch(4, 5)] != one  # another epoch, another draw


def test_global_batch_must_split_over_the_processes():
    with pytest.raises(ValueError, match="scene_batch_size = 8 is the global batch .* 3 processes"):
        _stream(DistContext(0, 3, 0, "gloo"))


def _scene_batch() -> dict:
    """4 scenes; the first two hold 2 people each, the third 1, the fourth is unlabelled: the halves' counts differ."""
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 56.0], [30.0, 4.0, 60.0, 60.0]]]).repeat(4, 1, 1)
    return {"images": torch.rand(4, 3, 64, 64, generator=g), "boxes": boxes,
            "box_mask": torch.tensor([[True, True], [True, True], [True, False], [False, False]]),
            "gender": torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, -1.0], [-1.0, -1.0]]),
            "age": torch.tensor([[30.0, -1.0], [-1.0, 70.0], [5.0, -1.0], [-1.0, -1.0]]),
            "age_group": torch.tensor([[-1, 2], [-1, -1], [-1, -1], [-1, -1]]),
            "has_boxes": torch.tensor([True, True, True, False])}


def test_global_counts_make_the_shares_add_up_to_the_whole_batch_loss():
    from model import ModelConfig, build_model

    model = build_model(ModelConfig(scene_size=64, crop_size=32, attr_dropout=0.0)).eval()  # BN: running stats
    batch = _scene_batch()
    whole, _ = MultiTaskLoss()(model(batch["images"]), batch)
    whole_grad = torch.autograd.grad(whole, list(model.parameters()), allow_unused=True)
    halves = [{k: v[i * 2:(i + 1) * 2] for k, v in batch.items()} for i in range(2)]
    counts = []
    MultiTaskLoss(count_reducer=lambda c: counts.append(c) or c)(model(halves[0]["images"]), halves[0])
    MultiTaskLoss(count_reducer=lambda c: counts.append(c) or c)(model(halves[1]["images"]), halves[1])
    global_loss = MultiTaskLoss(count_reducer=lambda c: counts[0] + counts[1])
    shares = [global_loss(model(h["images"]), h)[0] for h in halves]
    assert (shares[0] + shares[1]).item() == pytest.approx(whole.item(), rel=1e-5)
    share_grad = torch.autograd.grad(shares[0] + shares[1], list(model.parameters()), allow_unused=True)
    for a, b in zip(whole_grad, share_grad):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    with torch.no_grad():  # normalising each share by its own counts (and averaging, as DDP does) is not it
        _, terms = MultiTaskLoss()(model(batch["images"]), batch)
        local = [MultiTaskLoss()(model(h["images"]), h)[1] for h in halves]
    worst = max(abs((local[0][k] + local[1][k]).item() / 2 - v.item()) / v.item() for k, v in terms.items())
    assert worst > 0.1  # the offset and age-L1 terms: shares with 4 and 1 people weigh their items 4:1


def test_lr_scaling_follows_the_global_batch_not_the_process_count():
    cfg = TrainConfig()
    cfg.data.scene = [{"path": "synthetic:8"}]
    assert peak_lr(cfg) == cfg.optim.lr
    cfg.optim.lr_scaling = "linear"
    cfg.data.scene_batch_size = 128
    assert peak_lr(cfg) == pytest.approx(cfg.optim.lr * 8)
    cfg.data.scene, cfg.data.crop, cfg.data.crop_batch_size = [], [{"path": "synthetic-crops:8"}], 64
    assert peak_lr(cfg) == pytest.approx(cfg.optim.lr * 4)
    with pytest.raises(ValueError):
        TrainConfig.model_validate({"optim": {"lr_scaling": "sqrt"}})


def test_batchnorm_policy_sync_on_gpu_per_process_on_cpu():
    from model import ModelConfig, build_model

    model = build_model(ModelConfig(scene_size=64, crop_size=32))
    two = DistContext(0, 2, 0, "nccl")
    synced = distributed.convert_batchnorm(model, two, torch.device("cuda", 0), sync=True)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    for ctx, device, sync in ((two, torch.device("cpu"), True), (two, torch.device("cuda", 0), False),
                              (distributed.SINGLE, torch.device("cuda"), True)):
        kept = distributed.convert_batchnorm(build_model(ModelConfig(scene_size=64, crop_size=32)), ctx, device, sync)
        assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in kept.modules())


def test_nproc_per_node_execs_torchrun(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from mouaadnet.cli.main import app

    argv = ["train", "--config", "c.yaml", "--nproc-per-node", "4", "--out", "o", "--resume"]
    assert distributed.strip_option(argv) == ["train", "--config", "c.yaml", "--out", "o", "--resume"]
    assert distributed.strip_option(["train", "--nproc-per-node=4", "-q"]) == ["train", "-q"]
    for name in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    calls = []

    def fake_execv(path, args):
        calls.append(args)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", fake_execv)
    monkeypatch.setattr(sys, "argv", ["mouaadnet", *argv])
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                      "-m", "mouaadnet.cli", "train", "--config", "c.yaml", "--out", "o", "--resume"]]
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # inside torchrun the option makes no sense
    assert CliRunner().invoke(app, argv).exit_code == 2


# ---- torchrun, 2 processes, gloo -------------------------------------------------------------------------
def _config(steps: int, batch: int, dropout: float, optimizer: str = "adamw") -> dict:
    # threads: 1 in every process: 1- and 2-process runs then sum in the same order per process (with `auto`, one
    # process takes both cores, and oneDNN's multi-threaded kernels round differently: ~3 % apart after a few steps)
    return {"seed": 0, "device": "cpu", "experiment": "ddp-tests", "threads": 1,
            "model": {"scene_size": 64, "crop_size": 32, "attr_dropout": dropout},
            "data": {"scene": [{"path": "synthetic:64:0", "val": "synthetic:4:99", "max_val": 4}],
                     "crop": [{"path": "synthetic-crops:64:1", "val": "synthetic-crops:4:98", "max_val": 4}],
                     "scene_batch_size": batch, "crop_batch_size": batch, "augment": True},
            "optim": {"optimizer": optimizer, "epochs": 1, "steps_per_epoch": steps, "ema": False}}


def _ghost_batchnorm_reference(cfg: TrainConfig, steps: int, world: int, out: Path) -> list[float]:
    """One process that does what `world` processes with per-process BatchNorm do: forward each 1/world of the
    global batch on its own (BatchNorm statistics of that share), normalise the loss by the global counts,
    step once on the summed gradient."""
    from mouaadnet.training.trainer import Trainer

    trainer = Trainer(cfg, out, progress=False)
    trainer.model.train()
    modes = step_modes(steps, cfg.data.crop_fraction, True, True)
    iterators = {m: s.epoch(0, modes.count(m)) for m, s in trainer.streams.items()}
    weights, losses = cfg.loss.model_dump(), []
    for mode in modes:
        batch = trainer._to_device(next(iterators[mode]))
        k = len(batch["images"]) // world
        parts = []
        for i in range(world):
            share = {key: value[i * k:(i + 1) * k] for key, value in batch.items()}
            out_ = trainer.model(share["images"], mode=mode)
            parts.append(trainer.loss.scene_parts(out_, share) if mode == "scene" else trainer.loss.attribute_parts(
                out_["gender"], out_["age"], share["gender"], share["age"], share["age_group"]))
        counts = sum(torch.stack([c for _, c in p.values()]) for p in parts)
        terms = [_normalise(p, lambda _, global_counts=counts: global_counts) for p in parts]
        total = sum(sum(weights[n] * v for n, v in t.items()) for t in terms)
        trainer.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), cfg.optim.grad_clip)
        trainer.optimizer.step()
        trainer.scheduler.step()
        losses.append(total.item())
    return losses


@pytest.fixture
def one_thread():
    """torchrun gives each worker 1 OpenMP thread; the in-process references must sum in the same order (with 2
    threads oneDNN's kernels round differently: ~3 % apart after a few steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_the_whole_batch(tmp_path, one_thread):
    from ddp_worker import run_steps

    from mouaadnet.training.trainer import Trainer

    # SGD where weights are compared: its update is linear in the gradient, while AdamW's first update,
    # lr * g / (|g| + eps), turns float noise on near-zero gradients into ~1e-7..1e-6 weight differences
    cases = {"frozen_bn": {"config": _config(6, 8, 0.0, "sgd"), "steps": 6, "freeze_bn": True},
             "train_bn": {"config": _config(6, 8, 0.0), "steps": 6},
             "recipe": {"config": _config(8, 16, 0.1), "steps": 8}}
    done = _torchrun([str(WORKER), "steps", json.dumps(cases), str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    two = {name: torch.load(tmp_path / f"{name}.pt", weights_only=False) for name in cases}
    assert all(r["world_size"] == 2 for r in two.values())

    # BatchNorm frozen, dropout off: the same computation, only the float32 reduction order differs
    cfg = TrainConfig.model_validate(cases["frozen_bn"]["config"])
    one = run_steps(Trainer(cfg, tmp_path, progress=False), 6, freeze_bn=True)
    assert one["modes"] == two["frozen_bn"]["modes"] == ["scene", "crop"] * 3
    np.testing.assert_allclose(two["frozen_bn"]["losses"], one["losses"], rtol=1e-5)
    for name, value in one["first_step"].items():
        torch.testing.assert_close(two["frozen_bn"]["first_step"][name], value, rtol=0, atol=1e-6, msg=name)
    # a crop step leaves the detection head unused in every process: no gradient there, as in one process
    assert two["frozen_bn"]["no_grad"] == one["no_grad"] and any("detection" in n for n in one["no_grad"])

    # BatchNorm in training mode: each process normalises its half; one process doing the same matches exactly
    cfg = TrainConfig.model_validate(cases["train_bn"]["config"])
    reference = _ghost_batchnorm_reference(cfg, 6, 2, tmp_path)
    np.testing.assert_allclose(two["train_bn"]["losses"], reference, rtol=1e-5)

    # the whole recipe against plain 1 process x 2B: BatchNorm statistics and dropout draws differ (module doc)
    cfg = TrainConfig.model_validate(cases["recipe"]["config"])
    plain = np.array(run_steps(Trainer(cfg, tmp_path, progress=False), 8, freeze_bn=False)["losses"])
    ddp = np.array(two["recipe"]["losses"])
    assert np.all(np.abs(ddp - plain) <= 0.10 * plain), (ddp, plain)
    assert abs(ddp.mean() - plain.mean()) <= 0.03 * plain.mean(), (ddp, plain)


TINY = """\
experiment: ddp-resume
seed: 0
model: {scene_size: 64, crop_size: 32}
data:
  scene: [{path: "synthetic:24:0", val: "synthetic:4:99", max_val: 4}]
  crop: [{path: "synthetic-crops:24:1", val: "synthetic-crops:4:98", max_val: 4}]
  scene_batch_size: 4
  crop_batch_size: 4
optim: {epochs: 2, steps_per_epoch: 4}
device: cpu
threads: 1
"""


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_resume_continues_exactly(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    train = ["cli", "train", "--config", "tiny.yaml", "--quiet"]
    straight = _torchrun([str(WORKER), *train, "--out", "straight"], tmp_path)
    assert straight.returncode == 0, straight.stderr[-4000:]

    killed = _torchrun([str(WORKER), *train, "--out", "resumed"], tmp_path,
                       env_extra={"MOUAADNET_TEST_KILL": "1:1:2"})  # rank 1, 2nd epoch, before its 2nd step
    assert killed.returncode != 0
    assert "ChildFailedError" in killed.stderr and "SIGKILL" in killed.stderr, killed.stderr[-4000:]
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 0  # epoch 1 kept, epoch 2 lost

    # the plain CLI, which execs torchrun itself
    resumed = subprocess.run([sys.executable, "-m", "mouaadnet.cli", "train", "--config", "tiny.yaml", "--quiet",
                              "--out", "resumed", "--resume", "--nproc-per-node", "2"],
                             cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["epoch"] == b["epoch"] == 1 and a["world_size"] == b["world_size"] == 2
    assert len(b["rng_ranks"]) == 2
    for part in ("model", "ema"):
        for name, value in a[part].items():
            torch.testing.assert_close(b[part][name], value, rtol=0, atol=1e-6, msg=f"{part}.{name}")
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(b["optimizer"]["state"][key][name], value, rtol=0, atol=1e-6)
    assert a["history"]["loss"] == pytest.approx(b["history"]["loss"], rel=1e-6)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(b["mlflow_run_id"])  # the resumed run continues the killed one: one MLflow run
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]


# ---- GPUs: nccl, SyncBatchNorm, fp16 AMP -----------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.slow
def test_nccl_syncbatchnorm_fp16_on_gpus(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: nccl, SyncBatchNorm and fp16 AMP need one (run on a GPU machine)")
    nproc = min(2, torch.cuda.device_count())
    (tmp_path / "gpu.yaml").write_text(TINY.replace("device: cpu", "device: cuda\namp: fp16"))
    done = subprocess.run([sys.executable, "-m", "mouaadnet.cli", "train", "--config", "gpu.yaml", "--quiet",
                           "--out", "gpu", "--nproc-per-node", str(nproc)],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    state = load_checkpoint(tmp_path / "gpu" / "last.pt")
    assert state["world_size"] == nproc and state["scaler"]  # fp16: the GradScaler state is saved
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(state["mlflow_run_id"]).data.tags
    assert tags["amp"] == "float16" and tags["dist_backend"] == ("nccl" if nproc > 1 else "none")
