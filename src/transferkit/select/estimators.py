"""Transferability estimators: how well a frozen backbone's features suit a labelled task.

Each score is computed from the backbone's frozen features (``features [N, D]``) or its
pretraining classifier's softmax output (``source_probs [N, Cs]``) on the target examples and
their labels (``labels [N]``, integers), *before* any fine-tuning, so that candidate backbones
can be ranked for the price of one forward pass each. Every score is a float where **higher
means better transfer**; scores of different kinds are not on a common scale, so compare one
score across backbones, never two scores with each other.

The estimators follow their papers and official code (differences are named in each
docstring). All arithmetic is float64 whatever the input dtype: float16 features overflow a
Gram matrix and float32 loses the small eigenvalues the log-determinants depend on.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.stats

from ..errors import DataError


class TransferabilityInputError(DataError, ValueError):
    """Features, labels or source probabilities a score cannot be computed from.

    A ``ValueError`` for numpy-style callers and a ``DataError`` so that the CLI prints it as a
    user error (what is wrong and how to fix it, no traceback)."""


# --- input checks


def label_codes(labels: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Class indices 0..C-1 of the classes present (a label value with no example is no class)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise TransferabilityInputError(
            f"labels must be a 1-D integer array, got shape {labels.shape} and dtype "
            f"{labels.dtype}; map class names to 0..C-1 first (e.g. with "
            "sklearn.preprocessing.LabelEncoder).")
    if len(labels) != n:
        raise TransferabilityInputError(
            f"labels has {len(labels)} entries but there are {n} feature rows; pass one label "
            "per row, in the same order.")
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise TransferabilityInputError(
            f"labels hold {len(classes)} class(es) ({classes.tolist()}); transferability needs "
            "at least 2 classes: score on a sample that includes several classes.")
    return codes, len(classes)


def check_features(features: np.ndarray, labels: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Features as float64 ``[N, D]`` and labels as class codes, or a fix-it error."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise TransferabilityInputError(
            f"features must be a 2-D array [examples, dimensions], got shape {f.shape}; "
            "flatten or pool each example's features into one vector.")
    bad = ~np.isfinite(f).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise TransferabilityInputError(
            f"features hold NaN or infinite values in {len(rows)} row(s) (first: "
            f"{rows[:5].tolist()}); drop those examples, or extract features in float32 if "
            "float16 overflowed.")
    codes, n_classes = label_codes(labels, len(f))
    return f, codes, n_classes


def _check_source(source_probs: np.ndarray, labels: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """Source-classifier probabilities as float64 ``[N, Cs]`` rows summing to 1."""
    p = np.asarray(source_probs, dtype=np.float64)
    if p.ndim != 2 or not np.isfinite(p).all():
        raise TransferabilityInputError(
            f"source_probs must be a finite 2-D array [examples, source classes], got shape "
            f"{p.shape}; pass the softmax of the backbone's pretraining classifier.")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-2):
        raise TransferabilityInputError(
            "source_probs rows must be probabilities (non-negative, summing to 1); these look "
            "like logits: apply a softmax over the source classes first.")
    codes, n_classes = label_codes(labels, len(p))
    return p, codes, n_classes


def _onehot(codes: np.ndarray, n_classes: int) -> scipy.sparse.csr_matrix:
    """Sparse ``[C, N]`` indicator: ``_onehot(codes, C) @ x`` sums the rows of ``x`` per class."""
    n = len(codes)
    return scipy.sparse.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(n_classes, n))


# --- feature scores


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the maximised log marginal likelihood (evidence) of a Bayesian linear model on the
    features, per example, averaged over one-vs-rest targets.

    You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
    Learning", ICML 2021; the fixed-point evidence maximisation on the SVD of ``F`` is from
    the same authors' "Ranking and Tuning Pre-trained Models" (JMLR 2022) and
    ``LogME._fit_fixed_point`` in github.com/thuml/LogME.

    For each class ``c``, ``y_c = [label == c]`` is modelled as ``y = F w + noise`` with prior
    ``w ~ N(0, I/alpha)`` and noise precision ``beta``; alpha and beta are set by MacKay's
    fixed-point updates (at most 11, stopping when alpha/beta changes by <= 1e-3 relatively, as
    in the reference). The score is the mean over classes of ``log p(y_c | F) / N``: a log
    likelihood per example (nats), typically between about -1 and 2; higher means the labels
    are more linearly predictable from the features with less model complexity.

    One deviation from the reference code: when ``F`` has rank ``k < D`` (always when
    ``N <= D``) the reference's ``log|A|`` sums only the ``k`` non-zero singular directions
    and so adds a spurious ``(D - k) / (2N) * log(alpha)``; here ``log|A|`` is the full
    ``D x D`` log-determinant, as in the paper and the ICML code (``each_evidence``), so the
    value is the exact evidence. With ``N > D`` and full-rank features both agree.
    """
    f, codes, n_classes = check_features(features, labels)
    n, d = f.shape
    onehot = _onehot(codes, n_classes)
    if n > d:  # eigendecomposition of the D x D Gram matrix is cheaper than an SVD of F
        eigvals, v = np.linalg.eigh(f.T @ f)
        s = np.sqrt(np.clip(eigvals, 0.0, None))
        keep = s > 1e-10  # the rank of F, as in the reference's truncated_svd
        s, v = s[keep], v[:, keep]
        proj = (onehot @ f) @ v / s  # [C, k]: rows y_c^T U, with U = F V / s never formed
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        proj = onehot @ u
    sigma = s**2
    k = len(sigma)
    counts = np.bincount(codes, minlength=n_classes)
    evidences = []
    for x, n_c in zip(proj, counts, strict=True):
        x2 = x**2
        res_x2 = n_c - x2.sum()  # |y|^2 - |U^T y|^2: the part of y outside F's column space
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / (t + sigma) ** 2).sum()
            res2 = (x2 / (1 + sigma / t) ** 2).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        log_det_a = np.log(alpha + beta * sigma).sum() + (d - k) * np.log(alpha)
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det_a
                    - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def hscore(features: np.ndarray, labels: np.ndarray, shrinkage: bool = True) -> float:
    """H-score: how much of the features' variance lies between the class means.

    Bao, Li, Huang, Zhang, Zheng, Zamir, Guibas, "An Information-Theoretic Approach to
    Transferability in Task Transfer Learning", ICIP 2019:
    ``H = tr(cov(f)^-1 cov(E[f | y]))``, the asymptotic error exponent of a linear classifier
    on the features (a sum of Fisher-discriminant ratios). It is >= 0 and at most ``C - 1``
    (the rank of the between-class covariance); higher means better separated classes.

    ``shrinkage=True`` (the default) is the regularised version of Ibrahim, Ponomareva,
    Mazumder, "Newer is not always better: Rethinking transferability metrics, their
    peculiarities, stability and performance", ECML-PKDD 2022:
    ``tr(cov_a(f)^-1 (1 - a) cov(E[f | y]))`` with ``cov_a = (1 - a) cov(f) + a mu I`` the
    Ledoit-Wolf estimate of the (centred) features' covariance (closed form; the same
    intensity ``a`` as ``sklearn.covariance.ledoit_wolf_shrinkage``). Without it the inverse of a
    D x D covariance estimated from few examples is dominated by noise directions and the
    score grows with D rather than with class separation. ``shrinkage=False`` uses the
    pseudo-inverse of the plain covariance, as the original code does. Both covariances are
    normalised by N (the reference code mixes N for Ledoit-Wolf with N - 1 for the
    between-class one, a factor (N - 1) / N).
    """
    f, codes, n_classes = check_features(features, labels)
    n, d = f.shape
    f = f - f.mean(axis=0)
    counts = np.bincount(codes, minlength=n_classes)
    means = (_onehot(codes, n_classes) @ f) / counts[:, None]  # class means, centred
    # Everything below lives in the eigenbasis of cov = F^T F / n, from the smaller of the two
    # Gram matrices (N x N when N < D): the class means lie in F's row space, so no D x D
    # matrix is formed or inverted and the cost is O(N D min(N, D)).
    if n < d:
        lam, u = np.linalg.eigh(f @ f.T)
        lam = np.clip(lam, 0.0, None)
        keep = lam > lam.max() * max(n, d) * np.finfo(float).eps  # pinv's rank cut-off
        lam, u = lam[keep], u[:, keep]
        coords = (_onehot(codes, n_classes) @ u) * np.sqrt(lam) / counts[:, None]
    else:
        lam, v = np.linalg.eigh(f.T @ f)
        lam = np.clip(lam, 0.0, None)
        keep = lam > lam.max() * max(n, d) * np.finfo(float).eps
        lam, v = lam[keep], v[:, keep]
        coords = means @ v  # [C, k]: the class means in the eigenbasis
    lam = lam / n  # the non-zero eigenvalues of cov; the other D - k are 0
    a = 0.0  # the shrinkage intensity
    mu = lam.sum() / d
    if shrinkage:  # Ledoit, Wolf, "A well-conditioned estimator for large-dimensional covariance
        # matrices", J. Multivariate Analysis 2004, in closed form from the eigenvalues
        target_dist = np.sum((lam - mu) ** 2) + (d - len(lam)) * mu**2  # |cov - mu I|_F^2
        sample_dist = (np.sum(np.sum(f**2, axis=1) ** 2) / n - np.sum(lam**2)) / n
        a = min(sample_dist, target_dist) / target_dist if target_dist > 0 else 0.0
    # tr(cov_a^-1 cov(g)) with cov(g) = sum_c (n_c / n) mu_c mu_c^T and cov_a^-1 diagonal here
    between = np.sum((counts / n)[:, None] * coords**2 / ((1 - a) * lam + a * mu))
    return float((1 - a) * between)


def transrate(features: np.ndarray, labels: np.ndarray, eps: float = 1e-4) -> float:
    """TransRate: the mutual information between features and labels, measured by coding rate.

    Huang, Huang, Rong, Yang, Wei, "Frustratingly Easy Transferability Estimation", ICML 2022
    (github.com/Long-Kai/TransRate). ``TrR = R(Z) - sum_c (n_c / n) R(Z_c)`` with the coding
    rate ``R(Z) = 0.5 logdet(I + Z^T Z / (n eps))`` of the centred features ``Z`` and of each
    class's rows ``Z_c`` (``n`` = the rows coded; ``Z_c`` is not re-centred). It estimates
    ``H(Z) - H(Z | Y)`` in nats: higher means the classes occupy more distinct parts of
    feature space. ``eps`` plays the paper's ``eps^2 / d`` (the official code's convention);
    the score depends on the features' scale relative to ``eps``.

    The class weights ``n_c / n`` are the paper's definition of ``R(Z | Y)`` and what the
    official evaluation code (``extract_result_utils.process_transrate_logs``) computes; the
    short snippet in the paper's appendix weights every class ``1 / K`` instead. The two
    agree for balanced classes.
    """
    z, codes, n_classes = check_features(features, labels)
    z = z - z.mean(axis=0)

    def coding_rate(zc: np.ndarray) -> float:
        # logdet(I_d + Z^T Z a) == logdet(I_n + Z Z^T a): take the smaller Gram matrix
        gram = zc.T @ zc if zc.shape[1] <= zc.shape[0] else zc @ zc.T
        _, logdet = np.linalg.slogdet(np.eye(len(gram)) + gram / (len(zc) * eps))
        return 0.5 * logdet

    rz_given_y = sum(np.mean(codes == c) * coding_rate(z[codes == c]) for c in range(n_classes))
    return float(coding_rate(z) - rz_given_y)


# --- source-classifier scores


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: the log-likelihood of the target labels under the source classifier's output
    pushed through the empirical conditional ``P(y | z)`` of target on source labels.

    Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of
    Learned Representations", ICML 2020. With ``theta(x)`` the source softmax,
    ``P(y, z) = mean_i theta(x_i)_z [y_i = y]``, ``P(y | z) = P(y, z) / P(z)`` and
    ``LEEP = mean_i log sum_z P(y_i | z) theta(x_i)_z``: an average log-probability, so <= 0;
    nearer 0 means the pretraining classes predict the target classes well.
    """
    p, codes, n_classes = _check_source(source_probs, labels)
    joint = _onehot(codes, n_classes) @ p / len(p)  # [C, Cs]
    marginal = joint.sum(axis=0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = np.einsum("nz,nz->n", p, conditional[codes])  # sum_z P(y_i | z) theta(x_i)_z
    return float(np.mean(np.log(eep)))


def nce(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """NCE: the negative conditional entropy ``-H(Y | Z)`` of the target label given the
    source classifier's hard prediction ``Z = argmax theta(x)``, from the empirical joint.

    Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification Tasks",
    ICCV 2019. In nats, <= 0; 0 means the predicted source class determines the target class.
    """
    p, codes, n_classes = _check_source(source_probs, labels)
    z = p.argmax(axis=1)
    joint = np.zeros((n_classes, p.shape[1]))
    np.add.at(joint, (codes, z), 1.0)
    joint = joint[:, joint.sum(axis=0) > 0]
    p_z = joint.sum(axis=0) / len(z)
    return float(-(p_z * scipy.stats.entropy(joint, axis=0)).sum())
