"""Slim-PAN neck: top-down and bottom-up paths fused by element-wise addition, refined by CSP blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBN, CSPBlock


def upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Nearest upsampling to ``ref``'s spatial size (works for inputs that are not multiples of 32)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


class SlimPAN(nn.Module):
    """PAN with one width everywhere so every fusion is an addition (cheaper than concat + conv).

    Output: one stride-8 map = N3 + up(N4) + up(N5), so the heads see all three scales.
    """

    def __init__(self, in_channels: tuple[int, int, int], width: int, depth: int = 1):
        super().__init__()
        c3, c4, c5 = in_channels
        self.lateral3 = ConvBN(c3, width, 1)
        self.lateral4 = ConvBN(c4, width, 1)
        self.lateral5 = ConvBN(c5, width, 1)
        self.top_down4 = CSPBlock(width, width, depth)
        self.top_down3 = CSPBlock(width, width, depth)
        self.down3 = ConvBN(width, width, 3, 2, groups=width)
        self.down4 = ConvBN(width, width, 3, 2, groups=width)
        self.bottom_up4 = CSPBlock(width, width, depth)
        self.bottom_up5 = CSPBlock(width, width, depth)
        self.out_channels = width

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        c3, c4, c5 = feats
        p5 = self.lateral5(c5)
        p4 = self.top_down4(self.lateral4(c4) + upsample_to(p5, c4))
        n3 = self.top_down3(self.lateral3(c3) + upsample_to(p4, c3))
        n4 = self.bottom_up4(p4 + self.down3(n3))
        n5 = self.bottom_up5(p5 + self.down4(n4))
        return n3 + upsample_to(n4, n3) + upsample_to(n5, n3)
