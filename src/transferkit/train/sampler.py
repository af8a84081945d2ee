"""Length-bucketed, seeded batching: similar lengths share a batch, so padding stays small,
while the order stays random enough to train well. Deterministic in (seed, epoch), which is
what makes exact resume possible: a restarted run rebuilds the same batches and skips the ones
already done."""

from __future__ import annotations

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
