"""Which examples form each batch of the training loop.

``bucketed_batches`` (the default): length-bucketed, seeded batching: similar lengths share a
batch, so padding stays small, while the order stays random enough to train well.
``BalancedBatches`` (contrastive tuning) and ``Episodes`` (prototypical networks) are the
loop's ``sampler`` hook. All are deterministic in (seed, epoch), which is what makes exact
resume possible: a restarted run rebuilds the same batches and skips the ones already done."""

from __future__ import annotations

from typing import Any

import numpy as np


def bucketed_batches(
    lengths: list[int] | np.ndarray, batch_size: int, seed: int, epoch: int,
    bucket_factor: int = 50, bucketed: bool = True,
) -> list[list[int]]:
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not bucketed:
        return [order[s:s + batch_size].tolist() for s in range(0, len(order), batch_size)]
    lengths = np.asarray(lengths)
    mega = batch_size * bucket_factor
    batches: list[list[int]] = []
    for s in range(0, len(order), mega):
        chunk = order[s:s + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class BalancedBatches:
    """Class-balanced batches drawn per step, for contrastive objectives.

    Each batch holds ``per_group`` examples from each of several groups (classes, or label
    sets for multi-label data), so every batch has positives *and* negatives. Groups are
    visited in shuffled rounds and each group's examples come from its own shuffled queue,
    refilled only when empty: every example is used before any is reused, and memory is the
    queues plus one batch, O(n + batch), never the O(n^2) pairs (the loss forms pairs inside
    a batch). ``views`` > 1 repeats each drawn index, so image augmentation yields several
    views of one example. Deterministic in (seed, epoch) for exact resume: an epoch's batches
    continue the queues where the previous epoch left them.
    """

    def __init__(self, groups: np.ndarray, batch_size: int, steps_per_epoch: int, seed: int,
                 per_group: int | None = None, views: int = 1) -> None:
        self.groups = np.asarray(groups)
        self.members = [np.flatnonzero(self.groups == g) for g in np.unique(self.groups)]
        n_groups = len(self.members)
        if per_group is None:  # few groups: fill the batch with them; many: 4 of each
            per_group = max(2, batch_size // n_groups) if n_groups * 2 <= batch_size \
                else max(2, min(4, batch_size // 2))
        self.per_group = per_group
        self.groups_per_batch = max(1, min(n_groups, batch_size // per_group))
        self.steps_per_epoch, self.seed, self.views = steps_per_epoch, seed, views
        self._state: tuple[int, Any] | None = None  # (next epoch, generator state)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _fresh(self) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, 7919])
        return {"rng": rng, "queues": [list(rng.permutation(m)) for m in self.members],
                "order": []}

    def __call__(self, epoch: int) -> list[list[int]]:
        import copy

        if self._state is None or self._state[0] > epoch:
            state, at = self._fresh(), 0
        else:
            at, state = self._state[0], copy.deepcopy(self._state[1])
        while at <= epoch:
            batches = [self._draw(state) for _ in range(self.steps_per_epoch)]
            at += 1
        self._state = (at, copy.deepcopy(state))
        return batches

    def _draw(self, state: dict[str, Any]) -> list[int]:
        rng, queues, order = state["rng"], state["queues"], state["order"]
        chosen: list[int] = []
        deferred: list[int] = []  # drawn again across a round boundary: first in the next batch
        while len(chosen) < self.groups_per_batch:
            if not order:
                order.extend(rng.permutation(len(self.members)).tolist())
            g = order.pop()
            (deferred if g in chosen else chosen).append(g)
        order.extend(deferred)
        batch: list[int] = []
        for g in chosen:
            take = min(self.per_group, len(self.members[g]))
            for _ in range(take):
                if not queues[g]:
                    queues[g].extend(rng.permutation(self.members[g]).tolist())
                batch.append(int(queues[g].pop()))
        return [i for i in batch for _ in range(self.views)]


class Episodes:
    """N-way K-shot episodes with Q queries per class, for prototypical networks.

    An episode is one batch: the K support examples of each of the N classes (class-major),
    then the Q queries of each class in the same class order, which is all the prototype loss
    needs to know. Deterministic in (seed, epoch).
    """

    def __init__(self, labels: np.ndarray, n_way: int, k_shot: int, n_query: int,
                 episodes: int, seed: int) -> None:
        labels = np.asarray(labels)
        need = k_shot + n_query
        self.members = [m for g in np.unique(labels) if len(m := np.flatnonzero(labels == g))
                        >= need]
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.episodes, self.seed = episodes, seed

    def __len__(self) -> int:
        return self.episodes

    def __call__(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch, 104729])
        out = []
        for _ in range(self.episodes):
            classes = rng.choice(len(self.members), self.n_way, replace=False)
            drawn = [rng.choice(self.members[c], self.k_shot + self.n_query, replace=False)
                     for c in classes]
            support = [int(i) for d in drawn for i in d[:self.k_shot]]
            query = [int(i) for d in drawn for i in d[self.k_shot:]]
            out.append(support + query)
        return out
