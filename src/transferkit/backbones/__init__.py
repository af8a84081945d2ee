"""Pretrained backbones behind one contract, found by alias, folder, timm name or HF id."""

from __future__ import annotations

from .audio import AudioBackbone
from .base import Backbone
from .catalogue import ALIASES, Alias, register_backbone
from .registry import list_backbones, load_backbone, where
from .text import TextBackbone
from .vision import VisionBackbone

__all__ = ["ALIASES", "Alias", "AudioBackbone", "Backbone", "TextBackbone", "VisionBackbone",
           "list_backbones", "load_backbone", "register_backbone", "where"]
