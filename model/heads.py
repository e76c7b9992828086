"""Decoupled heads on the stride-8 fused map: CenterNet-style detection and attention-gated attributes.

Why stride 8 and not 4: at 320x320 the stride-8 map is 40x40. A person must be at least ~8 px apart from
the next one's center to get its own cell, which holds for the people a 320-px camera frame can resolve,
and the offset regression restores sub-cell precision. Stride 4 would quadruple every head FLOP (the
101-bin age layer alone would cost ~85 MFLOPs at 80x80) and push the model past its 0.8 GFLOPs budget,
for gains only on crowds of tiny people that are below the useful resolution of age/gender anyway.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import ConvBN, DWSeparable
from .config import NUM_AGE_BINS


def _tower(width: int, head_width: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = [ConvBN(width, head_width, 1)] if width != head_width else []
    layers += [DWSeparable(head_width, head_width) for _ in range(convs)]
    return nn.Sequential(*layers)


class DetectionHead(nn.Module):
    """Anchor-free center heatmap (1 class, logits), box size as log(w/stride, h/stride), center offset."""

    def __init__(self, width: int, head_width: int, convs: int, prior: float):
        super().__init__()
        self.tower = _tower(width, head_width, convs)
        self.heatmap = nn.Conv2d(head_width, 1, 1)
        self.size = nn.Conv2d(head_width, 2, 1)
        self.offset = nn.Conv2d(head_width, 2, 1)
        # Focal-loss prior: start every location at P(person) = prior so early training is not swamped
        # by the loss of the thousands of background cells.
        nn.init.constant_(self.heatmap.bias, -math.log((1.0 - prior) / prior))
        nn.init.normal_(self.size.weight, std=0.01)
        nn.init.constant_(self.size.bias, 0.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.tower(x)
        return {"heatmap": self.heatmap(t), "size": self.size(t), "offset": self.offset(t)}


class AttributeHead(nn.Module):
    """Spatial-attention-gated features and one linear decision layer (1 gender logit + 101 age logits).

    The decision layer is a 1x1 conv. Scene mode applies it at every location and the decoder reads it at
    each person's center; crop mode applies it to the global average of the gated features. A linear layer
    commutes with averaging (W·mean(f) + b = mean(W·f + b)), so crop mode equals the average of the scene-mode
    decision map: one set of weights serves both, and training either mode trains the other.
    The attention gate is a sigmoid map: in crop mode it decides which cells the average listens to
    (the face or body rather than the background); in scene mode it suppresses background responses.
    """

    def __init__(self, width: int, head_width: int, convs: int, dropout: float):
        super().__init__()
        self.tower = _tower(width, head_width, convs)
        self.attention = nn.Sequential(ConvBN(head_width, head_width, 3, groups=head_width),
                                       nn.Conv2d(head_width, 1, 1), nn.Sigmoid())
        self.dropout = nn.Dropout(dropout)
        self.decision = nn.Conv2d(head_width, 1 + NUM_AGE_BINS, 1)

    def gated_features(self, x: torch.Tensor) -> torch.Tensor:
        features = self.tower(x)
        return features * self.attention(features)

    def forward(self, x: torch.Tensor, crop: bool) -> dict[str, torch.Tensor]:
        gated = self.gated_features(x)
        if crop:
            gated = gated.mean(dim=(2, 3), keepdim=True)
        logits = self.decision(self.dropout(gated))
        if crop:
            logits = logits.flatten(1)
            return {"gender": logits[:, 0], "age": logits[:, 1:]}
        return {"gender": logits[:, :1], "age": logits[:, 1:]}
