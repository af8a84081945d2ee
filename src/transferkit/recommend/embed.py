"""Item texts -> pretrained embeddings, through the one cached extraction path.

The texts go through ``FitContext.features`` exactly as a classifier's training texts do:
content-addressed by the backbone's fingerprint, the precision and the texts, so a second
run on the same catalogue (another seed, another model) reads them from the cache."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from ..adapt.base import FitContext
from ..adapt.model import TransferModel
from ..backbones.base import Backbone
from ..backbones.registry import load_backbone
from ..data.examples import TEXT, Examples
from ..errors import ConfigError
from ..train.cache import FeatureCache


def text_backbone(name: str, *, max_length: int | None = None,
                  trust_remote_code: bool = False) -> Backbone:
    """A text backbone of the registry; an image or audio one is refused by name."""
    backbone = load_backbone(name, max_length=max_length, trust_remote_code=trust_remote_code)
    if backbone.modality != "text":
        raise ConfigError(f"--backbone {name} is a {backbone.modality} backbone; items are "
                          "described by text, so use a text backbone (e.g. minilm; "
                          "`transferkit models` lists them).")
    return backbone


def embed_texts(backbone: Backbone, texts: list[str], origins: list[str] | None = None, *,
                cache: bool = True, batch_size: int = 32, precision: str = "fp32",
                progress: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings ``[len(texts), feature_dim]`` and what the extraction cost.

    ``precision`` defaults to fp32: new items embedded at predict time must land where the
    fit's items did, on any machine (bf16 where available would differ in the last bits)."""
    ctx = FitContext(precision=precision, batch_size=batch_size,
                     cache=FeatureCache() if cache else None, progress=progress)
    examples = Examples(list(texts), None, list(origins or [""] * len(texts)), TEXT,
                        source="items")
    # FitContext reads features of a model's backbone; an identity head stands for "none"
    model = TransferModel(backbone, [], head=nn.Identity())
    features = ctx.features(model, examples, "embed items")
    stats = ctx.extraction[-1] if ctx.extraction else None
    return features.astype(np.float32), {
        "n": len(texts), "seconds": stats.seconds if stats else 0.0,
        "from_cache": bool(stats and stats.from_cache), "precision": precision}
