"""Decoupled heads on the stride-8 fused map: CenterNet-style detection and attention-gated attributes.

Why stride 8 and not 4: at 320x320 the stride-8 map is 40x40. A person must be at least ~8 px apart from
the next one's center to get its own cell, which holds for the people a 320-px camera frame can resolve,
and the offset regression restores sub-cell precision. Stride 4 would quadruple every head FLOP (the
101-bin age layer alone would cost ~85 MFLOPs at 80x80 in training; the deploy graph runs it at the top-K
peaks only) and push the model past its 0.8 GFLOPs budget,
for gains only on crowds of tiny people that are below the useful resolution of age/gender anyway.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBN, DWSeparable
from .config import NUM_AGE_BINS

GATE_EPS = 1e-4  # keeps the weighted average finite where the gate is ~0 everywhere


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


class DenseBoxHead(nn.Module):
    """Arch v2: center heatmap (1 class, logits) and, at every cell, log-distances from the cell's centre to the
    four box sides (l, t, r, b in stride units): ``ltrb`` [N,4,h,w].

    What comes from where:
    - FCOS (Tian et al. 2019): a box from distances to its sides at a point, kept positive by exp(); exp of a
      log-distance also makes a 10 % error cost the same for a 20-px and a 300-px person;
    - TTFNet (Liu et al. 2020): the heatmap stays CenterNet's Gaussian and the box branch is trained at every cell
      of each person's Gaussian core, not only the centre, so the peak found at test time (often off the exact
      centre cell on large people) has a trained box (see ``model.losses.dense_box_targets``);
    - GFL / NanoDet: no separate centre-ness branch (the heatmap is the quality score); the distribution head of GFL
      is not taken (4x17 bins cost more head FLOPs than this budget gives, and it mainly sharpens ambiguous edges).
    """

    def __init__(self, width: int, head_width: int, convs: int, prior: float, iou_branch: bool = False):
        super().__init__()
        self.tower = _tower(width, head_width, convs)
        self.heatmap = nn.Conv2d(head_width, 1, 1)
        self.ltrb = nn.Conv2d(head_width, 4, 1)
        # PP-YOLO's IoU branch (``ModelConfig.iou_score``): logit of the IoU of each cell's own box with its person.
        self.iou = nn.Conv2d(head_width, 1, 1) if iou_branch else None
        nn.init.constant_(self.heatmap.bias, -math.log((1.0 - prior) / prior))
        # Start every cell at a 2x2-cell box (16x16 px at stride 8) so the first GIoU gradients are well defined.
        nn.init.normal_(self.ltrb.weight, std=0.01)
        nn.init.constant_(self.ltrb.bias, 0.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.tower(x)
        out = {"heatmap": self.heatmap(t), "ltrb": self.ltrb(t)}
        if self.iou is not None:
            out["iou"] = self.iou(t)
        return out


class AttributeHead(nn.Module):
    """Spatial-attention-gated pooling and one linear decision layer (1 gender logit + 101 age logits).

    A sigmoid gate g(x) scores how much each location belongs to the person. Features are pooled as an
    attention-weighted average, pooled = avg(g * f) / avg(g): global average pooling of the gated features,
    normalised by the average gate.
    - crop mode: the average runs over the whole map (GAP), then the decision layer;
    - scene mode: the same average over a small window around every location (a per-location 1x1 decision
      read at each person's center by the decoder).
    Why normalise instead of the plain GAP(g * f): plain GAP scales the features by the fraction of the image
    the person covers, so crop logits would be a damped copy of the scene logits at a person's center and the
    age softmax would flatten toward the bias. The normalised average is a weighted mean of features in both
    modes, so both see the same scale. Because the decision layer is linear, it commutes with the weighted
    average (W * sum(g f)/sum(g) + b = sum(g (W f + b))/sum(g)): crop mode equals the attention-weighted mean of
    the per-location decision map, one set of weights serves both modes and training either trains the other.
    """

    def __init__(self, width: int, head_width: int, convs: int, dropout: float, window: int = 3):
        super().__init__()
        self.tower = _tower(width, head_width, convs)
        self.attention = nn.Sequential(ConvBN(head_width, head_width, 3, groups=head_width),
                                       nn.Conv2d(head_width, 1, 1), nn.Sigmoid())
        self.window = window
        self.dropout = nn.Dropout(dropout)
        self.decision = nn.Conv2d(head_width, 1 + NUM_AGE_BINS, 1)

    def gate_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.tower(x)
        return self.attention(features), features

    def pool(self, gate: torch.Tensor, features: torch.Tensor, crop: bool) -> torch.Tensor:
        """Attention-weighted average: global in crop mode, over a window around each location in scene mode."""
        gated = gate * features
        if crop:
            return gated.mean(dim=(2, 3), keepdim=True) / gate.mean(dim=(2, 3), keepdim=True).clamp_min(GATE_EPS)
        pad = self.window // 2
        return (F.avg_pool2d(gated, self.window, 1, pad) /
                F.avg_pool2d(gate, self.window, 1, pad).clamp_min(GATE_EPS))

    def forward(self, x: torch.Tensor, crop: bool, defer_decision: bool = False) -> dict[str, torch.Tensor]:
        """Logits; in scene mode with ``defer_decision`` the pooled features instead ("attributes" [N,C,h,w]), so
        decoding runs the decision at the top-K cells only (``decide``) rather than at every cell."""
        gate, features = self.gate_and_features(x)
        pooled = self.dropout(self.pool(gate, features, crop))
        if defer_decision and not crop:
            return {"attributes": pooled}
        logits = self.decision(pooled)
        if crop:
            logits = logits.flatten(1)
            return {"gender": logits[:, 0], "age": logits[:, 1:]}
        return {"gender": logits[:, :1], "age": logits[:, 1:]}

    def decide(self, picked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The 1x1 decision on pooled features picked at K cells [N,K,C] -> gender logit [N,K], age logits
        [N,K,101]. Runs the decision module itself (a 1x1 conv over K "pixels"), so a QAT or folded copy works."""
        logits = self.decision(picked.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        return logits[..., 0], logits[..., 1:]
