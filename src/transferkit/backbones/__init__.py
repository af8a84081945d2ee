"""Pretrained backbones behind one contract, found by alias, folder, timm name or HF id."""

from __future__ import annotations

from .base import Backbone
from .registry import ALIASES, Alias, load_backbone, where
from .text import TextBackbone
from .vision import VisionBackbone

__all__ = ["ALIASES", "Alias", "Backbone", "TextBackbone", "VisionBackbone", "load_backbone",
           "where"]
