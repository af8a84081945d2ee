"""The transferability scores ``rank`` can order candidates by: the closed-form estimators
of ``estimators.py``, two cross-validated accuracies on the features (k-NN and a linear
probe), and their registry. Every score is a float where **higher means better transfer**;
compare one score across backbones, never two scores with each other."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .estimators import (
    TransferabilityInputError,
    check_features,
    hscore,
    leep,
    logme,
    nce,
    transrate,
)

__all__ = [
    "SCORES",
    "ScoreSpec",
    "TransferabilityInputError",
    "hscore",
    "knn_accuracy",
    "leep",
    "logme",
    "nce",
    "probe_accuracy",
    "score_all",
    "transrate",
]


# --- cross-validated scores


def _folds(codes: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, shuffled ``(train, test)`` index pairs.

    A class with fewer examples than ``folds`` is spread over as many folds as it has
    examples (scikit-learn's behaviour, its warning silenced); ``folds`` is capped by the
    largest class, so that a tiny sample still gets at least 2 folds."""
    largest = int(np.bincount(codes).max())
    n_splits = min(folds, largest)
    if n_splits < 2:
        raise TransferabilityInputError(
            f"cross-validation needs folds >= 2 and a class with at least 2 examples (got "
            f"folds={folds}, largest class {largest}); label more examples or raise folds.")
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        return list(cv.split(codes, codes))


def _cv_accuracy(model, f: np.ndarray, codes: np.ndarray,
                 splits: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Accuracy over all examples, each predicted by ``model`` fitted without its fold."""
    return float(accuracy_score(codes, cross_val_predict(model, f, codes, cv=splits)))


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5, folds: int = 5,
                 seed: int = 0) -> float:
    """Cross-validated k-nearest-neighbour accuracy with cosine similarity, in [0, 1].

    A non-parametric check that same-class examples are neighbours in feature space (the
    k-NN monitor of e.g. Wu, Xiong, Yu, Lin, "Unsupervised Feature Learning via
    Non-Parametric Instance Discrimination", CVPR 2018). Each example is classified by a
    majority vote of its ``k`` most cosine-similar examples outside its fold (``k`` is capped
    by the smallest training fold)."""
    f, codes, _ = check_features(features, labels)
    splits = _folds(codes, folds, seed)
    n_train = min(len(train) for train, _ in splits)
    model = KNeighborsClassifier(n_neighbors=min(k, n_train), metric="cosine")
    return _cv_accuracy(model, f, codes, splits)


def probe_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0
                   ) -> float:
    """Cross-validated accuracy of a logistic-regression probe on standardised features,
    in [0, 1]: the direct measurement the other scores estimate (a linear probe is what
    ``adapt``'s ``probe`` strategy trains), at the cost of ``folds`` fits.

    Alain, Bengio, "Understanding intermediate layers using linear classifier probes", ICLR
    2017 workshop. L2 strength ``C = 1``, fixed, so the score measures the features, not a
    hyper-parameter search."""
    f, codes, _ = check_features(features, labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    return _cv_accuracy(model, f, codes, _folds(codes, folds, seed))


# --- registry


@dataclass(frozen=True)
class ScoreSpec:
    """One transferability score: ``function(features, labels)``, or
    ``function(source_probs, labels)`` when ``needs_source``."""

    name: str
    function: Callable[[np.ndarray, np.ndarray], float]
    needs_source: bool
    description: str
    citation: str


SCORES: dict[str, ScoreSpec] = {s.name: s for s in [
    ScoreSpec("logme", logme, False,
              "log evidence per example of a Bayesian linear model on the features",
              "You, Liu, Wang, Long. LogME: Practical Assessment of Pre-trained Models for "
              "Transfer Learning. ICML 2021."),
    ScoreSpec("hscore", hscore, False,
              "between-class over total feature variance, Ledoit-Wolf shrunk covariance",
              "Bao et al. An Information-Theoretic Approach to Transferability in Task Transfer "
              "Learning. ICIP 2019; Ibrahim, Ponomareva, Mazumder. Newer is not always better: "
              "Rethinking transferability metrics, their peculiarities, stability and "
              "performance. ECML-PKDD 2022."),
    ScoreSpec("transrate", transrate, False,
              "coding-rate mutual information between features and labels",
              "Huang, Huang, Rong, Yang, Wei. Frustratingly Easy Transferability Estimation. "
              "ICML 2022."),
    ScoreSpec("leep", leep, True,
              "log-likelihood of target labels via the source classifier's soft predictions",
              "Nguyen, Hassner, Seeger, Archambeau. LEEP: A New Measure to Evaluate "
              "Transferability of Learned Representations. ICML 2020."),
    ScoreSpec("nce", nce, True,
              "negative conditional entropy of target labels given source predictions",
              "Tran, Nguyen, Hassner. Transferability and Hardness of Supervised Classification "
              "Tasks. ICCV 2019."),
    ScoreSpec("knn", knn_accuracy, False,
              "cross-validated 5-NN accuracy, cosine similarity",
              "Wu, Xiong, Yu, Lin. Unsupervised Feature Learning via Non-Parametric Instance "
              "Discrimination. CVPR 2018."),
    ScoreSpec("linear_probe", probe_accuracy, False,
              "cross-validated logistic-regression accuracy on standardised features",
              "Alain, Bengio. Understanding intermediate layers using linear classifier probes. "
              "ICLR 2017 (workshop)."),
]}


def score_all(features: np.ndarray, labels: np.ndarray, source_probs: np.ndarray | None = None,
              scores: Iterable[str] | None = None) -> dict[str, float | None]:
    """Each requested score (all of ``SCORES`` by default), in the order requested; ``None``
    for a score that needs ``source_probs`` when none were given (a backbone without a
    pretraining classifier)."""
    names = list(SCORES if scores is None else scores)
    for name in names:
        if name not in SCORES:
            close = difflib.get_close_matches(name, SCORES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TransferabilityInputError(
                f"unknown transferability score {name!r}; {hint}choose from "
                f"{', '.join(SCORES)}.")
    out: dict[str, float | None] = {}
    for name in names:
        spec = SCORES[name]
        if spec.needs_source:
            out[name] = None if source_probs is None else spec.function(source_probs, labels)
        else:
            out[name] = spec.function(features, labels)
    return out
