"""Model-level re-parameterization: one fused deep copy for deployment."""

from __future__ import annotations

import copy

from torch import nn

from .blocks import set_statistics_mode


def reparameterize_model(model: nn.Module, mode: str = "scene") -> nn.Module:
    """Return an eval-mode deep copy with every RepVGG block merged and every Conv+BN folded, with ``mode``'s
    BatchNorm statistics (``ModeBatchNorm2d``: the scene graph folds the scene ones, the crop graph the crop ones).

    The original model is left untouched. Raises if a BatchNorm survives (a block without
    ``reparameterize()``), since a deploy graph with BatchNorm would silently cost speed and INT8 accuracy.
    """
    fused = copy.deepcopy(model).eval()
    set_statistics_mode(fused, mode)
    # Children first, so a multi-branch block sees branches whose BN is already folded (it handles both).
    for module in reversed(list(fused.modules())):
        if module is not fused and hasattr(module, "reparameterize"):
            module.reparameterize()
    leftovers = [name for name, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftovers:
        raise RuntimeError(f"BatchNorm left after re-parameterization in: {', '.join(leftovers)}")
    return fused
