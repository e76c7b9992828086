"""A peer for the speed benchmark: the YOLOv8n detector architecture, written here from its published layer table.

Issue 4 asks for a peer row measured in the same run. Ultralytics needs torchvision (a 5.5 GB torch here), so the
peer is this project's own implementation of the YOLOv8n layer table (scale n: depth 0.33, width 0.25; Conv =
conv+BN+SiLU, C2f, SPPF, PAN-FPN with nearest upsampling, decoupled anchor-free head with a 16-bin DFL, 80
classes), no code taken from Ultralytics. Its parameter count (3.16 M) matches the published 3.2 M, which is
the check that the layers are the same. Weights are random: speed does not depend on them. The export ends like
an Ultralytics ONNX export, one tensor ``output0`` [N, 84, anchors] (xywh in input pixels + class
probabilities, no NMS). INT8 treats it like MouaadNet: the body is quantized, the decode and the head's last
convs (the logits) stay FP32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

NUM_CLASSES = 80
REG_MAX = 16
STRIDES = (8, 16, 32)


class ConvBnSiLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.cv1, self.cv2, self.shortcut = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """Split into two halves, chain n bottlenecks on the second, concatenate every intermediate, 1x1 fuse."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBnSiLU(c_in, 2 * self.c)
        self.cv2 = ConvBnSiLU((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


class SPPF(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.cv1, self.cv2 = ConvBnSiLU(c_in, hidden), ConvBnSiLU(hidden * 4, c_out)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.cv1(x)]
        for _ in range(3):
            parts.append(self.pool(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


def _branch(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(ConvBnSiLU(c_in, c_mid, 3), ConvBnSiLU(c_mid, c_mid, 3), nn.Conv2d(c_mid, c_out, 1))


class YoloV8nLike(nn.Module):
    """Backbone (P3..P5), PAN neck and head of YOLOv8n; ``decode`` turns its raw maps into ``output0``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(ConvBnSiLU(3, 16, 3, 2), ConvBnSiLU(16, 32, 3, 2), C2f(32, 32, 1, True))
        self.p3 = nn.Sequential(ConvBnSiLU(32, 64, 3, 2), C2f(64, 64, 2, True))
        self.p4 = nn.Sequential(ConvBnSiLU(64, 128, 3, 2), C2f(128, 128, 2, True))
        self.p5 = nn.Sequential(ConvBnSiLU(128, 256, 3, 2), C2f(256, 256, 1, True), SPPF(256, 256))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4, self.top_down3 = C2f(384, 128, 1, False), C2f(192, 64, 1, False)
        self.down3, self.bottom_up4 = ConvBnSiLU(64, 64, 3, 2), C2f(192, 128, 1, False)
        self.down4, self.bottom_up5 = ConvBnSiLU(128, 128, 3, 2), C2f(384, 256, 1, False)
        channels = (64, 128, 256)
        self.box = nn.ModuleList(_branch(c, 64, 4 * REG_MAX) for c in channels)
        self.cls = nn.ModuleList(_branch(c, 80, NUM_CLASSES) for c in channels)
        self.register_buffer("bins", torch.arange(REG_MAX, dtype=torch.float32).reshape(1, 1, REG_MAX, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        t4 = self.top_down4(torch.cat([self.up(p5), p4], 1))
        n3 = self.top_down3(torch.cat([self.up(t4), p3], 1))
        n4 = self.bottom_up4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), p5], 1))
        return [n3, n4, n5]

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Raw head maps per level: box distribution logits [N, 64, H, W] and class logits [N, 80, H, W]."""
        return [(self.box[i](f), self.cls[i](f)) for i, f in enumerate(self.features(x))]


def decode(levels: list[tuple[torch.Tensor, torch.Tensor]], bins: torch.Tensor) -> torch.Tensor:
    """``output0`` [N, 4 + 80, anchors]: DFL box decoding to xywh in input pixels, class probabilities."""
    boxes, classes, centres, strides = [], [], [], []
    for (box, cls), stride in zip(levels, STRIDES):
        n, _, h, w = box.shape
        boxes.append(box.reshape(n, 4 * REG_MAX, h * w))
        classes.append(cls.reshape(n, NUM_CLASSES, h * w))
        ys, xs = torch.meshgrid(torch.arange(h, dtype=box.dtype), torch.arange(w, dtype=box.dtype), indexing="ij")
        centres.append(torch.stack([xs.reshape(-1), ys.reshape(-1)]) + 0.5)
        strides.append(torch.full((1, h * w), float(stride)))
    box, cls = torch.cat(boxes, 2), torch.cat(classes, 2)
    n, _, anchors = box.shape
    # DFL: expected distance from a softmax over 16 bins, per side (left, top, right, bottom)
    dist = (box.reshape(n, 4, REG_MAX, anchors).softmax(2) * bins).sum(2)
    centre, stride = torch.cat(centres, 1), torch.cat(strides, 1)
    lt, rb = dist[:, :2], dist[:, 2:]
    xywh = torch.cat([centre + (rb - lt) / 2, lt + rb], 1) * stride
    return torch.cat([xywh, cls.sigmoid()], 1)


class _Graph(nn.Module):
    """The network under the '/model/' scope and the decode outside it, as in MouaadNet's export: INT8 then
    quantizes the same kind of nodes in both graphs (the body), and both decode tails and head logits stay FP32."""

    def __init__(self, net: YoloV8nLike):
        super().__init__()
        self.model = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return decode(self.model(images), self.model.bins)


def build_yolov8n_like(seed: int = 0) -> YoloV8nLike:
    torch.manual_seed(seed)
    return YoloV8nLike().eval()


def export_yolov8n_like(path: str | Path, size: int, seed: int = 0) -> Path:
    """FP32 ONNX (opset 17, dynamic batch, BN folded by the exporter in eval mode) of the random-weight peer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = _Graph(build_yolov8n_like(seed)).eval()
    with torch.no_grad():
        torch.onnx.export(graph, (torch.rand(1, 3, size, size),), str(path), input_names=["images"],
                          output_names=["output0"], dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
                          opset_version=17, dynamo=False, do_constant_folding=True)
    return path
