"""Strategies that adapt a pretrained backbone to a labelled task."""

from __future__ import annotations

from . import contrastive, finetune, lora, probe, protonet  # noqa: F401  (registers them)
from .base import STRATEGIES, FitContext, Strategy, label_indices, register
from .model import TransferModel
from .options import get_strategy, option_specs

__all__ = ["STRATEGIES", "FitContext", "Strategy", "TransferModel", "get_strategy",
           "label_indices", "option_specs", "register"]
