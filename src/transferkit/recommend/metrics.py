"""Ranking metrics per user, per segment (warm / cold items), with bootstrap intervals.

For each user the candidates are the segment's items the user did not interact with in
training; the relevant ones are the user's held-out interactions in that segment.

* Recall@K: relevant items in the top K / relevant items.
* NDCG@K: DCG of the top K (gain 1 per relevant item, discount 1/log2(rank + 1)) over the
  DCG of a perfect top K (min(K, relevant) relevant items first).
* AUC: the chance that a random relevant candidate scores above a random other one, ties
  counting one half (so a model that scores every candidate alike gets exactly 0.5).
* Coverage@K: the share of the segment's items that are in at least one user's top K.

Equal scores are ordered by a seeded random key drawn afresh for each user, not by item
index: an ID-only model gives every cold item the same score, and neither the file's item
order (older films first) nor one shared draw (the same lucky ten items for everybody) may
decide its ranking. A model that scores all candidates alike is then exactly chance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

KS = (10, 20)


def user_metrics(scores: np.ndarray, relevant: np.ndarray, tie_key: np.ndarray,
                 ks: tuple[int, ...] = KS) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of one user's ranking of its candidates, and the order (best first).

    ``scores`` and ``relevant`` (bool) are per candidate; ``tie_key`` orders equal scores."""
    order = np.lexsort((tie_key, -scores))
    ranked = relevant[order]
    n_rel = int(relevant.sum())
    out: dict[str, float] = {}
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    for k in ks:
        top = ranked[:k]
        out[f"recall@{k}"] = float(top.sum() / n_rel)
        ideal = discounts[:min(k, n_rel)].sum()
        out[f"ndcg@{k}"] = float((top * discounts[:len(top)]).sum() / ideal)
    n_neg = len(scores) - n_rel
    if n_neg > 0:
        ranks = rankdata(scores)  # average ranks: ties count one half
        out["auc"] = float((ranks[relevant].sum() - n_rel * (n_rel + 1) / 2) / (n_rel * n_neg))
    else:
        out["auc"] = float("nan")
    return out, order


@dataclass
class SegmentResult:
    """Per-user values of each metric, and the items some user saw in a top K."""

    users: np.ndarray
    values: dict[str, np.ndarray]
    coverage: dict[str, float] = field(default_factory=dict)

    def means(self) -> dict[str, float]:
        out = {k: float(np.nanmean(v)) if len(v) else float("nan")
               for k, v in self.values.items()}
        return {**out, **self.coverage}


def evaluate_segment(scores: np.ndarray, test_users: np.ndarray, test_items: np.ndarray,
                     segment_items: np.ndarray, seen: list[np.ndarray], *, seed: int,
                     ks: tuple[int, ...] = KS) -> SegmentResult:
    """Score matrix ``[users, items]`` against held-out ``(test_users, test_items)`` pairs.

    ``segment_items``: the candidate items (warm or cold); ``seen[u]``: user ``u``'s training
    items, never candidates."""
    rng = np.random.default_rng(seed)
    in_segment = np.zeros(scores.shape[1], dtype=bool)
    in_segment[segment_items] = True
    order = np.argsort(test_users, kind="stable")
    users_sorted, items_sorted = test_users[order], test_items[order]
    starts = np.flatnonzero(np.r_[True, np.diff(users_sorted) != 0]) if len(order) else []
    ends = np.r_[starts[1:], len(order)] if len(order) else []
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")] + ["auc"]
    values: dict[str, list[float]] = {n: [] for n in names}
    users = []
    top_by_k = {k: np.zeros(scores.shape[1], dtype=bool) for k in ks}
    for s, e in zip(starts, ends, strict=True):
        u = int(users_sorted[s])
        candidates = in_segment.copy()
        candidates[seen[u]] = False
        cand = np.flatnonzero(candidates)
        relevant = np.isin(cand, items_sorted[s:e])
        if not relevant.any():
            continue
        m, ranked = user_metrics(scores[u, cand], relevant, rng.random(len(cand)), ks)
        for n in names:
            values[n].append(m[n])
        for k in ks:
            top_by_k[k][cand[ranked[:k]]] = True
        users.append(u)
    coverage = {f"coverage@{k}": float(top_by_k[k][segment_items].mean()) for k in ks}
    return SegmentResult(np.array(users, dtype=np.int64),
                         {n: np.array(v) for n, v in values.items()}, coverage)


def bootstrap_ci(values: np.ndarray, *, seed: int, n_boot: int = 1000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean over users, resampling users with replacement."""
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def summarise(result: SegmentResult, *, seed: int) -> dict[str, dict[str, float] | int]:
    """``{metric: {mean, lo, hi}}`` (coverage has no interval: it is not a per-user value)."""
    out: dict[str, dict[str, float] | int] = {"users": len(result.users)}
    for name, v in result.values.items():
        lo, hi = bootstrap_ci(v, seed=seed)
        out[name] = {"mean": float(np.nanmean(v)) if len(v) else float("nan"),
                     "lo": lo, "hi": hi}
    for name, v in result.coverage.items():
        out[name] = {"mean": v, "lo": float("nan"), "hi": float("nan")}
    return out
