"""Strategies that adapt a pretrained backbone to a labelled task."""

from __future__ import annotations

from . import contrastive, finetune, lora, probe, protonet, scratch  # noqa: F401  (registers)
from .base import STRATEGIES, FitContext, Strategy, fit_cost, label_indices, register
from .model import TransferModel
from .options import get_strategy, option_specs

__all__ = ["STRATEGIES", "FitContext", "Strategy", "TransferModel", "fit_cost", "get_strategy",
           "label_indices", "option_specs", "register"]
