"""Probabilities to label names: the one rule the torch model and the ONNX engine share."""

from __future__ import annotations

from typing import Any


def label_names(proba: Any, classes: list[str], *, multilabel: bool = False,
                thresholds: list[float] | None = None, delimiter: str | None = None
                ) -> list[str]:
    """Label names; multi-label sets joined with the training delimiter.

    Needs only numpy, so the torch model and the ONNX engine share it (one rule for both)."""
    import numpy as np

    proba = np.asarray(proba)
    if not multilabel:
        return [classes[i] for i in proba.argmax(axis=1)]
    thr = np.asarray(thresholds or [0.5] * len(classes))
    sep = delimiter or "|"
    return [sep.join(c for c, on in zip(classes, row >= thr, strict=True) if on)
            for row in proba]
