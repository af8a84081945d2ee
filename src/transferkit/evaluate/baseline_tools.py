"""What every no-pretraining baseline shares: the cross-validated logistic regression, the
recipe's result in the baselines' common shape, and counting a model's forward FLOPs."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from torch import nn

from ..adapt.base import label_indices
from ..adapt.probe import make_logreg_cv
from ..data.examples import Dataset
from ..metrics import compute_metrics
from ..train.batches import Batches
from ..train.recipe import RecipeResult

LOGREG_CS = np.logspace(-4, 2, 7)


def logreg_baseline(data: Dataset, seed: int, name: str, features: Any, x_train: Any, x_test: Any
            ) -> dict[str, Any]:
    """``features`` (a scikit-learn transformer) then L2 logistic regression, C chosen by
    stratified cross-validation within the budget, as the probe chooses its own: neither
    side is handicapped."""
    start = time.perf_counter()
    y = label_indices(data.train, data.classes)
    folds = max(2, min(5, int(np.bincount(y).min())))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    clf = make_logreg_cv(LOGREG_CS, cv, 3000, seed)
    model = make_pipeline(features, clf)
    model.fit(x_train, y)
    seconds = time.perf_counter() - start
    proba = model.predict_proba(x_test)
    metrics = compute_metrics(label_indices(data.test, data.classes), proba, data.classes)
    params = int(clf.coef_.size + clf.intercept_.size)
    # no optimizer steps to count (L-BFGS runs to convergence); examples_seen counts the
    # examples handed to the fits: every fold at every C, then the refit on the whole budget
    cost = {"examples_seen": len(y) * ((folds - 1) * len(LOGREG_CS) + 1), "steps": None,
            "examples_evaluated": len(y) * len(LOGREG_CS), "trainable_params": params,
            "total_params": params, "train_flops": None, "wall_seconds": seconds}
    return {"name": name, "metrics": metrics, "seconds": time.perf_counter() - start,
            "n_train": len(data.train), "cost": cost,
            "chosen": {"C": float(np.atleast_1d(clf.C_)[0]), "cv_folds": folds}}


def batch_size_for(n: int, low: int, high: int) -> int:
    """About 16 steps an epoch, within [low, high]: few examples still get several updates
    an epoch, many get batches large enough to keep the CPU busy."""
    return int(min(high, max(low, n // 16)))


def forward_flops(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Forward FLOPs of one example, counted by torch on a real batch."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(**{k: v.to(device) for k, v in batch.items()})
    return counter.get_total_flops() / max(1, len(next(iter(batch.values()))))


def predict_proba(model: nn.Module, batches: Batches, size: int = 512) -> np.ndarray:
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        parts = [torch.softmax(model(**{k: v.to(device) for k, v in batches.collate(
            list(range(s, min(s + size, len(batches))))).items()}).float(), -1).cpu()
                 for s in range(0, len(batches), size)]
    return torch.cat(parts).numpy()


def recipe_result(name: str, data: Dataset, fitted: RecipeResult, test: Batches, start: float
            ) -> dict[str, Any]:
    """The baselines' common shape, plus what training cost and what tuning chose."""
    proba = predict_proba(fitted.model, test)
    metrics = compute_metrics(label_indices(data.test, data.classes), proba, data.classes)
    return {"name": name, "metrics": metrics, "seconds": time.perf_counter() - start,
            "n_train": len(data.train), "cost": fitted.cost, "chosen": fitted.chosen,
            "search": fitted.info}
