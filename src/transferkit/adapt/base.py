"""The strategy registry: every way of adapting a backbone plugs in here.

Callers only ever do ``get_strategy(name, options).fit(model, data, ctx)`` (``options.py``);
a new strategy (fine-tuning, LoRA, few-shot) is a new registered class, never a change to a
caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..data.examples import Dataset, Examples
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
    phases: list[dict[str, Any]] = field(default_factory=list)  # each training run's cost
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
            missing = [i for i, d in enumerate(digests) if d not in table]
            if len(missing) < len(digests):  # extract only what no earlier call did
                self.extraction.append(ExtractionStats(n=len(digests) - len(missing),
                                                       from_cache=True))
            if missing:
                feats = self._extract(model, examples.subset(missing), stage)
                table.update(zip([digests[i] for i in missing], feats, strict=True))
            if not digests:
                return self._extract(model, examples, stage)
            return np.stack([table[d] for d in digests])
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
    typed keyword arguments of ``__init__`` with defaults, so configs are checked against
    them and the CLI's flags and the YAML schema are generated from them."""

    name: ClassVar[str] = ""
    #: the whole backbone stays frozen, so its features can be cached and reused
    frozen_backbone: ClassVar[bool] = False
    #: its training budget is ``epochs`` (the study's --epochs reaches it); strategies with a
    #: budget of their own (contrastive passes, protonet episodes) keep their tuned defaults
    takes_epochs: ClassVar[bool] = False
    #: its head is made of class prototypes, so new classes can join it (predict --support)
    keeps_prototypes: ClassVar[bool] = False
    #: it starts from the pretrained weights (False: the no-pretraining reference of a study)
    pretrained: ClassVar[bool] = True

    # Options are the typed keyword arguments of ``__init__`` (see ``options.py``), plus the
    # ``TrainConfig`` fields named here, which the strategy passes on to the training loop.
    train_options: ClassVar[frozenset[str]] = frozenset()
    #: help per option (merged down the class hierarchy); TrainConfig fields carry their own
    option_help: ClassVar[dict[str, str]] = {}
    #: effective defaults where ``__init__`` fills in a value (e.g. each strategy's own lr)
    option_defaults: ClassVar[dict[str, Any]] = {}
    #: command-line flag names where an option's own name would be unclear (``r``: lora-r)
    option_flags: ClassVar[dict[str, str]] = {}

    @classmethod
    def declared(cls, attribute: str) -> dict[str, Any]:
        """A dict class variable (``option_help``...) merged down the class hierarchy."""
        out: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            out.update(vars(klass).get(attribute, {}))
        return out

    def fit(self, model: TransferModel, data: Dataset, ctx: FitContext) -> dict[str, Any]:
        """Train ``model`` in place; return facts worth reporting (chosen C, epochs, ...)."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {}

    def trains_backbone(self) -> bool:
        """Whether this fit, with these options, changes the backbone's weights (a frozen-only
        backbone, such as static word vectors, can only be given to one that does not)."""
        return not self.frozen_backbone


def frozen_only_choices() -> str:
    """The strategies (and option settings) that take a frozen-only backbone, for messages."""
    names = [name for name, cls in STRATEGIES.items() if cls.frozen_backbone]
    names += [f"{name} ({how})" for name, cls in STRATEGIES.items()
              if (how := getattr(cls, "frozen_with", None))]
    return ", ".join(names)


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


def fit_cost(model: TransferModel, extraction: list[ExtractionStats],
             phases: list[dict[str, Any]]) -> dict[str, Any]:
    """What one fit cost, the same way for every strategy: examples through the frozen
    backbone (features; those from the cache cost nothing now, but are counted apart), then
    the training runs it made (a fine-tune; contrastive's phase 1 and head; protonet's
    episodes; scratch's learning-rate trials and refit): optimizer steps, examples through
    forward and backward, and the most parameters any of them trained. A closed-form head
    (the logistic-regression probe) trains its own weights with no optimizer steps."""
    head = sum(p.numel() for p in model.head.parameters())
    return {
        "examples_extracted": sum(s.n for s in extraction if not s.from_cache),
        "examples_from_cache": sum(s.n for s in extraction if s.from_cache),
        "training_runs": len(phases),
        "steps": sum(p["steps"] for p in phases),
        "examples_seen": sum(p["examples_seen"] for p in phases),
        "trainable_params": max([p["trainable_params"] for p in phases], default=head),
        "total_params": sum(p.numel() for p in model.parameters()),
        "phases": [{k: p[k] for k in ("steps", "examples_seen", "trainable_params")}
                   for p in phases],
    }


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
