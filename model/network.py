"""MouaadNet-Ultra: backbone -> Slim-PAN -> decoupled heads, one set of weights for scene and crop mode."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .backbone import Backbone
from .blocks import set_statistics_mode
from .config import NETWORK_STRIDE, ModelConfig
from .decode import decode_crop, decode_scene
from .heads import AttributeHead, DenseBoxHead, DetectionHead
from .neck import SlimPAN

Mode = Literal["scene", "crop"]
SCENE_OUTPUTS = ("heatmap", "size", "offset", "gender", "age")  # arch v1
SCENE_OUTPUTS_V2 = ("heatmap", "ltrb", "gender", "age")
CROP_OUTPUTS = ("gender", "age")


class MouaadNet(nn.Module):
    """Multi-task person network.

    ``forward(images, mode)`` takes float32 [N,3,H,W] RGB in [0, 1] and returns raw head tensors (logits):
    - scene mode (H, W multiples of 32): heatmap [N,1,H/8,W/8], size [N,2,..] (log of w,h in stride units),
      offset [N,2,..] (center offset in cells), gender [N,1,..] (logit of P(female)), age [N,101,..] (logits);
      arch v2 has ltrb [N,4,..] (log of the distances from each cell's centre to the box sides, stride units)
      instead of size and offset;
    - crop mode (any H, W >= 32): gender [N] (logit of P(female)) and age [N,101] (logits).
    ``decode`` turns them into probabilities, years and boxes.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.neck = SlimPAN(self.backbone.out_channels, cfg.neck_width, cfg.neck_depth)
        if cfg.arch == "v2":
            self.detection = DenseBoxHead(cfg.neck_width, cfg.head_width, cfg.head_convs, cfg.heatmap_prior,
                                          iou_branch=cfg.iou_score > 0)
        else:
            self.detection = DetectionHead(cfg.neck_width, cfg.head_width, cfg.head_convs, cfg.heatmap_prior)
        self.attributes = AttributeHead(cfg.neck_width, cfg.head_width, cfg.head_convs, cfg.attr_dropout,
                                        cfg.attr_window)

    def forward(self, images: torch.Tensor, mode: Mode = "scene", defer_attributes: bool = False
                ) -> dict[str, torch.Tensor]:
        """Raw head tensors; ``defer_attributes`` (scene mode, for decoding) returns the attribute head's pooled
        features ("attributes") instead of the gender and age maps: ``decode`` runs the decision at the peaks."""
        check_input(images, mode)
        set_statistics_mode(self, mode)  # each mode normalises by its own running statistics (ModeBatchNorm2d)
        fused = self.neck(self.backbone(images))
        if mode == "crop":
            return self.attributes(fused, crop=True)
        return {**self.detection(fused), **self.attributes(fused, crop=False, defer_decision=defer_attributes)}

    def decode(self, outputs: dict[str, torch.Tensor], k: int | None = None) -> dict[str, torch.Tensor]:
        """Scene outputs -> top-K people (boxes, scores, gender, age); crop outputs -> gender, age per image."""
        if "heatmap" in outputs:
            return decode_scene(outputs, k or self.cfg.top_k, nms_iou=self.cfg.nms_threshold(),
                                iou_power=self.cfg.iou_score, attribute_decision=self.attributes.decide)
        return decode_crop(outputs)

    @torch.no_grad()
    def predict_decoded(self, images: torch.Tensor, mode: Mode = "scene") -> dict[str, torch.Tensor]:
        """Decoded outputs as the exported graph gives them (top-K, the config's NMS, the attribute decision at
        the peaks): evaluation's ``predict`` calls this method when a model has it, so ``mouaadnet evaluate``
        measures the function that ships."""
        images = images.to(next(self.parameters()).device)
        return self.decode(self(images, mode=mode, defer_attributes=mode == "scene"))


def check_input(images: torch.Tensor, mode: str) -> None:
    """Fail early, naming the problem, instead of deep inside a conv."""
    if mode not in ("scene", "crop"):
        raise ValueError(f"mode must be 'scene' or 'crop', got {mode!r}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N,3,H,W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float (RGB / 255), got dtype {images.dtype}")
    h, w = images.shape[-2:]
    if mode == "scene" and (h % NETWORK_STRIDE or w % NETWORK_STRIDE):
        raise ValueError(f"scene-mode height and width must be multiples of {NETWORK_STRIDE}, got {h}x{w}")
    if mode == "crop" and min(h, w) < NETWORK_STRIDE:
        raise ValueError(f"crop-mode images must be at least {NETWORK_STRIDE} px, got {h}x{w}")


def build_model(cfg: ModelConfig | None = None) -> MouaadNet:
    """Build the training form of the network (use ``reparameterize_model`` for deployment)."""
    return MouaadNet(cfg or ModelConfig())
