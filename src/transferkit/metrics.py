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


def compute_multilabel_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str],
                               thresholds: list[float] | np.ndarray | None = None
                               ) -> dict[str, Any]:
    """Multi-label: ``y_true`` and ``proba`` are ``[N, K]``; a label is on above its threshold.

    ``accuracy`` is the exact-match (subset) accuracy, so single- and multi-label runs share
    one headline key."""
    from sklearn.metrics import hamming_loss

    thr = np.full(len(classes), 0.5) if thresholds is None else np.asarray(thresholds)
    y_pred = (proba >= thr[None, :]).astype(int)
    y_true = y_true.astype(int)
    out: dict[str, Any] = {"n": int(len(y_true)), "multilabel": True,
                           "accuracy": float(accuracy_score(y_true, y_pred)),
                           "hamming_loss": float(hamming_loss(y_true, y_pred))}
    for avg in ("micro", "macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg,
                                                     zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = \
            float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    out["per_class"] = {c: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                            "support": int(s[k]), "threshold": float(thr[k])}
                        for k, c in enumerate(classes)}
    return out


def tune_thresholds(y_true: np.ndarray, proba: np.ndarray) -> list[float]:
    """Per label, the probability threshold that maximises that label's F1 on held-out data
    (0.5 when the label never occurs there, so there is nothing to tune on)."""
    grid = np.linspace(0.05, 0.95, 19)
    out = []
    for k in range(y_true.shape[1]):
        yk = y_true[:, k].astype(int)
        if yk.sum() == 0:
            out.append(0.5)
            continue
        scores = []
        for t in grid:
            pred = proba[:, k] >= t
            tp = float((pred & (yk == 1)).sum())
            denom = float(pred.sum() + yk.sum())
            scores.append(2 * tp / denom if denom else 0.0)
        out.append(float(grid[int(np.argmax(scores))]))
    return out
