"""`mouaadnet qat`: quantization-aware fine-tuning of a trained checkpoint on the training data and loss.

The method (placement after re-parameterization, re-inserted BN, per-channel weights, frozen BN at the end) is
``model.quantization.qat_finetune``; this module feeds it what training uses: the checkpoint's (EMA) weights,
mixed scene/crop batches from the trainer's own streams (``mouaadnet.training.recipe.build_streams`` over
``load_training_data``: pasting, crop framing and cache included; crop steps at the config's ``crop_fraction``),
and ``model.losses.MultiTaskLoss``. Validation metrics (``evaluate_sets``) are measured before (float model),
after (QAT model with fake-quant on, i.e. simulated INT8) and on the QAT weights with fake-quant off, and saved
in the checkpoint's sidecar. The last one separates the two effects a gate
"INT8 vs FP32" sees: what the extra fine-tuning steps changed (float before -> QAT weights in float) and what
quantization costs on those weights (QAT weights in float -> fake-quant on).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model.losses import MultiTaskLoss
from model.quantization import qat_finetune, save_qat_checkpoint, set_fake_quant
from mouaadnet.data.assembly import TrainingData, load_training_data
from mouaadnet.evaluation.evaluate import evaluate_sets, flat_metrics
from mouaadnet.training.checkpoint import model_from_checkpoint
from mouaadnet.training.config import TrainConfig
from mouaadnet.training.recipe import build_streams, mixed_batches, seed_everything


@dataclass
class QATSummary:
    out: Path
    steps: int
    seconds: float
    before: dict[str, float]  # flat validation metrics of the float model ("val/<set>/<metric>")
    after: dict[str, float]  # same, QAT model with fake-quant on (simulated INT8)
    after_float: dict[str, float] = field(default_factory=dict)  # same, QAT weights with fake-quant off
    losses: list[float] = field(default_factory=list)


def qat_batches(cfg: TrainConfig, data: TrainingData, total: int, epoch: int = 0) -> Iterator[dict[str, Any]]:
    """``total`` training batches mixing scene and crop steps like one training epoch, each tagged with "mode":
    the trainer's streams (``build_streams``: augmentation, pasting, crop framing and cache as configured)."""
    streams = build_streams(cfg, data)
    if not streams:
        raise ValueError("no training data for QAT (data.scene and data.crop are empty)")
    for mode, batch in mixed_batches(streams, total, cfg.data.crop_fraction, epoch):
        batch["mode"] = mode
        yield batch


def run_qat(checkpoint: str | Path, cfg: TrainConfig, out: str | Path, steps: int = 200, lr: float = 1e-4,
            calib_steps: int = 8, act: Literal["u8", "s8"] = "u8", freeze_bn_fraction: float = 1.0,
            data: TrainingData | None = None, progress: bool = True,
            placement: Literal["after_reparam", "before_reparam"] = "after_reparam") -> QATSummary:
    """QAT fine-tune ``checkpoint`` on ``cfg.data`` with ``cfg.loss``; writes ``out`` (+ sidecar). ``cfg.model``
    is replaced by the checkpoint's model config (the data pipeline must produce the sizes the model expects)."""
    from model.artifacts import write_sidecar

    model, state = model_from_checkpoint(checkpoint)
    cfg = cfg.model_copy(deep=True)
    cfg.model = model.cfg
    seed_everything(cfg.seed)
    data = data or load_training_data(cfg.data, cfg.seed)
    sizes = (cfg.model.scene_size, cfg.model.crop_size)

    def measure(m) -> dict[str, float]:
        if not data.eval_sets:
            return {}
        return flat_metrics(evaluate_sets(m.eval(), data.eval_sets, *sizes, threshold=cfg.score_threshold))

    before = measure(model)
    loss = MultiTaskLoss(cfg.loss)
    losses: list[float] = []

    def log(step: int, terms: dict) -> None:
        losses.append(terms["loss"])
        if progress and (step % 10 == 0 or step == steps - 1):
            print(f"qat step {step + 1}/{steps}: loss {terms['loss']:.4f}", flush=True)

    start = time.perf_counter()
    qat = qat_finetune(model, qat_batches(cfg, data, calib_steps + steps), loss, steps=steps, lr=lr, act=act,
                       calib_steps=calib_steps, freeze_bn_fraction=freeze_bn_fraction, log=log, placement=placement)
    seconds = time.perf_counter() - start
    after = measure(qat)
    set_fake_quant(qat, False)
    after_float = measure(qat)
    set_fake_quant(qat, True)
    out = save_qat_checkpoint(qat, out, cfg.model.model_dump())
    write_sidecar(out, f"fp32-folded-qat-{act}", source=checkpoint,
                  metrics={"before": before, "after_fake_quant": after, "after_float": after_float},
                  extra={"form": "deploy", "steps": steps, "lr": lr, "calib_steps": calib_steps, "act": act,
                         "freeze_bn_fraction": freeze_bn_fraction, "placement": placement, "seconds": round(seconds, 1),
                         "data_fingerprint": data.fingerprint, "source_epoch": state.get("epoch")})
    return QATSummary(Path(out), steps, seconds, before, after, after_float, losses)
