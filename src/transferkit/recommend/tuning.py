"""Choosing ALS's settings and the hybrid's text map on a validation split, never the test.

The validation split is made from the *training* rows by the same function as the test split
(``split.split_rows``, another seed): a share of the training items becomes pseudo-cold and
each user's latest training interactions on the rest are held out. ALS is tuned on the
warm part (NDCG@10), then the text maps are fit on the validation's warm items with the
chosen ALS and compared on its pseudo-cold items (NDCG@10): the map is chosen by measurement.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from .interactions import Interactions
from .metrics import evaluate_segment
from .models import Vectors, fit_als, fit_bpr, fit_text_map, hybrid, interaction_matrix
from .split import split_rows

GRIDS: dict[str, dict[str, tuple]] = {
    # ALS: factors x regularization x alpha (confidence) at 15 iterations, then iterations
    # (on MovieLens-100K the best of a wider grid was inside this one: reg 10, alpha 1)
    "full": {"factors": (32, 64, 128), "regularization": (1.0, 3.0, 10.0, 30.0),
             "alpha": (0.3, 1.0, 3.0), "iterations": (15, 30, 50)},
    "small": {"factors": (64,), "regularization": (1.0, 10.0, 30.0), "alpha": (0.3, 1.0, 3.0),
              "iterations": (15,)},
    "none": {"factors": (64,), "regularization": (0.1,), "alpha": (1.0,), "iterations": (15,)},
}
BPR_GRID = {"factors": (32, 64), "learning_rate": (0.01, 0.05), "regularization": (0.001, 0.01),
            "iterations": (100,)}
MAP_CHOICES = ({"kind": "ridge", "alpha": 1.0}, {"kind": "ridge", "alpha": 10.0},
               {"kind": "ridge", "alpha": 100.0}, {"kind": "knn", "k": 10},
               {"kind": "knn", "k": 50})
SELECT_BY = "ndcg@10"


class Validation:
    """The validation split of the training rows, with what scoring on it needs."""

    def __init__(self, data: Interactions, train_rows: np.ndarray, n_items: int, *,
                 cold_share: float, test_share: float, seed: int) -> None:
        self.split = split_rows(data.users, data.items, data.times, cold_share=cold_share,
                                test_share=test_share, seed=seed, rows=train_rows)
        n_users = len(data.user_ids)
        tr = self.split.train
        self.matrix = interaction_matrix(data.users[tr], data.items[tr], n_users, n_items)
        m = self.matrix
        self.seen = [m.indices[m.indptr[u]:m.indptr[u + 1]] for u in range(n_users)]
        self.warm = np.flatnonzero(np.asarray(m.getnnz(axis=0)) > 0)
        self.data, self.seed = data, seed

    def score(self, vectors: Vectors, segment: str) -> float:
        rows = self.split.warm_test if segment == "warm" else self.split.cold_test
        items = self.warm if segment == "warm" else self.split.cold_items
        result = evaluate_segment(vectors.scores(), self.data.users[rows],
                                  self.data.items[rows], items, self.seen, seed=self.seed)
        return float(np.mean(result.values[SELECT_BY])) if len(result.users) else float("nan")


def tune_als(val: Validation, grid: str, *, seed: int, threads: int
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid's factors x regularization x alpha at its first iteration count that is
    15 (or its only one), then the iteration counts for the best: every trial is returned."""
    g = GRIDS[grid]
    base_iterations = 15 if 15 in g["iterations"] else g["iterations"][0]
    trials = []

    def trial(params: dict[str, Any]) -> float:
        start = time.perf_counter()
        score = val.score(fit_als(val.matrix, seed=seed, threads=threads, **params), "warm")
        trials.append({**params, SELECT_BY: score, "seconds": time.perf_counter() - start})
        return score

    best, best_score = None, -1.0
    for f, r, a in itertools.product(g["factors"], g["regularization"], g["alpha"]):
        params = {"factors": f, "regularization": r, "alpha": a, "iterations": base_iterations}
        if (s := trial(params)) > best_score:
            best, best_score = params, s
    for it in g["iterations"]:
        if it != base_iterations and (s := trial({**best, "iterations": it})) > best_score:
            best, best_score = {**best, "iterations": it}, s
    return best, trials


def tune_bpr(val: Validation, *, seed: int, threads: int
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    trials = []
    for values in itertools.product(*BPR_GRID.values()):
        params = dict(zip(BPR_GRID, values, strict=True))
        score = val.score(fit_bpr(val.matrix, seed=seed, threads=threads, **params), "warm")
        trials.append({**params, SELECT_BY: score})
    best = max(trials, key=lambda t: t[SELECT_BY])
    return {k: best[k] for k in BPR_GRID}, trials


def choose_text_map(val: Validation, embeddings: np.ndarray, als_params: dict[str, Any], *,
                    seed: int, threads: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Each map fit on the validation's warm items, scored on its pseudo-cold ones."""
    als = fit_als(val.matrix, seed=seed, threads=threads, **als_params)
    trials = []
    for choice in MAP_CHOICES:
        text_map = fit_text_map(embeddings, als.items, val.warm, **choice)
        score = val.score(hybrid(als, text_map, embeddings, val.split.cold_items), "cold")
        trials.append({**choice, SELECT_BY: score})
    best = max(trials, key=lambda t: t[SELECT_BY])
    return {k: v for k, v in best.items() if k != SELECT_BY}, trials
