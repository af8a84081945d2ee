"""transferkit: adapt a pretrained model to your labelled task, and measure what it saved."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import Classifier, fit_run, study  # noqa: E402
from .data import load_data  # noqa: E402

__all__ = ["Classifier", "__version__", "fit_run", "load_data", "study"]
