"""Length-bucketed batching: complete, seeded, and actually less padding."""

from __future__ import annotations

import numpy as np

from transferkit.train.sampler import bucketed_batches


def test_every_index_once_and_reproducible():
    lengths = np.random.default_rng(0).integers(3, 200, size=1003)
    a = bucketed_batches(lengths, 32, seed=1, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(1003))
    assert a == bucketed_batches(lengths, 32, seed=1, epoch=0)
    assert a != bucketed_batches(lengths, 32, seed=1, epoch=1)
    assert a != bucketed_batches(lengths, 32, seed=2, epoch=0)


def test_bucketing_cuts_padding():
    lengths = np.random.default_rng(0).integers(3, 200, size=2000)

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    bucketed = padded(bucketed_batches(lengths, 32, 0, 0))
    plain = padded(bucketed_batches(lengths, 32, 0, 0, bucketed=False))
    assert bucketed < 0.7 * plain
