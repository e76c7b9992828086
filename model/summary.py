"""Size and cost of the network: parameters (train and deploy form), FLOPs, output shapes."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .config import ModelConfig
from .network import build_model
from .reparam import reparameterize_model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, images: torch.Tensor, mode: str) -> int:
    """FLOPs of one pass as the exported graph computes it (a model's ``predict_decoded``: in scene mode the
    attribute decision runs at the top-K peaks only), counted by FlopCounterMode (2 FLOPs per multiply-add)."""
    run = getattr(model, "predict_decoded", None) or model
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run(images, mode=mode)
    return int(counter.get_total_flops())


def output_shapes(model: nn.Module, images: torch.Tensor, mode: str) -> dict[str, list[int]]:
    with torch.no_grad():
        return {name: list(t.shape) for name, t in model(images, mode=mode).items()}


MAX_FIELD_PROBE = 4096  # px: the largest input the unclipped field is measured on


def receptive_field(model: nn.Module, size: int, samples: int = 4) -> int:
    """Side (px) of the input region the centre cell of the scene heatmap sees: where the gradient of that one
    logit w.r.t. the input is non-zero, over a few random inputs (the theoretical field, every path included)."""
    model = model.eval()
    images = torch.rand(samples, 3, size, size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    heatmap = model(images, mode="scene")["heatmap"]
    h, w = heatmap.shape[-2:]
    heatmap[:, 0, h // 2, w // 2].sum().backward()
    seen = images.grad.abs().sum((0, 1)) > 0
    rows, cols = torch.nonzero(seen.any(1)).flatten(), torch.nonzero(seen.any(0)).flatten()
    return int(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)) if len(rows) else 0


def unclipped_receptive_field(model: nn.Module, size: int) -> int:
    """The theoretical field measured on inputs large enough that the image border does not clip it (a field
    clipped at ``size`` would read as "sees exactly the input" whatever the architecture)."""
    probe = 2 * size
    while True:
        field = receptive_field(model, probe, samples=1)
        if field < probe or probe >= MAX_FIELD_PROBE:
            return field
        probe *= 2


def model_summary(cfg: ModelConfig, scene_size: int | None = None, crop_size: int | None = None) -> dict:
    """Everything ``mouaadnet info`` prints, as a JSON-ready dict (batch 1)."""
    scene_size = scene_size or cfg.scene_size
    crop_size = crop_size or cfg.crop_size
    train_form = build_model(cfg).eval()
    deploy_form = reparameterize_model(train_form)
    scene = torch.zeros(1, 3, scene_size, scene_size)
    crop = torch.zeros(1, 3, crop_size, crop_size)
    return {
        "params_train": count_parameters(train_form),
        "params_deploy": count_parameters(deploy_form),
        "scene_size": scene_size,
        "crop_size": crop_size,
        "flops_deploy_scene": count_flops(deploy_form, scene, "scene"),
        "flops_deploy_crop": count_flops(deploy_form, crop, "crop"),
        "outputs_scene": output_shapes(deploy_form, scene, "scene"),
        "outputs_crop": output_shapes(deploy_form, crop, "crop"),
        "receptive_field_scene": unclipped_receptive_field(deploy_form, scene_size),
    }
