"""The Trainer's data: examples with their targets, and how a list of indices becomes a batch.

The loop itself never looks inside an example, so one loop serves a backbone's raw inputs
(``BackboneBatches``: text, images, audio through the backbone's ``prepare``/``collate``,
optionally with its frozen lower layers replayed from a cache) and tensors that are ready
as they are (``TensorBatches``: cached features for a probe's head, image arrays for a
small CNN).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from .sampler import bucketed_batches


class Batches:
    """Examples and their targets: class indices ``[N]``, or a 0/1 matrix ``[N, K]`` for
    multi-label data. ``modality`` "image" lets the Trainer apply mixup/cutmix to the batch's
    ``pixel_values``."""

    modality: str | None = None

    def __init__(self, labels: np.ndarray, n_classes: int | None = None) -> None:
        self.labels = np.asarray(labels)
        if n_classes is None:  # the classes the targets show; pass it when some are absent
            n_classes = self.labels.shape[1] if self.labels.ndim == 2 else \
                int(self.labels.max(initial=0)) + 1
        self.n_classes = n_classes

    def __len__(self) -> int:
        return len(self.labels)

    def order(self, epoch: int, batch_size: int, seed: int) -> list[list[int]]:
        """The epoch's batches as lists of indices; deterministic in (seed, epoch), which is
        what exact resume relies on."""
        return bucketed_batches(np.zeros(len(self)), batch_size, seed, epoch, bucketed=False)

    def collate(self, idx: list[int], augment: bool = False) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for examples ``idx`` (``augment``: a training batch)."""
        raise NotImplementedError

    def start(self, *, device: torch.device, precision: str, batch_size: int) -> dict[str, Any]:
        """Work done once before training (a prefix cache); what it cost, for the result."""
        return {"prefix_cache_seconds": 0.0, "prefix_cached_layers": 0}

    def replay(self, idx: list[int]) -> AbstractContextManager[None]:
        """Around a training step on ``idx``: where cached work stands in for computing it."""
        return nullcontext()

    def stop(self) -> None:
        """Undo what ``start`` changed on the model."""


class BackboneBatches(Batches):
    """A backbone's raw inputs, prepared once (tokenised, decoded) and collated per batch.

    ``backbone`` only needs ``prepare``, ``collate``, ``cost`` and ``modality`` (pretraining
    objectives pass their own input side). ``prefix``: the frozen lower layers whose outputs
    are computed once and replayed during training (``train/prefix.py``), kept in ``cache``
    when one is given. The default order buckets examples of similar ``cost`` (length)."""

    def __init__(self, backbone: Any, inputs: list[Any], labels: np.ndarray,
                 n_classes: int | None = None, *, prefix: list[nn.Module] | None = None,
                 cache: Any = None) -> None:
        super().__init__(labels, n_classes)
        self.backbone, self.modality = backbone, backbone.modality
        self.prepared = backbone.prepare(inputs)
        self.lengths = [backbone.cost(p) for p in self.prepared]
        self.prefix_layers, self.cache = prefix or [], cache
        self.prefix: Any = None

    def order(self, epoch: int, batch_size: int, seed: int) -> list[list[int]]:
        return bucketed_batches(self.lengths, batch_size, seed, epoch)

    def collate(self, idx: list[int], augment: bool = False) -> dict[str, torch.Tensor]:
        return self.backbone.collate([self.prepared[i] for i in idx], augment=augment)

    def start(self, *, device: torch.device, precision: str, batch_size: int) -> dict[str, Any]:
        if not self.prefix_layers:
            return super().start(device=device, precision=precision, batch_size=batch_size)
        from .prefix import build_prefix_cache

        t0 = time.perf_counter()
        self.backbone.to(device)
        self.prefix = build_prefix_cache(
            self.backbone, self.prefix_layers, self.prepared, batch_size=batch_size,
            device=device, precision=precision, cache=self.cache,
            key_parts=[self.backbone.fingerprint, str(len(self.prefix_layers)), precision])
        return {"prefix_cache_seconds": time.perf_counter() - t0,
                "prefix_cached_layers": len(self.prefix_layers)}

    @contextmanager
    def _replaying(self, idx: list[int]):
        self.prefix.activate(idx)
        try:
            yield
        finally:
            self.prefix.deactivate()  # evaluation between steps must compute, not replay

    def replay(self, idx: list[int]) -> AbstractContextManager[None]:
        return self._replaying(idx) if self.prefix is not None else nullcontext()

    def stop(self) -> None:
        if self.prefix is not None:
            self.prefix.remove()
            self.prefix = None


class TensorBatches(Batches):
    """Rows of a tensor that is the model's input as it is: cached features, image arrays.

    The batch is ``{key: rows}``; the default key ``input`` is the name of the argument of
    ``nn.Linear`` and ``nn.Sequential``, so plain torch modules train without a wrapper."""

    def __init__(self, inputs: np.ndarray | torch.Tensor, labels: np.ndarray,
                 n_classes: int | None = None, *, key: str = "input") -> None:
        super().__init__(labels, n_classes)
        self.inputs = torch.as_tensor(inputs)
        self.key = key

    def collate(self, idx: list[int], augment: bool = False) -> dict[str, torch.Tensor]:
        return {self.key: self.inputs[torch.as_tensor(idx, dtype=torch.long)]}
