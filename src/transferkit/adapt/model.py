"""The adapted model: a backbone, a head on its pooled features, and the label names."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones.base import Backbone
from ..train.cache import FeatureCache, extract_features


class TransferModel(nn.Module):
    """``backbone -> head -> softmax``; every strategy produces one of these."""

    def __init__(self, backbone: Backbone, classes: list[str], head: nn.Module | None = None,
                 *, multilabel: bool = False, thresholds: list[float] | None = None,
                 delimiter: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.classes = list(classes)
        self.head = head if head is not None else nn.Linear(backbone.feature_dim, len(classes))
        # multi-label: independent sigmoids, a label is on above its (tuned) threshold
        self.multilabel = multilabel
        self.thresholds = thresholds
        self.delimiter = delimiter

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(**inputs))

    def head_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities from precomputed backbone features (float32 head, any device)."""
        param = next(self.head.parameters())
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(features)).to(param.device, param.dtype)
            logits = self.head(x).float()
            out = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)
            return out.cpu().numpy()

    def predict_proba(
        self, inputs: list[Any], *, batch_size: int = 32, precision: str = "auto",
        cache: FeatureCache | None = None,
    ) -> np.ndarray:
        features, _ = extract_features(self.backbone, inputs, batch_size=batch_size,
                                       precision=precision, cache=cache)
        return self.head_proba(features)

    def predict(self, inputs: list[Any], **kwargs: Any) -> list[str]:
        return self.labels_from_proba(self.predict_proba(inputs, **kwargs))

    def labels_from_proba(self, proba: np.ndarray) -> list[str]:
        """Label names; multi-label sets are joined with the training data's delimiter."""
        from ..labels import label_names

        return label_names(proba, self.classes, multilabel=self.multilabel,
                           thresholds=self.thresholds, delimiter=self.delimiter)
