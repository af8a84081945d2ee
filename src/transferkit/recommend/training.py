"""Fit every requested model on one split's training rows, and evaluate them by segment.

All models see the same training rows, are scored the same way (``Vectors.scores``) and
are evaluated on the same warm and cold test rows; ``chance`` (every candidate scored alike,
ranked at random per user) is evaluated beside them as the floor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError
from .interactions import Interactions
from .metrics import evaluate_segment, summarise
from .models import (
    MODELS,
    TextMap,
    Vectors,
    fit_als,
    fit_bpr,
    fit_content,
    fit_popularity,
    fit_text_map,
    hybrid,
    interaction_matrix,
)
from .split import Split
from .tuning import GRIDS, Validation, choose_text_map, tune_als, tune_bpr

CHANCE = "chance"
SEGMENTS = ("warm", "cold")


@dataclass
class Trained:
    models: dict[str, Vectors]
    matrix: sp.csr_matrix  # the training interactions (users x items)
    text_map: TextMap | None = None
    embeddings: np.ndarray | None = None  # the item texts' embeddings the models used
    tuning: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> tune, fit

    def seen(self) -> list[np.ndarray]:
        m = self.matrix
        return [m.indices[m.indptr[u]:m.indptr[u + 1]] for u in range(m.shape[0])]


def check_models(models: list[str] | tuple[str, ...]) -> list[str]:
    from ..config import did_you_mean

    for name in models:
        if name not in MODELS:
            raise ConfigError(f"Unknown model '{name}'{did_you_mean(name, MODELS)}. Choose "
                              f"from: {', '.join(MODELS)}.")
    if not models:
        raise ConfigError(f"--models names no model; choose from: {', '.join(MODELS)}.")
    return list(dict.fromkeys(models))


def train_models(data: Interactions, n_items: int, split: Split, embeddings: np.ndarray, *,
                 models: list[str] | tuple[str, ...], seed: int = 0, threads: int = 1,
                 grid: str = "small", validation_share: float = 0.2,
                 tune_encoder: Callable[..., tuple[np.ndarray, dict[str, Any]]] | None = None
                 ) -> Trained:
    """Fit ``models`` on ``split.train``; ALS (and BPR) settings and the hybrid's text map
    are chosen on a validation split of the training rows (``tuning``).

    ``tune_encoder`` (``encoder.EncoderTuner``, ``--strategy`` other than probe): called with
    the validation split and ALS's chosen settings once they are known, it fine-tunes the
    text encoder and returns the catalogue's new embeddings, which every text model (the
    hybrid's map, the content model) then uses."""
    models = check_models(models)
    if grid not in GRIDS:
        raise ConfigError(f"Unknown tuning grid '{grid}'; choose from {', '.join(GRIDS)}.")
    tr = split.train
    n_users = len(data.user_ids)
    matrix = interaction_matrix(data.users[tr], data.items[tr], n_users, n_items)
    trained = Trained({}, matrix)
    val = None
    if {"als", "bpr", "hybrid"} & set(models):
        start = time.perf_counter()
        val = Validation(data, tr, n_items, cold_share=validation_share,
                         test_share=validation_share, seed=seed + 1)
        trained.tuning["validation"] = val.split.summary(n_users, n_items)
        trained.tuning["validation_seconds"] = time.perf_counter() - start

    def timed(name: str, tune_seconds: float, fit: Any) -> Vectors:
        start = time.perf_counter()
        vectors = fit()
        trained.seconds[name] = {"tune": tune_seconds, "fit": time.perf_counter() - start}
        return vectors

    if "popularity" in models:
        trained.models["popularity"] = timed("popularity", 0.0, lambda: fit_popularity(matrix))
    if "als" in models or "hybrid" in models:
        start = time.perf_counter()
        als_params, trials = tune_als(val, grid, seed=seed, threads=threads)
        tune_s = time.perf_counter() - start
        trained.tuning["als"] = {"chosen": als_params, "grid": grid, "trials": trials}
        als = timed("als", tune_s, lambda: fit_als(matrix, seed=seed, threads=threads,
                                                   **als_params))
        if "als" in models:
            trained.models["als"] = als
        if "hybrid" in models and tune_encoder is not None:
            start = time.perf_counter()
            embeddings, trained.tuning["encoder"] = tune_encoder(
                val, als_params, embeddings, seed=seed, threads=threads)
            tune_s += time.perf_counter() - start
        if "hybrid" in models:
            start = time.perf_counter()
            choice, map_trials = choose_text_map(val, embeddings, als_params, seed=seed,
                                                 threads=threads)
            map_tune_s = time.perf_counter() - start
            trained.tuning["text_map"] = {"chosen": choice, "trials": map_trials}
            warm = np.flatnonzero(np.asarray(matrix.getnnz(axis=0)) > 0)
            cold = np.flatnonzero(np.asarray(matrix.getnnz(axis=0)) == 0)

            def fit_hybrid() -> Vectors:
                trained.text_map = fit_text_map(embeddings, als.items, warm, **choice)
                return hybrid(als, trained.text_map, embeddings, cold)

            trained.models["hybrid"] = timed("hybrid", tune_s + map_tune_s, fit_hybrid)
            trained.seconds["hybrid"]["fit"] += trained.seconds["als"]["fit"]
    if "content" in models:
        trained.models["content"] = timed("content", 0.0,
                                          lambda: fit_content(matrix, embeddings))
    trained.embeddings = embeddings
    if "bpr" in models:
        start = time.perf_counter()
        bpr_params, trials = tune_bpr(val, seed=seed, threads=threads)
        trained.tuning["bpr"] = {"chosen": bpr_params, "trials": trials}
        trained.models["bpr"] = timed("bpr", time.perf_counter() - start,
                                      lambda: fit_bpr(matrix, seed=seed, threads=threads,
                                                      **bpr_params))
    trained.models = {m: trained.models[m] for m in models}  # the order asked for
    return trained


def evaluate_models(trained: Trained, data: Interactions, split: Split, *, seed: int = 0
                    ) -> dict[str, dict[str, Any]]:
    """``{model: {segment: {metric: {mean, lo, hi}, users}}}``, chance included."""
    n_users, n_items = trained.matrix.shape
    warm = np.setdiff1d(np.arange(n_items), split.cold_items)
    seen = trained.seen()
    chance = Vectors(np.zeros((n_users, 0), np.float32), np.zeros((n_items, 0), np.float32),
                     np.zeros(n_items, np.float32))
    out: dict[str, dict[str, Any]] = {}
    for name, vectors in {**trained.models, CHANCE: chance}.items():
        scores = vectors.scores()
        out[name] = {}
        for segment, rows, items in (("warm", split.warm_test, warm),
                                     ("cold", split.cold_test, split.cold_items)):
            # the same seed for every model: the same users resampled, the same tie draws
            result = evaluate_segment(scores, data.users[rows], data.items[rows], items, seen,
                                      seed=seed)
            out[name][segment] = summarise(result, seed=seed)
    return out
