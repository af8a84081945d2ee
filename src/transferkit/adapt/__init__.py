"""Strategies that adapt a pretrained backbone to a labelled task."""

from __future__ import annotations

from . import finetune, lora, probe  # noqa: F401  (registers the strategies)
from .base import STRATEGIES, FitContext, Strategy, get_strategy, label_indices, register
from .model import TransferModel

__all__ = ["STRATEGIES", "FitContext", "Strategy", "TransferModel", "get_strategy",
           "label_indices", "register"]
