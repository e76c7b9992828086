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
    """FLOPs of one forward pass as counted by FlopCounterMode (2 FLOPs per multiply-add)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, mode=mode)
    return int(counter.get_total_flops())


def output_shapes(model: nn.Module, images: torch.Tensor, mode: str) -> dict[str, list[int]]:
    with torch.no_grad():
        return {name: list(t.shape) for name, t in model(images, mode=mode).items()}


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
    }
