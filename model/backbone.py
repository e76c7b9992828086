"""Five-stage backbone (strides 2, 4, 8, 16, 32) built from the blocks in ``model.blocks``."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import (
    ConvBN,
    GhostBottleneck,
    InvertedResidual,
    PConvBlock,
    RepVGGBlock,
    SpaceToDepthStem,
    SPPLite,
)
from .config import ModelConfig


def _stage(first: nn.Module, repeat: int, make_block) -> nn.Sequential:
    return nn.Sequential(first, *[make_block() for _ in range(repeat)])


class Backbone(nn.Module):
    """Stem conv, then inverted residuals (stride 4), RepVGG + PConv (8), RepVGG + inverted residuals (16),
    RepVGG + Ghost bottlenecks + SPP-Lite (32).

    Each downsampling stage opens with a RepVGG block: a dense 3x3 at train time with extra 1x1/identity
    branches that cost nothing after re-parameterization. The cheap PConv/Ghost/depthwise blocks carry depth.
    Returns the stride-8, -16 and -32 maps for the neck.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w1, w2, w3, w4, w5 = cfg.widths
        d1, d2, d3, d4, d5 = cfg.depths
        fast = cfg.backbone == "fast"
        stem = SpaceToDepthStem(w1) if fast else ConvBN(3, w1, 3, 2)
        self.stage1 = _stage(stem, d1 - 1, lambda: PConvBlock(w1))
        # fast: a dense 3x3 stride-2 opens stage 2 (no x3 expansion at 160x160, no stride-2 depthwise)
        opening = RepVGGBlock(w1, w2, 2) if fast else InvertedResidual(w1, w2, 2, expansion=3)
        self.stage2 = _stage(opening, d2 - 1, lambda: InvertedResidual(w2, w2, 1, 3))
        self.stage3 = _stage(RepVGGBlock(w2, w3, 2), d3 - 1, lambda: PConvBlock(w3))
        self.stage4 = _stage(RepVGGBlock(w3, w4, 2), d4 - 1, lambda: InvertedResidual(w4, w4, 1, 3))
        # Stride-1 RepVGG first: its identity branch gives the deepest stage a cheap residual path.
        self.stage5 = nn.Sequential(
            RepVGGBlock(w4, w5, 2),
            *[RepVGGBlock(w5, w5, 1) if i == 0 else GhostBottleneck(w5) for i in range(d5 - 1)],
            SPPLite(w5, w5),
        )
        self.out_channels = (w3, w4, w5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3 = self.stage3(self.stage2(self.stage1(x)))
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        return c3, c4, c5
