"""Recommendation with pretrained item embeddings: interactions -> item and user vectors.

Collaborative filtering (``implicit``'s ALS and BPR) for items with interactions; the
pretrained text encoder's embeddings, through a map learned on the warm items, for items
with none (cold, or added after the fit). ``Recommender`` is a fitted run; the whole
reported run (read, split, fit, evaluate, report, save) is ``workflows.recommend``.

Importing this package stays torch-free (the server's ONNX path checks a run's kind
through it); the encoder is loaded only where item texts are embedded (``embed``).
"""

from __future__ import annotations

from .models import DEFAULT_MODELS, MODELS, Vectors
from .recommender import Recommender, is_recommender_run

__all__ = ["DEFAULT_MODELS", "MODELS", "Recommender", "Vectors", "is_recommender_run"]
