"""Which weights a strategy changed: shared by the tests of the tuning strategies."""

from __future__ import annotations

import torch


def changed_tensors(pristine: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    """Names of the floating-point weights and buffers that differ from ``pristine``."""
    return {k for k, v in module.state_dict().items()
            if v.is_floating_point() and not torch.equal(pristine[k], v)}
