"""Quantization-aware fine-tuning (QAT) of the deploy form, and its hand-off to the INT8 QDQ ONNX graph.

Where QAT sits: **after** re-parameterization, on the plain deploy graph (RepVGG's own recipe). The INT8 engine
quantizes the *fused* kernels, so fake-quant must see exactly those: QAT on the training form would put each
RepVGG branch (3x3, 1x1, identity, each with its BN) on its own INT8 grid, and their sum, the kernel actually
deployed, is on no grid at all. The known accuracy loss of quantizing fused RepVGG comes from the fused kernels'
very different per-output-channel ranges (the identity and 1x1 branches land on the centre tap) and from a
plain fused conv being hard to fine-tune; it is handled by
  1. per-channel symmetric weight fake-quant (a per-tensor scale would crush the small channels);
  2. re-inserting a BatchNorm after every fused conv for the fine-tune (RepVGG's QAT note): its statistics are
     measured on real batches and gamma/beta set so that it is an exact identity at the start; the conv+BN
     pair is trained with folded-weight fake-quant (Krishnamoorthi 2018, the scheme of torch's ConvBn QAT);
  3. freezing the re-inserted BatchNorms' statistics (by default for the whole fine-tune), then folding them
     back, so the result is again a plain conv network whose weights sit on the grid they were trained for.
     Why from the start: training batches here are small and alternate between scene images and person crops,
     whose activation statistics differ a lot, so a train-mode BN normalises each batch with statistics unlike
     the running ones used at inference. Measured on the smoke checkpoint (200 steps, lr 1e-4, ORT INT8):
     statistics updated for the first 70 % of the steps give person AP50 0.810 and crop age MAE 5.15 y; frozen
     throughout, 0.810 and 4.28 y. The BN then acts as a trainable per-channel scale and shift around the
     fake-quantized folded kernel.
Calibration (``calibrate_qat``) runs the plain convs on real batches with dropout off, so every range and
statistic is that of an activation inference sees.
Placement, measured (docs/BENCHMARKS.md, "Compression (issue 4)", two seeds, ORT INT8 on the synthetic validation
sets): after re-parameterization AP50 0.810 / 0.810, crop age MAE 4.28 / 3.98 y; before it 0.819 / 0.801 and
4.38 / 4.02 y. On this small network with per-channel weight scales the two are within noise of each other;
after is kept because it trains exactly the kernels the INT8 graph runs (before, the branches are trained on
their own grids and the fused sum is re-quantized at export, which the fine-tune never saw), and it needs no
second fusion. ``placement="before_reparam"`` is kept to measure the alternative.
Activations: per-tensor fake-quant at every conv input, range measured during calibration and tracked by an
EMA of min/max for as long as the BN statistics are updated; freezing BN freezes the ranges with it (one
schedule: with the default, the ranges are the calibrated ones and the weights learn to fit them). Asymmetric
QUInt8 ("u8", ONNX Runtime's fast U8S8 path on x86) or symmetric QInt8 with zero point 0 ("s8", what TensorRT
requires).

Library: core ops only (``torch.fake_quantize_per_channel_affine`` / ``torch.fake_quantize_per_tensor_affine``
with straight-through gradients), not a QAT framework. Eager ``torch.ao.quantization`` is deprecated in torch
2.13 and its convert step targets fbgemm kernels, not a QDQ graph; PT2E lives in the separate ``torchao``
package; NVIDIA ``nvidia-modelopt`` targets TensorRT and CUDA. The QDQ ONNX graph is then made by ONNX Runtime's
supported quantizer (``model.export.quantize_int8``, the same path as PTQ): the folded QAT weights are quantized
per channel, symmetric, max-abs, which is exactly the grid simulated here, and the QAT activation ranges are
passed as ``TensorQuantOverrides``. The result is a standard QDQ graph (per-channel INT8 weights, INT32 bias);
with "s8" activations every zero point is 0, the form TensorRT's explicit-quantization ONNX import consumes,
and ONNX Runtime runs both forms.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from itertools import cycle, islice
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .reparam import reparameterize_model

ActType = Literal["u8", "s8"]
Placement = Literal["after_reparam", "before_reparam"]


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric INT8 ([-127, 127], zero point 0, scale = max|w| / 127)."""
    scale = (w.detach().abs().amax(dim=(1, 2, 3)) / 127.0).clamp_min(1e-8)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


def act_qparams(lo: float, hi: float, act: ActType) -> tuple[float, int, int, int]:
    """(scale, zero_point, qmin, qmax) for a range, as ONNX Runtime's quantizer computes them."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if act == "s8":
        amax = max(abs(lo), abs(hi), 1e-8)
        return amax / 127.0, 0, -127, 127
    scale = max(hi - lo, 1e-8) / 255.0
    return scale, int(round(-lo / scale)), 0, 255


class QATConv2d(nn.Module):
    """A fused conv under QAT: input fake-quant, BN re-inserted as an identity, folded-weight fake-quant."""

    def __init__(self, conv: nn.Conv2d, act: ActType, momentum: float = 0.1):
        super().__init__()
        self.conv, self.act = conv, act
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
        self.bn = nn.BatchNorm2d(conv.out_channels, momentum=momentum)
        self.register_buffer("act_range", torch.tensor([math.inf, -math.inf]))
        self.observe, self.quant, self.bn_ready, self.bn_frozen = True, True, False, False
        self.ema = 0.01

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe and self.training or not torch.isfinite(self.act_range).all():
            lo, hi = x.detach().min(), x.detach().max()
            if torch.isfinite(self.act_range).all():
                lo = torch.lerp(self.act_range[0], lo, self.ema)
                hi = torch.lerp(self.act_range[1], hi, self.ema)
            self.act_range.copy_(torch.stack([lo, hi]))
        if not self.quant:
            return x
        scale, zero, qmin, qmax = act_qparams(float(self.act_range[0]), float(self.act_range[1]), self.act)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._quant_input(x)
        if not self.bn_ready:  # statistics pass: plain conv, the BN learns what it will be an identity for
            y = self._conv(x, self.conv.weight, self.conv.bias)
            if self.training:
                self.bn(y)  # only to update the running statistics: later layers must see the real activations
            return y
        bn = self.bn
        std = torch.sqrt(bn.running_var + bn.eps)
        factor = (bn.weight / std).reshape(-1, 1, 1, 1)
        w = self.conv.weight * factor
        w = fake_quant_weight(w) if self.quant else w
        y = self._conv(x, w, None) / factor.reshape(1, -1, 1, 1) + self.conv.bias.reshape(1, -1, 1, 1)
        update = self.training and not self.bn_frozen
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, update, bn.momentum, bn.eps)

    @torch.no_grad()
    def make_bn_identity(self) -> None:
        """gamma = running std, beta = running mean: in eval mode BN(y) == y, whatever the statistics."""
        self.bn.weight.copy_(torch.sqrt(self.bn.running_var + self.bn.eps))
        self.bn.bias.copy_(self.bn.running_mean)
        self.bn_ready = True

    @torch.no_grad()
    def folded(self) -> nn.Conv2d:
        """The plain conv equal to this module in eval mode with fake-quant off (BN folded back)."""
        c, bn = self.conv, self.bn
        out = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups, True)
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        out.weight.copy_(c.weight * factor.reshape(-1, 1, 1, 1))
        out.bias.copy_(bn.bias + (c.bias - bn.running_mean) * factor)
        return out


def _qat_modules(model: nn.Module) -> dict[str, QATConv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QATConv2d)}


def prepare_qat(model: nn.Module, act: ActType = "u8", placement: Placement = "after_reparam") -> nn.Module:
    """Deep copy of the deploy form (re-parameterized here) with every Conv2d wrapped in ``QATConv2d``.

    ``placement="before_reparam"`` is the measured alternative (docs/BENCHMARKS.md, not the default): the training
    form is wrapped instead (each RepVGG branch conv fake-quantized on its own grid, the model's own BatchNorms
    frozen so each branch's folded kernel stays on its per-channel grid); ``save_qat_checkpoint`` fuses it after.
    """
    if placement not in ("after_reparam", "before_reparam"):
        raise ValueError(f"placement must be 'after_reparam' or 'before_reparam', got {placement!r}")
    qat = reparameterize_model(model) if placement == "after_reparam" else copy.deepcopy(model).eval()
    for module in list(qat.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Conv2d:
                setattr(module, child_name, QATConv2d(child, act))
    qat.qat_act, qat.qat_placement = act, placement
    return qat


def _train_mode(qat: nn.Module) -> None:
    """Train mode for the QAT modules; the model's own BatchNorms (before-reparam placement) stay frozen."""
    qat.train()
    for m in qat.modules():
        if isinstance(m, nn.BatchNorm2d) and not any(m is q.bn for q in _qat_modules(qat).values()):
            m.eval()


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    for m in _qat_modules(model).values():
        m.quant = enabled


def _images(batch) -> torch.Tensor:
    return batch["images"] if isinstance(batch, dict) else batch


def _mode(batch, default: str) -> str:
    """A batch dict may carry its own "mode" (mixed scene/crop streams, as in training)."""
    return batch.get("mode", default) if isinstance(batch, dict) else default


@torch.no_grad()
def calibrate_qat(qat: nn.Module, batches: Iterable, steps: int, mode: str = "scene") -> None:
    """Measure activation ranges and the re-inserted BN statistics on real batches, then make BN an identity."""
    mods = _qat_modules(qat).values()
    for m in mods:
        m.quant, m.bn_ready, m.ema = False, False, 0.1
        m.bn.momentum = None  # cumulative average over the calibration batches
        m.bn.reset_running_stats()
    _train_mode(qat)
    for m in qat.modules():
        if isinstance(m, nn.Dropout):
            m.eval()  # ranges of the inputs inference sees, not of dropout-scaled ones
    for batch in islice(batches, steps):
        qat(_images(batch), mode=_mode(batch, mode))
    for m in mods:
        m.make_bn_identity()
        m.quant, m.ema, m.bn.momentum = True, 0.01, 0.1
    qat.eval()


def qat_finetune(model: nn.Module, batches: Iterable[dict], loss_fn: Callable, steps: int = 200, lr: float = 1e-4,
                 act: ActType = "u8", calib_steps: int = 8, freeze_bn_fraction: float = 1.0,
                 weight_decay: float = 0.0, mode: str = "scene", log: Callable[[int, dict], None] | None = None,
                 placement: Placement = "after_reparam") -> nn.Module:
    """Quantization-aware fine-tune; returns the QAT model (``QATConv2d`` modules, fake-quant on, eval mode).

    ``model``: training or deploy form. ``batches``: dicts with "images" float32 [N,3,S,S] plus the targets
    ``loss_fn(outputs, batch) -> (total, terms)`` needs (re-iterated if shorter than ``calib_steps + steps``),
    and optionally "mode" ("scene"/"crop", overriding ``mode`` for that batch: mixed streams as in training).
    Schedule: ``calib_steps`` batches measure ranges and BN statistics (no gradient), then ``steps`` AdamW
    steps with cosine-decayed ``lr``, BatchNorm statistics frozen (eval BN, no more updates) for the last
    ``freeze_bn_fraction`` of them (default: all; see the module docstring). Use ``convert_qat`` for the plain
    fused model and ``qat_overrides`` for the ranges the INT8 graph must use.
    """
    qat = prepare_qat(model, act, placement)
    source = cycle(batches) if isinstance(batches, (list, tuple)) else batches
    calibrate_qat(qat, source, calib_steps, mode)
    params = [p for p in qat.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    freeze_at = int(round(steps * (1.0 - freeze_bn_fraction)))
    _train_mode(qat)
    for step, batch in enumerate(islice(source, steps)):
        if step == freeze_at:
            freeze_batchnorm(qat)
        total, terms = loss_fn(qat(_images(batch), mode=_mode(batch, mode)), batch)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
        if log is not None:
            log(step, {"loss": float(total.detach()), **{k: float(torch.as_tensor(v).detach()) for k, v in terms.items()}})
    freeze_batchnorm(qat)
    return qat.eval()


def freeze_batchnorm(model: nn.Module) -> None:
    """Stop updating BN statistics and activation ranges: both keep their current values from now on."""
    for m in _qat_modules(model).values():
        m.bn_frozen, m.observe = True, False


@torch.no_grad()
def convert_qat(qat: nn.Module) -> nn.Module:
    """Plain fused float model (BN folded back, fake-quant removed): export it, then quantize with the overrides."""
    plain = copy.deepcopy(qat).eval()
    for module in list(plain.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, QATConv2d):
                setattr(module, child_name, child.folded())
    for attr in ("qat_act", "qat_placement"):
        if hasattr(plain, attr):
            delattr(plain, attr)
    if getattr(qat, "qat_placement", "after_reparam") == "before_reparam":
        plain = reparameterize_model(plain)  # fuse the branches: the fused kernels leave the grid QAT trained on
    return plain


def qat_ranges(qat: nn.Module) -> dict[str, tuple[float, float]]:
    """Learned activation range (min, max) of the input of every conv, by module name."""
    ranges: dict[str, tuple[float, float]] = {}
    for name, m in _qat_modules(qat).items():
        lo, hi = float(m.act_range[0]), float(m.act_range[1])
        for branch in (".branch_3x3.conv", ".branch_1x1.conv"):  # before-reparam: a RepVGG branch -> its fused conv
            if name.endswith(branch):
                name = name[: -len(branch)] + ".fused"
        if name in ranges:  # both branches read the same tensor
            lo, hi = min(lo, ranges[name][0]), max(hi, ranges[name][1])
        ranges[name] = (lo, hi)
    return ranges


def qat_overrides(qat: nn.Module | dict, onnx_path: str | Path, scope: str = "/model/") -> dict:
    """ORT ``TensorQuantOverrides`` giving each Conv's input tensor its QAT range.

    ``qat``: the QAT model, or its ``qat_ranges`` dict (as stored in a QAT checkpoint).

    The exporter names each node after its module path ('/model/backbone/stage1/stage1.0/conv/Conv' for
    module 'backbone.stage1.0.conv'), which is how the conv inputs are found in the graph.
    """
    import onnx

    ranges = qat if isinstance(qat, dict) else qat_ranges(qat)
    overrides: dict[str, list[dict]] = {}
    for node in onnx.load(str(onnx_path)).graph.node:
        if node.op_type != "Conv" or not node.name.startswith(scope):
            continue
        parts = node.name[len(scope):].split("/")[:-1]
        name = ".".join(p.rsplit(".", 1)[-1] for p in parts)
        if name in ranges:
            lo, hi = ranges[name]
            tensor = node.input[0]
            if tensor in overrides:  # one tensor feeding several convs: the union of their ranges
                lo, hi = min(lo, float(overrides[tensor][0]["rmin"])), max(hi, float(overrides[tensor][0]["rmax"]))
            overrides[tensor] = [{"rmin": np.float32(min(lo, 0.0)), "rmax": np.float32(max(hi, 0.0))}]
    return overrides


def save_qat_checkpoint(qat: nn.Module, path: str | Path, model_config: dict | None = None) -> Path:
    """Save the folded QAT weights (deploy form) with the learned activation ranges, for ``--int8 qat`` export."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": convert_qat(qat).state_dict(), "model_config": model_config, "form": "deploy",
                "qat": {"act": getattr(qat, "qat_act", "u8"), "placement": getattr(qat, "qat_placement", "after_reparam"),
                        "ranges": {k: list(v) for k, v in qat_ranges(qat).items()}}}, path)
    return path


def distillation_loss(teacher: nn.Module, mode: str = "scene") -> Callable:
    """Stand-in QAT objective: MSE of the student's head tensors to the float teacher's (label-free)."""
    teacher = teacher.eval()

    def loss_fn(outputs: dict[str, torch.Tensor], batch) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            target = teacher(_images(batch), mode=mode)
        terms = {name: F.mse_loss(outputs[name], target[name]) for name in target}
        return sum(terms.values()), {k: v.detach() for k, v in terms.items()}

    return loss_fn
