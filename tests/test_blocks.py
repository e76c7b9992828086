import copy

import pytest
import torch
from torch import nn

from model.blocks import (
    ConvBN,
    CSPBlock,
    DWSeparable,
    GhostBottleneck,
    GhostModule,
    InvertedResidual,
    PConv,
    PConvBlock,
    RepVGGBlock,
    SPPLite,
)
from tests.conftest import randomize_batchnorm

# (factory, input channels, expected output channels, spatial divisor)
BLOCKS = {
    "convbn": (lambda: ConvBN(8, 16, 3, 2), 8, 16, 2),
    "dwsep": (lambda: DWSeparable(16, 16), 16, 16, 1),
    "pconv": (lambda: PConv(16), 16, 16, 1),
    "pconv_block": (lambda: PConvBlock(16), 16, 16, 1),
    "ghost": (lambda: GhostModule(8, 16), 8, 16, 1),
    "ghost_odd": (lambda: GhostModule(8, 15), 8, 15, 1),
    "ghost_bottleneck": (lambda: GhostBottleneck(16), 16, 16, 1),
    "inverted_residual": (lambda: InvertedResidual(16, 16, 1, 3), 16, 16, 1),
    "inverted_residual_s2": (lambda: InvertedResidual(8, 16, 2, 3), 8, 16, 2),
    "repvgg_identity": (lambda: RepVGGBlock(16, 16, 1), 16, 16, 1),
    "repvgg_down": (lambda: RepVGGBlock(8, 16, 2), 8, 16, 2),
    "spp_lite": (lambda: SPPLite(16, 24), 16, 24, 1),
    "csp": (lambda: CSPBlock(16, 16, 2), 16, 16, 1),
}


def _all_reparameterizable(block: nn.Module) -> list[nn.Module]:
    return [m for m in block.modules() if hasattr(m, "reparameterize")]


def _reparameterize(block: nn.Module) -> None:
    for m in reversed(list(block.modules())):
        if hasattr(m, "reparameterize"):
            m.reparameterize()


@pytest.mark.parametrize("name", BLOCKS)
def test_block_shape_and_gradient(name):
    factory, c_in, c_out, div = BLOCKS[name]
    block = factory()
    x = torch.randn(2, c_in, 16, 16, requires_grad=True)
    y = block(x)
    assert y.shape == (2, c_out, 16 // div, 16 // div)
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in block.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"


@pytest.mark.parametrize("name", BLOCKS)
def test_block_reparameterize_is_equivalent_and_idempotent(name):
    factory, c_in, _, _ = BLOCKS[name]
    torch.manual_seed(1)
    block = randomize_batchnorm(factory(), seed=2).eval()
    x = torch.randn(3, c_in, 16, 16)
    with torch.no_grad():
        before = block(x)
        _reparameterize(block)
        once = block(x)
        state_once = copy.deepcopy(block.state_dict())
        _reparameterize(block)
        twice = block(x)
    assert (once - before).abs().max().item() <= 1e-4
    assert torch.equal(once, twice)
    assert block.state_dict().keys() == state_once.keys()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())


def test_repvgg_branches_deleted_and_single_conv_left():
    block = randomize_batchnorm(RepVGGBlock(16, 16, 1)).eval()
    block.reparameterize()
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].bias is not None
    assert block.branch_3x3 is None and block.branch_1x1 is None and block.branch_identity is None


def test_repvgg_has_identity_branch_only_when_shapes_match():
    assert RepVGGBlock(16, 16, 1).branch_identity is not None
    assert RepVGGBlock(16, 16, 2).branch_identity is None
    assert RepVGGBlock(8, 16, 1).branch_identity is None


def test_pconv_convolves_only_a_quarter_of_the_channels():
    block = PConv(16)
    x = torch.randn(1, 16, 8, 8)
    y = block(x)
    assert torch.equal(y[:, 4:], x[:, 4:])
    assert not torch.equal(y[:, :4], x[:, :4])


def test_spp_lite_keeps_resolution_and_relu6_bounds_outputs():
    y = SPPLite(16, 16)(torch.randn(1, 16, 13, 11) * 100)
    assert y.shape[-2:] == (13, 11)
    assert y.min() >= 0 and y.max() <= 6


def test_csp_processes_only_one_half():
    block = CSPBlock(16, 16, 1)
    assert all(m.in_channels <= 8 or m is block.merge.conv for m in block.modules() if isinstance(m, nn.Conv2d))


def test_csp_rejects_odd_channels():
    with pytest.raises(ValueError, match="even"):
        CSPBlock(15, 16)
