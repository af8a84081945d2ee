"""Classification metrics in one JSON-able dictionary (scikit-learn does the arithmetic)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)


def compute_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, Any]:
    labels = list(range(len(classes)))
    y_pred = proba.argmax(axis=1)
    out: dict[str, Any] = {"n": int(len(y_true)), "accuracy": float(accuracy_score(y_true, y_pred))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg,
                                                     zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = \
            float(p), float(r), float(f)
    clipped = np.clip(proba, 1e-12, 1.0)
    out["log_loss"] = float(log_loss(y_true, clipped / clipped.sum(1, keepdims=True),
                                     labels=labels))
    report = classification_report(y_true, y_pred, labels=labels, target_names=classes,
                                   output_dict=True, zero_division=0)
    out["per_class"] = {
        c: {"precision": float(report[c]["precision"]), "recall": float(report[c]["recall"]),
            "f1": float(report[c]["f1-score"]), "support": int(report[c]["support"])}
        for c in classes
    }
    out["confusion_matrix"] = {
        "labels": list(classes),
        "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    return out


HEADLINE = ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall")
