"""Transferability estimators against hand-computed values and independent slow formulas."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.neighbors import KNeighborsClassifier

from transferkit.errors import DataError
from transferkit.select.scores import (
    SCORES,
    hscore,
    knn_accuracy,
    leep,
    logme,
    nce,
    probe_accuracy,
    score_all,
    transrate,
)

FEATURE_SCORES = [name for name, spec in SCORES.items() if not spec.needs_source]

# Six examples, two source classes (z), two target classes (y), for LEEP and NCE.
THETA = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.7, 0.3]])
Y6 = np.array([0, 0, 0, 1, 1, 1])


def blobs(seed: int = 0, n: int = 150, d: int = 20, c: int = 3, sep: float = 3.0):
    """Informative features (class means ``sep`` apart plus unit noise), pure-noise features of
    the same shape, and the labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % c
    centres = rng.normal(size=(c, d))
    centres *= sep / np.linalg.norm(centres, axis=1, keepdims=True)
    informative = centres[labels] + rng.normal(size=(n, d))
    return informative, rng.normal(size=(n, d)), labels


# --- LEEP and NCE -----------------------------------------------------------------------


def test_leep_hand_computed():
    # Joint P(y, z) = (1/6) * sums of theta over each target class:
    #   y=0: z0 0.9+0.8+0.6 = 2.3, z1 0.1+0.2+0.4 = 0.7
    #   y=1: z0 0.3+0.2+0.7 = 1.2, z1 0.7+0.8+0.3 = 1.8
    # P(z0) = 3.5/6, P(z1) = 2.5/6, so P(y|z0) = (23/35, 12/35) and P(y|z1) = (7/25, 18/25).
    p_y_given_z = {0: (23 / 35, 7 / 25), 1: (12 / 35, 18 / 25)}
    # EEP_i = sum_z P(y_i|z) theta_iz, e.g. x1: .9 * 23/35 + .1 * 7/25 = .6194, log -.4790;
    # the six logs -.4790 -.5418 -.6807 -.4995 -.4392 -.7853 average to -.5709
    eep = [t0 * p_y_given_z[y][0] + t1 * p_y_given_z[y][1]
           for (t0, t1), y in zip(THETA, Y6, strict=True)]
    expected = sum(math.log(e) for e in eep) / 6
    assert expected == pytest.approx(-0.5709, abs=1e-4)
    assert leep(THETA, Y6) == pytest.approx(expected, rel=1e-12)


def test_nce_hand_computed():
    # argmax z = 0, 0, 0, 1, 1, 0. Given z0 (4 examples) y = 0, 0, 0, 1; given z1 (2) y = 1, 1.
    # H(Y|Z) = 4/6 * H(3/4, 1/4) + 2/6 * 0.
    h = 4 / 6 * -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert nce(THETA, Y6) == pytest.approx(-h, rel=1e-12)
    assert nce(THETA, 1 - Y6) == pytest.approx(-h, rel=1e-12)  # label names do not matter


def test_source_scores_rank_informative_predictions_higher():
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    # informative: source class 2*y or 2*y+1 is predicted with 0.7 of the mass
    informative = rng.dirichlet(np.ones(8), size=300) * 0.3
    informative[np.arange(300), 2 * labels + rng.integers(0, 2, 300)] += 0.7
    noise = rng.dirichlet(np.ones(8), size=300)
    for score in (leep, nce):
        assert score(informative, labels) > score(noise, labels) + 0.5


# --- H-score ----------------------------------------------------------------------------


def test_hscore_hand_computed_1d_and_2d():
    labels = np.array([0, 0, 1, 1])
    f1 = np.array([[0.0], [2.0], [4.0], [6.0]])
    # mean 3, var = (9+1+1+9)/4 = 5; class means 1 and 5, their variance = (4+4)/2 = 4: H = 4/5
    assert hscore(f1, labels, shrinkage=False) == pytest.approx(0.8, rel=1e-12)
    # add x2 = 0,1,0,1: cov = [[5, .5], [.5, .25]] (det 1), inv = [[.25, -.5], [-.5, 5]];
    # cov(E[f|y]) = [[4, 0], [0, 0]], so H = .25 * 4 = 1: x2 explains within-class spread
    f2 = np.array([[0.0, 0.0], [2.0, 1.0], [4.0, 0.0], [6.0, 1.0]])
    assert hscore(f2, labels, shrinkage=False) == pytest.approx(1.0, rel=1e-12)


def test_hscore_shrinkage_is_ledoit_wolf():
    _, noise, labels = blobs(seed=1, n=30, d=6)
    x = noise + labels[:, None] * 0.5
    xc = x - x.mean(axis=0)
    n, d = xc.shape
    s = xc.T @ xc / n
    m = np.trace(s) / d
    # Ledoit & Wolf (2004): a = min(b2, d2) / d2, the slow way, one outer product at a time
    b2 = sum(np.sum((np.outer(r, r) - s) ** 2) for r in xc) / n**2
    d2 = np.sum((s - m * np.eye(d)) ** 2)
    a = min(b2, d2) / d2
    assert a == pytest.approx(ledoit_wolf_shrinkage(xc, assume_centered=True), rel=1e-10)
    g = np.stack([xc[labels == c].mean(axis=0) for c in labels])  # E[f | y] per example
    expected = np.trace(np.linalg.inv((1 - a) * s + a * m * np.eye(d)) @ ((1 - a) * g.T @ g / n))
    assert hscore(x, labels) == pytest.approx(expected, rel=1e-9)
    assert 0 < hscore(x, labels) < hscore(x, labels, shrinkage=False)


# --- TransRate --------------------------------------------------------------------------


def test_transrate_hand_computed_unbalanced():
    # x = 0,0,0,4 -> centred -1,-1,-1,3. eps = 1:
    # R(Z) = .5 log(1 + 12/4) = log 2; R(Z_0) = .5 log(1 + 3/3) = .5 log 2;
    # R(Z_1) = .5 log(1 + 9/1) = .5 log 10 (class rows are not re-centred)
    # TrR = log 2 - (3/4 * .5 log 2 + 1/4 * .5 log 10) = .625 log 2 - .125 log 10
    value = transrate(np.array([[0.0], [0.0], [0.0], [4.0]]), np.array([0, 0, 0, 1]), eps=1.0)
    assert value == pytest.approx(0.625 * math.log(2) - 0.125 * math.log(10), rel=1e-12)
    assert value == pytest.approx(0.14539, abs=1e-5)  # the paper's 1/K weights give -0.0558


@pytest.mark.parametrize("n, d", [(12, 3), (6, 4)])  # d <= n_c, and d > n_c (n_c = 3)
def test_transrate_matches_explicit_determinants(n, d):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)) * 2 + 1
    labels = np.arange(n) % 2
    eps = 0.5
    z = x - x.mean(axis=0)

    def rate(zc):
        return 0.5 * math.log(np.linalg.det(np.eye(d) + zc.T @ zc / (len(zc) * eps)))

    expected = rate(z) - sum(np.mean(labels == c) * rate(z[labels == c]) for c in (0, 1))
    assert transrate(x, labels, eps=eps) == pytest.approx(expected, rel=1e-10)


# --- LogME ------------------------------------------------------------------------------


def max_evidence(f: np.ndarray, labels: np.ndarray) -> float:
    """LogME the slow, independent way: y_c ~ N(0, I/beta + F F^T/alpha) is the marginal of the
    Bayesian linear model; maximise its log density over (alpha, beta) numerically."""
    n = len(f)
    per_class = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)

        def neg_log_evidence(p, y=y):
            cov = np.eye(n) / np.exp(p[1]) + f @ f.T / np.exp(p[0])
            return -multivariate_normal(np.zeros(n), cov).logpdf(y)

        best = minimize(neg_log_evidence, [0.0, 0.0], method="Nelder-Mead",
                        options={"xatol": 1e-8, "fatol": 1e-11, "maxiter": 4000})
        per_class.append(-best.fun / n)
    return float(np.mean(per_class))


@pytest.mark.parametrize("n, d", [(40, 5), (60, 4)])
def test_logme_matches_maximised_evidence(n, d):
    rng = np.random.default_rng(1)
    labels = np.arange(n) % 3
    f = rng.normal(size=(n, d)) + np.eye(3, d)[labels] * 1.5
    assert logme(f, labels) == pytest.approx(max_evidence(f, labels), abs=1e-6)


def test_logme_few_examples_is_a_true_evidence():
    # N <= D: the fixed point may stop short of the maximum (the optimum can sit at alpha or
    # beta -> infinity), but the value must be the evidence at some (alpha, beta), so never
    # above the maximum. The reference code's log|A| over only rank(F) directions would add
    # (D - N) / (2N) * log(alpha), about +2 here.
    rng = np.random.default_rng(1)
    labels = np.arange(8) % 3
    f = rng.normal(size=(8, 12)) + np.eye(3, 12)[labels] * 1.5
    best = max_evidence(f, labels)
    assert best - 0.01 < logme(f, labels) <= best + 1e-9


def test_logme_separable_beats_shuffled_labels():
    informative, _, labels = blobs(seed=2)
    shuffled = np.random.default_rng(0).permutation(labels)
    assert logme(informative, labels) > logme(informative, shuffled) + 0.1


# --- k-NN and linear probe --------------------------------------------------------------


def test_knn_uses_cosine_similarity():
    # class 0 along angle 0, class 1 along angle 30 degrees, at wildly different radii: every
    # point's cosine neighbours are its own class (distance 0), its Euclidean ones often not
    radii = np.array([1.0, 30.0, 900.0])
    angle = np.repeat([0.0, np.pi / 6], 3)
    x = np.tile(radii, 2)[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    labels = np.repeat([0, 1], 3)
    assert knn_accuracy(x, labels, k=1, folds=3) == 1.0
    # the design really separates the metrics: (1, 0)'s Euclidean neighbour is (.87, .5)
    euclid = KNeighborsClassifier(n_neighbors=1).fit(x[1:], labels[1:])
    assert euclid.predict(x[:1])[0] == 1


def test_probe_hand_computed_and_separable():
    labels = np.array([0] * 8 + [1] * 4)
    # constant features: every fold's probe predicts its training majority (6 vs 3) -> 8/12
    assert probe_accuracy(np.ones((12, 3)), labels, folds=4) == pytest.approx(8 / 12)
    x = np.where(labels == 0, -1.0, 1.0)[:, None] + np.linspace(0, 0.1, 12)[:, None]
    assert probe_accuracy(x, labels, folds=4) == 1.0


def test_cv_scores_fall_back_on_small_classes():
    labels = np.array([0] * 10 + [1] * 2)  # the minority has fewer members than folds
    x = np.where(labels == 0, -1.0, 1.0)[:, None] + np.random.default_rng(0).normal(
        scale=0.1, size=(12, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's small-class warning is expected, silenced
        # 2 minority examples land in 2 folds: each one's 1-NN is the other
        assert knn_accuracy(x, labels, k=1) == 1.0
        assert knn_accuracy(x, labels, k=5) == 10 / 12  # 1 minority vote of 5 never wins
        assert probe_accuracy(x, labels) == 1.0
    # 4 examples, 2 per class: 2 folds of 2, so k is capped at the 2 training rows
    assert 0 <= knn_accuracy(x[[0, 1, 10, 11]], labels[[0, 1, 10, 11]], k=5) <= 1
    with pytest.raises(ValueError, match="at least 2 examples"):
        knn_accuracy(x[[0, 11]], labels[[0, 11]])


# --- all scores -------------------------------------------------------------------------


@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_each_score_ranks_informative_features_above_noise(name):
    informative, noise, labels = blobs()
    score = SCORES[name].function
    assert score(informative, labels) > score(noise, labels)


@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_low_precision_features_are_scored_in_float64(name):
    # float16 values whose Gram matrix overflows float16 (300^2 * 60 > 65504)
    x = (np.random.default_rng(0).normal(size=(60, 6)) * 300).astype(np.float16)
    labels = np.arange(60) % 2
    value = SCORES[name].function(x, labels)
    assert np.isfinite(value)
    assert value == pytest.approx(SCORES[name].function(x.astype(np.float64), labels), rel=1e-9)


def test_score_all_without_and_with_source_probs():
    informative, _, labels = blobs(n=90)
    out = score_all(informative, labels)
    assert list(out) == list(SCORES)
    assert out["leep"] is None and out["nce"] is None
    assert all(isinstance(out[name], float) for name in FEATURE_SCORES)
    probs = np.full((90, 4), 0.25)
    assert score_all(informative, labels, probs, scores=["nce", "logme"]) == {
        "nce": pytest.approx(-math.log(3)), "logme": pytest.approx(out["logme"])}
    with pytest.raises(ValueError, match="did you mean 'logme'"):
        score_all(informative, labels, scores=["logm"])


def test_registry_documents_each_score():
    assert set(SCORES) == {"logme", "hscore", "transrate", "leep", "nce", "knn",
                           "linear_probe"}
    for spec in SCORES.values():
        assert spec.description and spec.citation
        assert spec.needs_source == (spec.name in {"leep", "nce"})


@pytest.mark.parametrize("name", list(SCORES))
def test_bad_input_is_a_fix_it_error(name):
    spec = SCORES[name]
    x = np.random.default_rng(0).normal(size=(10, 3))
    if spec.needs_source:
        x = np.full((10, 3), 1 / 3)
    labels = np.arange(10) % 2
    with pytest.raises(ValueError, match="at least 2 classes"):
        spec.function(x, np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="one label per row"):
        spec.function(x, labels[:9])
    with pytest.raises(ValueError, match="integer"):
        spec.function(x, labels.astype(float))
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(DataError, match="NaN|finite"):  # a DataError: the CLI's user error
        spec.function(bad, labels)
    bad[4, 1] = np.inf
    with pytest.raises(ValueError, match="NaN|finite"):
        spec.function(bad, labels)


def test_logits_are_refused_as_source_probs():
    with pytest.raises(ValueError, match="softmax"):
        leep(np.log(THETA), Y6)
