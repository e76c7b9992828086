"""Building blocks: Conv-BN-ReLU6, PConv, Ghost, inverted residual, RepVGG, SPP-Lite and CSP.

Every block that holds a BatchNorm or several parallel branches has ``reparameterize()``: it folds them into
plain convolutions for deployment and is safe to call twice. ReLU6 is used throughout because its bounded
range quantizes to INT8 with little loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ModeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with one set of running statistics per input mode, the affine weights shared.

    Scene batches (320² photos) and crop batches (112² faces and bodies) have other activation statistics. Training
    normalises each batch by its own statistics, so the weights learn to work with each mode's; one running average
    over both then normalises every mode at eval time (and in every exported graph, where it is folded into the
    convs) by statistics of neither. Measured on the v2 long run's epoch-31 checkpoint (docs/BENCHMARKS.md, "One
    set of BatchNorm statistics per mode"): Penn-Fudan AP50 0.50 -> 0.72 with scene statistics, FairFace age bin
    17 % -> 27 % with crop statistics. ``running_mean``/``running_var`` are the scene statistics (so a checkpoint
    from before keeps loading: its shared statistics become both modes' starting point); ``crop_*`` the crop
    ones. ``mode`` is set by ``MouaadNet.forward`` (``set_statistics_mode``) before every pass.
    """

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.register_buffer("crop_running_mean", torch.zeros(num_features))
        self.register_buffer("crop_running_var", torch.ones(num_features))
        self.register_buffer("crop_num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.mode = "scene"

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(running mean, running var) of the current mode."""
        if self.mode == "crop":
            return self.crop_running_mean, self.crop_running_var
        return self.running_mean, self.running_var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode != "crop":
            return super().forward(x)
        if self.training:
            self.crop_num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.crop_num_batches_tracked)
        return F.batch_norm(x, self.crop_running_mean, self.crop_running_var, self.weight, self.bias, self.training,
                            momentum, self.eps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if prefix + "crop_" + name not in state_dict and prefix + name in state_dict:
                state_dict[prefix + "crop_" + name] = state_dict[prefix + name].clone()  # one shared set before
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def set_statistics_mode(model: nn.Module, mode: str) -> None:
    """Point every ``ModeBatchNorm2d`` of ``model`` at ``mode``'s running statistics."""
    for module in model.modules():
        if isinstance(module, ModeBatchNorm2d):
            module.mode = mode


def fold_batchnorm(kernel: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (kernel, bias) of one conv equal to ``bn(conv(x))`` in eval mode (a ``ModeBatchNorm2d``: its mode's)."""
    mean, var = bn.statistics() if isinstance(bn, ModeBatchNorm2d) else (bn.running_mean, bn.running_var)
    std = torch.sqrt(var + bn.eps)
    scale = bn.weight / std
    conv_bias = bias if bias is not None else torch.zeros_like(mean)
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias + (conv_bias - mean) * scale


class ConvBN(nn.Module):
    """Conv2d + BatchNorm2d (+ optional ReLU6); folds to a single biased conv."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
        self.bn: nn.BatchNorm2d | None = ModeBatchNorm2d(c_out)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel and bias of the conv this block folds into (works before and after reparameterize)."""
        if self.bn is None:
            return self.conv.weight, self.conv.bias
        return fold_batchnorm(self.conv.weight, self.conv.bias, self.bn)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.bn is None:
            return
        kernel, bias = self.fused_kernel_bias()
        conv = self.conv
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          groups=conv.groups, bias=True)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        self.conv = fused
        self.bn = None


class DWSeparable(nn.Module):
    """Depthwise 3x3 + pointwise 1x1, both Conv-BN-ReLU6; residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.dw = ConvBN(c_in, c_in, 3, stride, groups=c_in)
        self.pw = ConvBN(c_in, c_out, 1)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(x))
        return x + y if self.residual else y


class PConv(nn.Module):
    """Partial convolution (FasterNet): a 3x3 conv over 1/``n_div`` of the channels, the rest passed through."""

    def __init__(self, channels: int, n_div: int = 4):
        super().__init__()
        self.conv_channels = max(1, channels // n_div)
        self.pass_channels = channels - self.conv_channels
        self.conv = nn.Conv2d(self.conv_channels, self.conv_channels, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head, tail = torch.split(x, [self.conv_channels, self.pass_channels], dim=1)
        return torch.cat([self.conv(head), tail], dim=1)


class PConvBlock(nn.Module):
    """FasterNet block: PConv, then a pointwise MLP (expand, ReLU6, project), with a residual."""

    def __init__(self, channels: int, expansion: int = 2):
        super().__init__()
        hidden = channels * expansion
        self.pconv = PConv(channels)
        self.expand = ConvBN(channels, hidden, 1)
        self.project = ConvBN(hidden, channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.expand(self.pconv(x)))


class GhostModule(nn.Module):
    """Ghost module: a primary pointwise conv makes half the maps; a cheap depthwise conv makes the rest."""

    def __init__(self, c_in: int, c_out: int, act: bool = True):
        super().__init__()
        primary = (c_out + 1) // 2
        self.out_channels = c_out
        self.primary = ConvBN(c_in, primary, 1, act=act)
        self.cheap = ConvBN(primary, primary, 3, groups=primary, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], dim=1)[:, : self.out_channels]


class GhostBottleneck(nn.Module):
    """Ghost bottleneck (stride 1): ghost expand, ghost project (linear), identity residual."""

    def __init__(self, channels: int, expansion: int = 2):
        super().__init__()
        self.expand = GhostModule(channels, channels * expansion)
        self.project = GhostModule(channels * expansion, channels, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.expand(x))


class SpaceToDepthStem(nn.Module):
    """Each 2x2 pixel block as 12 channels (no arithmetic), then a Conv-BN-ReLU6 3x3 (stride 1): the same stride 2
    as a 3x3 stride-2 stem, but the first conv reduces over K = 108 inputs instead of 27, which matrix units (AMX,
    VNNI) fill far better (docs/PERFORMANCE.md, B4)."""

    def __init__(self, c_out: int):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.conv = ConvBN(12, c_out, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.unshuffle(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project; residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, expansion: int = 4):
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBN(c_in, hidden, 1))
        layers += [ConvBN(hidden, hidden, 3, stride, groups=hidden), ConvBN(hidden, c_out, 1, act=False)]
        self.layers = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class RepVGGBlock(nn.Module):
    """RepVGG block: 3x3-BN + 1x1-BN (+ identity-BN when shapes match) branches, summed, then ReLU6.

    ``reparameterize()`` merges the branches into one 3x3 conv with bias and deletes them.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.act = nn.ReLU6(inplace=True)
        self.fused: nn.Conv2d | None = None
        self.branch_3x3: ConvBN | None = ConvBN(c_in, c_out, 3, stride, act=False)
        self.branch_1x1: ConvBN | None = ConvBN(c_in, c_out, 1, stride, act=False)
        self.branch_identity: nn.BatchNorm2d | None = (
            ModeBatchNorm2d(c_in) if c_in == c_out and stride == 1 else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.branch_3x3(x) + self.branch_1x1(x)
        if self.branch_identity is not None:
            y = y + self.branch_identity(x)
        return self.act(y)

    def _identity_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        ref = self.branch_3x3.conv.weight
        kernel = torch.zeros(self.c_in, self.c_in, 3, 3, dtype=ref.dtype, device=ref.device)
        kernel[torch.arange(self.c_in), torch.arange(self.c_in), 1, 1] = 1.0
        return fold_batchnorm(kernel, None, self.branch_identity)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        kernel, bias = self.branch_3x3.fused_kernel_bias()
        k1, b1 = self.branch_1x1.fused_kernel_bias()
        kernel, bias = kernel + F.pad(k1, [1, 1, 1, 1]), bias + b1
        if self.branch_identity is not None:
            kid, bid = self._identity_kernel_bias()
            kernel, bias = kernel + kid, bias + bid
        self.fused = nn.Conv2d(self.c_in, self.c_out, 3, self.stride, 1, bias=True).to(kernel.device)
        self.fused.weight.copy_(kernel)
        self.fused.bias.copy_(bias)
        self.branch_3x3 = self.branch_1x1 = self.branch_identity = None


class SPPLite(nn.Module):
    """SPP-Lite (SPPF-style): reduce, three chained 5x5 max-pools (receptive fields 5/9/13), concat, fuse.

    Stride-1 pooling keeps the resolution; chaining one small pool is cheaper than three large ones.
    """

    def __init__(self, c_in: int, c_out: int, pool: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.reduce = ConvBN(c_in, hidden, 1)
        self.pool = nn.MaxPool2d(pool, 1, pool // 2)
        self.fuse = ConvBN(hidden * 4, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.reduce(x)
        y1 = self.pool(y0)
        y2 = self.pool(y1)
        y3 = self.pool(y2)
        return self.fuse(torch.cat([y0, y1, y2, y3], dim=1))


class CSPBlock(nn.Module):
    """Cross-stage-partial block: split the channels in halves, process one half, concat, 1x1 merge."""

    def __init__(self, c_in: int, c_out: int, depth: int = 1):
        super().__init__()
        if c_in % 2:
            raise ValueError(f"CSPBlock needs an even channel count to split, got {c_in}")
        half = c_in // 2
        self.half = half
        self.blocks = nn.Sequential(*[DWSeparable(half, half) for _ in range(depth)])
        self.merge = ConvBN(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, work = torch.split(x, [self.half, self.half], dim=1)
        return self.merge(torch.cat([keep, self.blocks(work)], dim=1))
