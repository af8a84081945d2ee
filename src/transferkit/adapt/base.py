"""The strategy registry: every way of adapting a backbone plugs in here.

Callers only ever do ``get_strategy(name, options).fit(model, data, ctx)``; a new strategy
(fine-tuning, LoRA, few-shot) is a new registered class, never a change to a caller.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import did_you_mean
from ..data.examples import Dataset, Examples
from ..errors import ConfigError
from ..train.cache import ExtractionStats, FeatureCache, extract_features
from .model import TransferModel


@dataclass
class FitContext:
    """Run-wide settings every strategy honours."""

    seed: int = 0
    batch_size: int = 32
    precision: str = "auto"
    device: torch.device | None = None
    cache: FeatureCache | None = None
    progress: Any = None  # optional callable(stage: str, done: int, total: int)
    run_dir: Path | None = None  # where training logs go (the run folder being written)
    checkpoint_dir: Path | None = None  # where checkpoints go (outlives a killed run)
    resume: bool = False
    extraction: list[ExtractionStats] = field(default_factory=list)
    # per-example features by (backbone fingerprint, precision): lets a study serve any label
    # budget's subset from one extraction of the whole training set
    memo: dict[tuple[str, str], dict[bytes, np.ndarray]] | None = None

    def features(self, model: TransferModel, examples: Examples, stage: str) -> np.ndarray:
        """Backbone features of ``examples``, through the cache when one is configured."""
        if self.memo is not None:
            import hashlib

            from ..data.examples import _content_bytes

            table = self.memo.setdefault((model.backbone.fingerprint, self.precision), {})
            digests = [hashlib.sha1(_content_bytes(x)).digest() for x in examples.inputs]
            if digests and all(d in table for d in digests):
                self.extraction.append(ExtractionStats(n=len(digests), from_cache=True))
                return np.stack([table[d] for d in digests])
            feats = self._extract(model, examples, stage)
            table.update(zip(digests, feats, strict=True))
            return feats
        return self._extract(model, examples, stage)

    def _extract(self, model: TransferModel, examples: Examples, stage: str) -> np.ndarray:
        callback = None
        if self.progress is not None:
            def callback(done: int, total: int) -> None:
                self.progress(stage, done, total)
        feats, stats = extract_features(
            model.backbone, examples.inputs, batch_size=self.batch_size,
            precision=self.precision, device=self.device, cache=self.cache,
            data_fingerprint=examples.fingerprint(), progress=callback,
        )
        self.extraction.append(stats)
        return feats


class Strategy:
    """Adapts a :class:`TransferModel` to labelled data. Subclasses declare their options as
    keyword arguments of ``__init__`` with defaults, so configs are validated by signature."""

    name: ClassVar[str] = ""
    #: the whole backbone stays frozen, so its features can be cached and reused
    frozen_backbone: ClassVar[bool] = False
    #: its training budget is ``epochs`` (the study's --epochs reaches it); strategies with a
    #: budget of their own (contrastive passes, protonet episodes) keep their tuned defaults
    takes_epochs: ClassVar[bool] = False
    #: its head is made of class prototypes, so new classes can join it (predict --support)
    keeps_prototypes: ClassVar[bool] = False

    def fit(self, model: TransferModel, data: Dataset, ctx: FitContext) -> dict[str, Any]:
        """Train ``model`` in place; return facts worth reporting (chosen C, epochs, ...)."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {}


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(
            f"Unknown strategy '{name}'{did_you_mean(name, STRATEGIES)}. Available: "
            f"{', '.join(sorted(STRATEGIES))}.")
    cls = STRATEGIES[name]
    try:
        return cls(**(options or {}))
    except TypeError as e:
        raise ConfigError(f"Bad options for strategy '{name}': {e}. Known: "
                          f"{', '.join(named_options(cls))}.") from e


def named_options(cls: type) -> list[str]:
    """The named ``__init__`` parameters of a strategy class and its bases, in order."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) \
                    and p.name not in names:
                names.append(p.name)
    return names


def reject_unknown_options(strategy: Strategy, given: dict[str, Any],
                           allowed: set[str] | frozenset[str]) -> None:
    """A clear error for options that neither the strategy nor the training loop takes."""
    unknown = set(given) - set(allowed)
    if unknown:
        own = named_options(type(strategy))
        known = own + sorted(set(allowed) - set(own))
        first = sorted(unknown)[0]
        raise ConfigError(f"Unknown option(s) for strategy '{strategy.name}': "
                          f"{', '.join(sorted(unknown))}{did_you_mean(first, known)}. Known: "
                          f"{', '.join(known)}.")


def batchnorm_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The batch-norm layers of ``module``. Few-shot strategies hand them to the training loop
    as frozen modules: a batch of a few examples (or augmented views) is a poor estimate of
    the data's statistics, so they keep their pretrained running statistics (their affine
    weights still train)."""
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def label_indices(examples: Examples, classes: list[str]) -> np.ndarray:
    """Class indices ``[N]``, or for multi-label data a 0/1 matrix ``[N, K]`` (float32)."""
    index = {c: i for i, c in enumerate(classes)}
    if examples.multilabel:
        out = np.zeros((len(examples), len(classes)), dtype=np.float32)
        for r, labels in enumerate(examples.label_sets()):
            out[r, [index[x] for x in labels]] = 1.0
        return out
    return np.array([index[label] for label in examples.labels or []], dtype=np.int64)
