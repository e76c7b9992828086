"""Multi-task training: mixed scene/crop batches, AMP, One-Cycle, EMA, atomic resumable checkpoints, MLflow.

One process, or several that torchrun started (DistributedDataParallel, see ``mouaadnet.training.distributed``):
every process runs the same loop (``Trainer.fit``); rank 0 alone validates, writes checkpoints, logs to MLflow
and shows progress."""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from model import build_model
from model.losses import MultiTaskLoss
from mouaadnet.data.assembly import TrainingData, load_training_data
from mouaadnet.evaluation.evaluate import EvalResult, evaluate_sets, flat_metrics
from mouaadnet.tracking import MetricSpool, final_wait, git_commit, mlflow_run
from mouaadnet.training import distributed, durable, run_logging
from mouaadnet.training.checkpoint import (
    atomic_save,
    load_checkpoint,
    load_pretrained,
    model_from_checkpoint,
    restore_rng_state,
    rng_state,
)
from mouaadnet.training.config import TrainConfig
from mouaadnet.training.distributed import DistContext
from mouaadnet.training.progress import ProgressLog
from mouaadnet.training.recipe import (
    build_optimizer,
    build_scheduler,
    build_streams,
    mixed_batches,
    peak_lr,
    ramped_ema,
    resolve_amp,
    resolve_device,
    seed_everything,
)
from mouaadnet.training.threads import apply_threads


@dataclass
class TrainSummary:
    out_dir: Path
    epochs_run: int
    best_score: float
    best_epoch: int
    last_metrics: dict[str, float]
    images_per_second: float
    bad_samples: int
    run_id: str | None = None
    history: dict[str, list[float]] = field(default_factory=dict)


class Trainer:
    """Owns the model, optimizer state and data streams of one run (of this process, under torchrun)."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, data: TrainingData | None = None, progress: bool = True,
                 progress_every: float | None = None, dist: DistContext | None = None,
                 resume_key: str | None = None):
        self.cfg = cfg
        self.resume_key = resume_key  # set: every epoch's checkpoints are also copied to the MLflow run (durable)
        self.out_dir = Path(out_dir)
        self.dist = dist if dist is not None else distributed.current()
        self.progress = progress and self.dist.is_main
        self.progress_every = progress_every if self.dist.is_main else None  # seconds between plain progress lines
        self.progress_log: ProgressLog | None = None
        seed_everything(cfg.seed)
        self.device = distributed.device_for(resolve_device(cfg.device), self.dist)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        self.data = data or load_training_data(cfg.data, cfg.seed)
        if not self.data.scene.samples and not self.data.crop.samples:
            raise ValueError("the training config has no data sources (data.scene and data.crop are empty)")
        self.model = build_model(cfg.model).to(self.device)
        if cfg.pretrained:
            self._load_pretrained(cfg.pretrained)
        self.model = distributed.convert_batchnorm(self.model, self.dist, self.device, cfg.distributed.sync_batchnorm)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.dist.enabled:  # same weights everywhere (built from cfg.seed); own dropout draws per process
            seed_everything(distributed.rank_seed(cfg.seed, self.dist))
        self.loss = MultiTaskLoss(cfg.loss, count_reducer=self.dist.all_reduce_sum if self.dist.enabled else None)
        self.teacher = self._load_teacher(cfg.detector_teacher) if cfg.detector_teacher else None
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = (AveragedModel(self.model, multi_avg_fn=ramped_ema(cfg.optim.ema_decay, cfg.optim.ema_ramp_steps),
                                  use_buffers=True) if cfg.optim.ema else None)
        self.streams = build_streams(cfg, self.data, self.dist)
        # what the forward pass runs through: DistributedDataParallel under torchrun (crop batches leave the
        # detection head unused), the model itself for one process
        self.train_module = distributed.wrap(self.model, self.dist, self.device,
                                             find_unused_parameters="crop" in self.streams)
        self.rng_ranks: list[dict[str, Any]] = []  # every process's RNG state at the end of the last epoch
        self.epoch = 0  # next epoch to run
        self.best_score = -math.inf
        self.best_epoch = -1
        self.history: dict[str, list[float]] = defaultdict(list)
        self.run_id: str | None = None
        self.last_metrics: dict[str, float] = {}  # of the last epoch run (rank 0: validation metrics included)
        self.last_results: list[EvalResult] = []  # rank 0's last validation

    def _load_pretrained(self, path: str) -> None:
        state = load_checkpoint(path)
        try:
            fresh = load_pretrained(self.model, state.get("ema") or state["model"], state.get("model_config") or {})
        except ValueError as error:
            raise ValueError(f"pretrained {path} does not fit the config's model: {error}") from None
        if fresh:  # a branch the config adds (e.g. the IoU branch on a converged detector) starts from scratch
            distributed.note(f"pretrained {path}: {len(fresh)} tensors new in this config start from their "
                             f"initialisation: {', '.join(fresh)}", self.dist)

    def _load_teacher(self, path: str) -> nn.Module:
        teacher, _ = model_from_checkpoint(path)
        if teacher.cfg.arch != "v2":
            raise ValueError(f"detector_teacher {path} is arch {teacher.cfg.arch}: distillation needs a v2 (ltrb) teacher")
        teacher = teacher.to(self.device).eval().requires_grad_(False)
        return teacher.to(memory_format=torch.channels_last) if self.cfg.channels_last else teacher

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def bad_samples(self) -> int:
        return sum(len(s.dataset.bad_samples) for s in self.streams.values())

    # ---- one optimisation step -------------------------------------------------------------------------
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        moved = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if self.cfg.channels_last:
            moved["images"] = moved["images"].contiguous(memory_format=torch.channels_last)
        return moved

    def optimizer_step(self, batch: dict[str, Any], mode: str) -> dict[str, float]:
        """One optimisation step on ``batch`` (this process's share of the global batch); returns its losses."""
        batch = self._to_device(batch)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
                    else contextlib.nullcontext())
        with autocast:
            outputs = self.train_module(batch["images"], mode=mode)
            teacher = None
            if self.teacher is not None and mode == "scene":
                with torch.no_grad():
                    # defer_attributes: the teacher teaches boxes and scores only; skip its 102-channel decision
                    teacher = self.teacher(batch["images"], mode="scene", defer_attributes=True)
        # losses in fp32 (the loss casts the head outputs); under DDP normalised by the global batch's counts
        total, terms = self.loss(outputs, batch, teacher)
        if not torch.isfinite(total):
            values = {k: round(float(v), 4) for k, v in terms.items()}
            raise FloatingPointError(f"non-finite {mode} loss at epoch {self.epoch + 1}"
                                     f"{f' on rank {self.dist.rank}' if self.dist.enabled else ''}: {values}")
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over the processes; this process's loss is its share of the global-batch loss,
        # so world_size * loss makes the average the gradient of the global loss (exactly 1x for one process)
        self.scaler.scale(total * self.dist.world_size if self.dist.enabled else total).backward()
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        if not self.dist.enabled:
            return {"loss": total.item(), **{f"loss_{mode}_{k}": v.item() for k, v in terms.items()}}
        # the processes' shares add up to the global-batch loss: log that sum, the same on every process
        values = self.dist.all_reduce_sum(torch.stack([total.detach(), *(v.detach() for v in terms.values())]))
        values = values.tolist()
        return {"loss": values[0], **{f"loss_{mode}_{k}": v for k, v in zip(terms, values[1:])}}

    def train_epoch(self) -> dict[str, float]:
        """One epoch of ``steps_per_epoch`` steps; returns mean losses, LR and throughput."""
        self.train_module.train()
        steps, epochs = self.cfg.optim.steps_per_epoch, self.cfg.optim.epochs
        batches = mixed_batches(self.streams, steps, self.cfg.data.crop_fraction, self.epoch)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        images, start = 0, time.perf_counter()
        if self.progress_every is not None and self.progress_log is None:
            self.progress_log = ProgressLog(epochs * steps, self.epoch * steps, self.progress_every)
        bar = tqdm(batches, total=steps, desc=f"epoch {self.epoch + 1}/{epochs}", disable=not self.progress,
                   unit="step", dynamic_ncols=True)
        for step, (mode, batch) in enumerate(bar, 1):
            if self.device.type == "cpu":
                apply_threads(self.cfg.threads, step - 1)
            for name, value in self.optimizer_step(batch, mode).items():
                sums[name] += value
                counts[name] += 1
            images += len(batch["images"]) * self.dist.world_size  # the global batch
            rate = images / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{sums['loss'] / counts['loss']:.3f}", img_s=f"{rate:.1f}")
            if self.progress_log is not None:
                self.progress_log.step(self.epoch + 1, epochs, step, steps, sums["loss"] / counts["loss"], rate)
        elapsed = time.perf_counter() - start
        metrics = {name: sums[name] / counts[name] for name in sums}
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["images_per_second"] = images / elapsed
        metrics["threads"] = float(torch.get_num_threads())
        return metrics

    def validate(self) -> tuple[dict[str, float], list[EvalResult]]:
        model = self.eval_model.eval()
        results = evaluate_sets(model, self.data.eval_sets, self.cfg.model.scene_size, self.cfg.model.crop_size,
                                str(self.device), self.cfg.score_threshold)
        return flat_metrics(results), results

    # ---- checkpoints -------------------------------------------------------------------------------------
    def state(self, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_updates": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": dict(self.history),
            "metrics": metrics,
            "rng": rng_state(),
            # one RNG state per process (this one's now, the others' at the end of the epoch), for an exact resume
            "rng_ranks": [rng_state(), *self.rng_ranks[1:]],
            "world_size": self.dist.world_size,
            "config": self.cfg.model_dump(),
            "model_config": self.cfg.model.model_dump(),
            "data_fingerprint": self.data.fingerprint,
            "mlflow_run_id": self.run_id,
        }

    def restore(self, path: str | Path) -> None:
        """Continue exactly where ``path`` (a last.pt) stopped: weights, optimizer, scheduler, scaler, RNG.

        Under torchrun rank 0 reads the file and sends its content to the others: every process resumes from
        the same checkpoint, and only rank 0 needs to see the file."""
        state = load_checkpoint(path) if self.dist.is_main else None
        state = self.dist.broadcast_object(state)
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema"):
            self.ema.module.load_state_dict(state["ema"])
            self.ema.n_averaged.fill_(state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"] + 1
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.history = defaultdict(list, {k: list(v) for k, v in state["history"].items()})
        self.run_id = state.get("mlflow_run_id")
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) == self.dist.world_size:
            restore_rng_state(ranks[self.dist.rank])
        else:  # another number of processes: the data stream continues exactly, the dropout draws cannot
            restore_rng_state(state["rng"])
            if self.dist.enabled:
                seed_everything(distributed.rank_seed(self.cfg.seed + self.epoch, self.dist))
            distributed.note(f"resuming with {self.dist.world_size} processes a run checkpointed with {len(ranks)}: "
                             f"batches continue exactly, dropout draws differ", self.dist)

    def gather_rng(self) -> None:
        """Collect every process's RNG state on all of them (a collective: every process calls it each epoch)."""
        self.rng_ranks = self.dist.all_gather_object(rng_state()) if self.dist.enabled else []

    def save(self, metrics: dict[str, float], score: float) -> bool:
        """Write last.pt every epoch and best.pt when ``score`` improves; returns whether it improved."""
        improved = score > self.best_score or (math.isnan(self.best_score) and not math.isnan(score))
        if improved:
            self.best_score, self.best_epoch = score, self.epoch
        state = self.state(metrics)
        atomic_save(state, self.out_dir / "last.pt")
        if improved:
            atomic_save(state, self.out_dir / "best.pt")
        return improved

    # ---- the run: the same loop on every process -----------------------------------------------------------
    def fit(self, run_name: str | None = None,
            datasets: list[tuple[str, str, str]] | None = None) -> TrainSummary:
        """Run the epochs from ``self.epoch`` on. Every process trains its share of each batch; rank 0 then
        validates, checkpoints and logs the epoch (inside its MLflow run) while the others wait at a barrier."""
        with self._tracking(run_name, datasets) as spool:
            for epoch in range(self.epoch, self.cfg.optim.epochs):
                self.epoch = epoch
                metrics = self.train_epoch()
                self.gather_rng()
                if self.dist.is_main:
                    self._close_epoch(metrics, spool)
                else:
                    append_history(self.history, metrics, epoch + 1)
                self.last_metrics = metrics
                self.dist.barrier()  # the other ranks wait here while rank 0 validates and checkpoints
        rates = self.history.get("images_per_second") or [float("nan")]
        return TrainSummary(self.out_dir, len(self.history.get("epoch", [])), self.best_score, self.best_epoch + 1,
                            self.last_metrics, float(np.mean(rates)), self.bad_samples(), self.run_id,
                            dict(self.history))

    def _close_epoch(self, metrics: dict[str, float], spool: MetricSpool) -> None:
        """Rank 0 after an epoch: validation metrics into ``metrics``, history, checkpoints, MLflow, a line."""
        val_metrics, self.last_results = self.validate()
        metrics.update(val_metrics)
        metrics["bad_samples"] = float(self.bad_samples())
        append_history(self.history, metrics, self.epoch + 1)
        score = val_metrics.get(self.cfg.best_metric, float("nan"))
        improved = self.save(metrics, score)
        spool.log(metrics, step=self.epoch + 1)  # an unreachable server never stops training
        if self.resume_key:  # the copy a re-submitted pipeline run resumes from when this machine is gone
            durable.upload(self.run_id, self.out_dir, self.epoch + 1)
        if self.progress or self.progress_every is not None:
            print(f"epoch {self.epoch + 1}: loss {metrics['loss']:.4f}  {self.cfg.best_metric} {score:.4f}"
                  f"{'  (best)' if improved else ''}  {metrics['images_per_second']:.1f} img/s", flush=True)

    @contextlib.contextmanager
    def _tracking(self, run_name: str | None,
                  datasets: list[tuple[str, str, str]] | None) -> Iterator[MetricSpool | None]:
        """Rank 0: the run's MLflow run (resumed with the checkpoint's run id) and its epoch-metric spool, then the
        run's outputs; the other ranks: nothing (None)."""
        if not self.dist.is_main:
            yield None
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        moved_from = self.run_id if run_logging.run_is_unknown(self.run_id) else None
        if moved_from:  # a checkpoint resumed on another machine: a new run that carries the epochs done there
            self.run_id = None
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"
        tags = {"git_commit": git_commit(), "data_fingerprint": self.data.fingerprint, "device": str(self.device),
                "amp": amp, "world_size": str(self.dist.world_size), "dist_backend": self.dist.backend or "none",
                "lr_peak": f"{peak_lr(self.cfg):g}"}
        if self.resume_key:
            tags[durable.KEY_TAG] = self.resume_key
        with mlflow_run(self.cfg.experiment, run_name=run_name, run_id=self.run_id, tags=tags,
                        entry_point="train") as run:
            if self.run_id is None:
                self.run_id = run.info.run_id
                run_logging.log_run_start(self.cfg, self.out_dir, datasets)
                if moved_from:
                    run_logging.log_resumed(moved_from, self.epoch, dict(self.history))
            spool = MetricSpool(self.run_id, self.out_dir / "mlflow-pending.jsonl")
            if spool.load():  # a previous process of this run was killed while MLflow was unreachable
                spool.flush()
            yield spool
            if not spool.flush(wait=final_wait()):
                print(f"warning: MLflow still unreachable: {len(spool.pending)} epoch(s) of metrics stay in "
                      f"{spool.path} (delivered by `--resume` of this run); checkpoints are complete", flush=True)
            else:
                run_logging.log_run_outputs(self.out_dir, dict(self.history), self.last_results,
                                            {"best_epoch": self.best_epoch + 1, "bad_samples": self.bad_samples()})


def append_history(history: dict[str, list[float]], metrics: dict[str, float], epoch: int) -> None:
    """Add one epoch; a metric absent this epoch (NaN, e.g. no matched person yet) is NaN, so every list stays
    aligned with history["epoch"]."""
    done = len(history.get("epoch", []))
    for name in set(history) | set(metrics):
        if name == "epoch":
            continue
        series = history.setdefault(name, [])
        series.extend([float("nan")] * (done - len(series)))
        series.append(metrics.get(name, float("nan")))
    history.setdefault("epoch", []).append(epoch)




def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
          data: TrainingData | None = None, run_name: str | None = None,
          progress_every: float | None = None, datasets: list[tuple[str, str, str]] | None = None,
          resume_key: str | None = None) -> TrainSummary:
    """Train (or resume) one run, tracked as one MLflow run; returns the summary of the whole run.

    ``progress``: tqdm bars (a terminal); ``progress_every``: plain progress lines at most every that many seconds
    (logs and pipelines). Either prints a summary line per epoch. ``datasets``: the MLflow dataset inputs (name,
    digest, source) to record the data by; default: one per training source of the config.

    Under torchrun every process calls this; they train together (DistributedDataParallel) and rank 0 alone
    validates, writes last.pt / best.pt, logs to MLflow and prints. The other ranks return a summary without
    validation metrics. ``resume_key``: tag the run with it and copy the checkpoints to its artifact store after
    every epoch (``mouaadnet.training.durable``), so a pipeline run re-submitted after a preemption resumes it."""
    ctx = distributed.setup(cfg.device, cfg.distributed.timeout_min)  # one process: no process group
    trainer = Trainer(cfg, out_dir, data=data, progress=progress, progress_every=progress_every, dist=ctx,
                      resume_key=resume_key)
    last = trainer.out_dir / "last.pt"
    if resume:
        if ctx.is_main and not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint to resume at {last}")
        trainer.restore(last)
    return trainer.fit(run_name, datasets)
