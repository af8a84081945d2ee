"""The recommenders, each reduced to the same fitted form: ``score = users @ items.T + bias``.

One form for every model means one scoring path for evaluation, ``predict`` and the server
(so predict reproduces the evaluation's scores exactly), and one way to save a model
(safetensors arrays). Collaborative filtering is ``implicit``'s (ALS, BPR), not ours; what is
ours is the content profile and the map that places items with no interactions (cold, or
added at predict time) in the factor space from their pretrained text embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

MODELS = ("popularity", "als", "bpr", "content", "hybrid")
DEFAULT_MODELS = ("popularity", "als", "content", "hybrid")
MAP_KINDS = ("ridge", "knn")


@dataclass
class Vectors:
    """A fitted model: user vectors, item vectors and an item bias (float32)."""

    users: np.ndarray  # [n_users, d]
    items: np.ndarray  # [n_items, d]
    bias: np.ndarray  # [n_items]
    params: dict[str, Any] = field(default_factory=dict)  # what was fitted, for the report

    def scores(self, users: np.ndarray | None = None) -> np.ndarray:
        u = self.users if users is None else self.users[users]
        return (u @ self.items.T + self.bias).astype(np.float32)


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                       weights: np.ndarray | None = None) -> sp.csr_matrix:
    data = np.ones(len(users), dtype=np.float32) if weights is None else weights
    return sp.csr_matrix((data.astype(np.float32), (users, items)), shape=(n_users, n_items))


def fit_popularity(matrix: sp.csr_matrix) -> Vectors:
    """Items by how many users took them (log-scaled; the order is what matters)."""
    counts = np.asarray((matrix > 0).sum(axis=0)).ravel()
    n_users, n_items = matrix.shape
    return Vectors(np.zeros((n_users, 0), np.float32), np.zeros((n_items, 0), np.float32),
                   np.log1p(counts).astype(np.float32))


def _implicit_run(make: Any, matrix: sp.csr_matrix) -> Any:
    """Make and fit an ``implicit`` model with BLAS kept to one thread (implicit parallelises
    itself, and warns, when the model is made, that a threaded BLAS under it is slower)."""
    import warnings

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        # implicit warns about a threaded BLAS by reading the library's configured count,
        # not the limit in force here: the limit is what matters, so the warning is noise
        warnings.filterwarnings("ignore", message=".*configured to use", category=RuntimeWarning)
        model = make()
        model.fit(matrix, show_progress=False)
    return model


def fit_als(matrix: sp.csr_matrix, *, factors: int = 64, regularization: float = 0.1,
            alpha: float = 1.0, iterations: int = 15, seed: int = 0, threads: int = 1
            ) -> Vectors:
    """``implicit``'s ALS on binary interactions (confidence ``1 + alpha``). An item with no
    interactions gets a zero vector: ALS knows nothing of it."""
    from implicit.cpu.als import AlternatingLeastSquares

    model = _implicit_run(lambda: AlternatingLeastSquares(
        factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
        random_state=seed, num_threads=threads, calculate_training_loss=False), matrix)
    items = np.asarray(model.item_factors, dtype=np.float32)
    items[np.asarray(matrix.getnnz(axis=0)) == 0] = 0.0
    params = {"factors": factors, "regularization": regularization, "alpha": alpha,
              "iterations": iterations}
    return Vectors(np.asarray(model.user_factors, dtype=np.float32), items,
                   np.zeros(matrix.shape[1], np.float32), params)


def fit_bpr(matrix: sp.csr_matrix, *, factors: int = 64, learning_rate: float = 0.01,
            regularization: float = 0.01, iterations: int = 100, seed: int = 0,
            threads: int = 1) -> Vectors:
    """``implicit``'s BPR; its last factor is an item bias (users hold a constant 1 there),
    which a cold item, never sampled, does not have: its row is zeroed like ALS's."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    model = _implicit_run(lambda: BayesianPersonalizedRanking(
        factors=factors, learning_rate=learning_rate, regularization=regularization,
        iterations=iterations, random_state=seed, num_threads=threads), matrix)
    items = np.asarray(model.item_factors, dtype=np.float32)
    items[np.asarray(matrix.getnnz(axis=0)) == 0] = 0.0
    params = {"factors": factors, "learning_rate": learning_rate,
              "regularization": regularization, "iterations": iterations}
    return Vectors(np.asarray(model.user_factors, dtype=np.float32), items,
                   np.zeros(matrix.shape[1], np.float32), params)


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def content_space(embeddings: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Item embeddings centred on the catalogue's mean, then unit length. Sentence encoders
    put every text in a narrow cone; without centring, a profile scores nearly every item
    alike and ranks by the cone's axis."""
    return normalise(embeddings - center)


def fit_content(matrix: sp.csr_matrix, embeddings: np.ndarray) -> Vectors:
    """Users as the (unit-length) sum of the embeddings of the items they took."""
    center = embeddings.mean(axis=0)
    items = content_space(embeddings, center)
    users = normalise(np.asarray((matrix > 0).astype(np.float32) @ items))
    return Vectors(users, items, np.zeros(len(items), np.float32),
                   {"center": center.astype(np.float32)})


# -- the text -> factor map (the hybrid's cold items) -----------------------------------------
@dataclass
class TextMap:
    """Places an item in the factor space from its text embedding alone.

    ``ridge``: a linear map fit on the warm items (embedding -> ALS item factors);
    ``knn``: the similarity-weighted mean of the factors of the ``k`` warm items nearest in
    text. Which one a run uses is chosen on the validation split (``tuning``)."""

    kind: str
    weight: np.ndarray | None = None  # ridge: [embed_dim, d]
    intercept: np.ndarray | None = None  # ridge: [d]
    k: int = 0  # knn
    anchors: np.ndarray | None = None  # knn: warm items' content-space embeddings
    anchor_factors: np.ndarray | None = None  # knn: their factors
    center: np.ndarray | None = None  # the content space's centre
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        x = content_space(embeddings, self.center)
        if self.kind == "ridge":
            return (x @ self.weight + self.intercept).astype(np.float32)
        sims = x @ self.anchors.T
        k = min(self.k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        w = np.maximum(np.take_along_axis(sims, top, axis=1), 0.0)
        w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
        return np.einsum("nk,nkd->nd", w, self.anchor_factors[top]).astype(np.float32)


def fit_text_map(embeddings: np.ndarray, factors: np.ndarray, warm: np.ndarray, *, kind: str,
                 alpha: float = 1.0, k: int = 20) -> TextMap:
    """Fit the map on the warm items (those with interactions, hence trained factors)."""
    from sklearn.linear_model import Ridge

    center = embeddings.mean(axis=0).astype(np.float32)
    x = content_space(embeddings[warm], center)
    if kind == "ridge":
        ridge = Ridge(alpha=alpha).fit(x, factors[warm])
        return TextMap("ridge", weight=ridge.coef_.T.astype(np.float32),
                       intercept=np.asarray(ridge.intercept_, np.float32), center=center,
                       params={"kind": kind, "alpha": alpha})
    return TextMap("knn", k=k, anchors=x, anchor_factors=factors[warm].astype(np.float32),
                   center=center, params={"kind": kind, "k": k})


def hybrid(als: Vectors, text_map: TextMap, embeddings: np.ndarray, cold: np.ndarray
           ) -> Vectors:
    """ALS's own factors where an item has interactions; the text map's for ``cold``."""
    items = als.items.copy()
    if len(cold):
        items[cold] = text_map(embeddings[cold])
    return Vectors(als.users, items, als.bias.copy(),
                   {**{f"als_{k}": v for k, v in als.params.items()}, **text_map.params})
