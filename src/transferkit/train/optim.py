"""What the Trainer steps with: AdamW over per-group learning rates, the LR schedule, and the
default loss.

A strategy hands over ``ParamGroup``s rather than an optimizer because the learning-rate
plan is the strategy's (layer-wise decay, groups that start later) while the mechanics
(weight-decay split, warm-up, decay shape, fused kernels) are the same for every strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .config import TrainConfig


@dataclass
class ParamGroup:
    """Parameters that share a learning rate; ``start_epoch`` > 0 keeps them at zero LR until
    then (gradual unfreezing without touching ``requires_grad``)."""

    params: list[nn.Parameter]
    lr: float
    start_epoch: int = 0
    name: str = ""


def _lr_lambda(schedule: str, warmup: int, total: int, start: int):
    def f(step: int) -> float:
        if step < start:
            return 0.0
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return f


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def build_optimizer(
    model: nn.Module, groups: list[ParamGroup], cfg: TrainConfig, steps_per_epoch: int,
    total_steps: int, device: torch.device,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with each group split into decayed weights and undecayed biases and norms, and
    one schedule per group (its start epoch shifts only where its LR leaves zero)."""
    warmup = int(cfg.warmup_ratio * total_steps)
    names = {id(p): n for n, p in model.named_parameters()}
    param_groups, lambdas = [], []
    for g in groups:
        trainable = [p for p in g.params if p.requires_grad]
        for decay in (True, False):
            ps = [p for p in trainable if _no_decay(names.get(id(p), ""), p) != decay]
            if ps:
                param_groups.append({"params": ps, "lr": g.lr,
                                     "weight_decay": cfg.weight_decay if decay else 0.0})
                lambdas.append(_lr_lambda(cfg.schedule, warmup, total_steps,
                                          g.start_epoch * steps_per_epoch))
    if not param_groups:
        raise ConfigError("Nothing to train: the strategy froze every parameter.")
    try:  # the fused kernel updates all tensors in one pass: ~20% faster steps on this CPU
        optimizer = torch.optim.AdamW(param_groups, fused=device.type in ("cpu", "cuda"))
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(param_groups)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def default_loss(labels: np.ndarray, n_classes: int, cfg: TrainConfig, device: torch.device
                 ) -> nn.Module:
    """Cross-entropy, or for multi-label targets (a 0/1 matrix) independent sigmoids;
    ``class_weights="balanced"`` weighs classes by inverse frequency (multi-label: each
    label's positives against its negatives)."""
    if labels.ndim == 2:
        pos_weight = None
        if cfg.class_weights == "balanced":
            pos = labels.sum(0)
            pos_weight = torch.tensor((len(labels) - pos) / np.maximum(pos, 1),
                                      dtype=torch.float32, device=device)
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    weights = None
    if cfg.class_weights == "balanced":
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
        weights = torch.tensor(len(labels) / (n_classes * np.maximum(counts, 1)),
                               dtype=torch.float32, device=device)
    return nn.CrossEntropyLoss(weight=weights)
