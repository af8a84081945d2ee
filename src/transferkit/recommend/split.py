"""The evaluation split that separates warm from cold items.

A seeded share of the items is held out *entirely* (cold): every interaction with them is a
test interaction, so no model can have seen them. Of the interactions on the other (warm)
items, each user's last ``test_share`` (by timestamp when the file has one, else a seeded
random choice) is held out as the warm test. The same function, applied to the training
rows, makes the validation split that tuning uses, so the test is never looked at.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError


@dataclass
class Split:
    """Row indices of the interactions in each part, and which items are cold."""

    train: np.ndarray
    warm_test: np.ndarray
    cold_test: np.ndarray
    cold_items: np.ndarray  # item indices held out entirely
    temporal: bool  # the warm holdout took each user's latest interactions

    def summary(self, n_users: int, n_items: int) -> dict[str, int | bool]:
        return {"train": len(self.train), "warm_test": len(self.warm_test),
                "cold_test": len(self.cold_test), "cold_items": len(self.cold_items),
                "items": n_items, "users": n_users, "temporal": self.temporal}


def split_rows(users: np.ndarray, items: np.ndarray, times: np.ndarray | None, *,
               cold_share: float, test_share: float, seed: int,
               rows: np.ndarray | None = None) -> Split:
    """Split ``rows`` (default: all) of the interactions ``(users, items, times)``.

    Cold items are drawn among the items that occur in ``rows`` (an item nobody touched has
    nothing to test). A user keeps at least one warm training interaction: one with a single
    warm interaction keeps it in training."""
    if not 0 <= cold_share < 1 or not 0 <= test_share < 1:
        raise DataError(f"--cold-share and --test-share are fractions in [0, 1); got "
                        f"{cold_share} and {test_share}.")
    rng = np.random.default_rng(seed)
    rows = np.arange(len(users)) if rows is None else np.asarray(rows)
    present = np.unique(items[rows])
    n_cold = int(round(cold_share * len(present)))
    if cold_share > 0 and (n_cold == 0 or n_cold == len(present)):
        raise DataError(f"Holding out {cold_share:.0%} of {len(present)} items leaves "
                        f"{'no cold' if n_cold == 0 else 'no warm'} items. Use more items or "
                        "another --cold-share.")
    cold_items = np.sort(rng.choice(present, size=n_cold, replace=False))
    is_cold = np.isin(items[rows], cold_items)
    cold_rows, warm_rows = rows[is_cold], rows[~is_cold]

    # Per user: order its warm rows (time, then a random key so ties and timeless data are
    # shuffled, seeded), hold out the last share.
    key = rng.random(len(warm_rows))
    order_by = (key, times[warm_rows]) if times is not None else (key,)
    order = np.lexsort((*order_by, users[warm_rows]))  # last key sorts first: user
    ordered = warm_rows[order]
    starts = np.flatnonzero(np.r_[True, np.diff(users[ordered]) != 0])
    ends = np.r_[starts[1:], len(ordered)]
    test_mask = np.zeros(len(ordered), dtype=bool)
    for s, e in zip(starts, ends, strict=True):
        n = e - s
        n_test = 0 if n < 2 or test_share == 0 else min(n - 1, max(1, round(test_share * n)))
        test_mask[e - n_test:e] = True
    return Split(train=np.sort(ordered[~test_mask]), warm_test=np.sort(ordered[test_mask]),
                 cold_test=np.sort(cold_rows), cold_items=cold_items,
                 temporal=times is not None)
