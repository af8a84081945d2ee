"""Baselines with no pretraining, so a reported gain from transfer is an honest one."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..adapt.probe import make_logreg_cv
from ..backbones.vision import to_pil
from ..data.examples import TEXT, Dataset, Examples
from .metrics import compute_metrics


def _labels(ex: Examples, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[label] for label in ex.labels or []])


def _pixels(ex: Examples, size: int = 32) -> np.ndarray:
    """Raw pixels as given when the images are arrays of one shape; else grey ``size``^2."""
    first = ex.inputs[0]
    if isinstance(first, np.ndarray) and all(
            isinstance(x, np.ndarray) and x.shape == first.shape for x in ex.inputs):
        return np.stack([x.reshape(-1) for x in ex.inputs]).astype(np.float32) / 255.0
    return np.stack([np.asarray(to_pil(x).convert("L").resize((size, size)), dtype=np.float32)
                     .ravel() / 255.0 for x in ex.inputs])


def classic_baseline(data: Dataset, seed: int = 0) -> dict[str, Any]:
    """TF-IDF word+bigram logistic regression for text; raw-pixel logistic regression for
    images. Regularisation is cross-validated like the probe's, so neither side is handicapped.
    """
    start = time.perf_counter()
    y = _labels(data.train, data.classes)
    folds = max(2, min(5, int(np.bincount(y).min())))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    clf = make_logreg_cv(np.logspace(-4, 2, 7), cv, 3000, seed)
    if data.modality == TEXT:
        name = "TF-IDF + logistic regression"
        model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
                              clf)
        x_train, x_test = data.train.inputs, data.test.inputs
    else:
        name = "raw pixels + logistic regression"
        model = make_pipeline(StandardScaler(), clf)
        x_train, x_test = _pixels(data.train), _pixels(data.test)
    model.fit(x_train, y)
    proba = model.predict_proba(x_test)
    metrics = compute_metrics(_labels(data.test, data.classes), proba, data.classes)
    return {"name": name, "metrics": metrics, "seconds": time.perf_counter() - start,
            "n_train": len(data.train)}
