"""Fine-tuning strategies on the one training loop: full, partial, gradual, bitfit, lora.

Each strategy only *plans*: which layer groups train, from which epoch, at which learning
rate. The ``Trainer`` (``train/trainer.py``) does the rest. By default the head starts from a
linear probe on the frozen features (LP-FT, Kumar et al. 2022): fine-tuning then starts from a
good classifier instead of a random one, which distorts the pretrained features less and
converges in fewer epochs; the probe's features come from the cache, so it costs seconds.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar, Literal

import numpy as np
from torch import nn

from ..data.examples import DataReport, Dataset, Examples
from ..data.split import stratified_split
from ..errors import ConfigError
from ..train.batches import BackboneBatches
from ..train.config import TRAIN_OPTIONS, RunSettings, TrainConfig
from ..train.optim import ParamGroup
from ..train.trainer import Trainer
from .base import FitContext, Strategy, label_indices, register
from .model import TransferModel


class FineTuneStrategy(Strategy):
    """Shared options: every ``TrainConfig`` field, plus ``lr_decay`` (layer-wise LR decay:
    each group below the top trains at ``lr_decay`` times the one above), ``init_head``
    (``probe`` or ``random``) and ``valid_fraction`` (held out of train for early stopping
    when the data has no validation split)."""

    takes_epochs = True
    train_options = TRAIN_OPTIONS
    option_help: ClassVar[dict[str, str]] = {
        "lr_decay": "Layer-wise LR decay: each layer group below the top trains at this "
                    "times the LR of the one above, e.g. 0.8 (unset: one LR).",
        "init_head": "probe: start the head from a linear probe (LP-FT); random: from random "
                     "weights.",
        "valid_fraction": "Share of the training data held out for early stopping when the "
                          "data has no validation split.",
    }
    option_defaults: ClassVar[dict[str, Any]] = {"lr": 5e-5}

    def __init__(self, lr_decay: float | None = None,
                 init_head: Literal["probe", "random"] = "probe",
                 valid_fraction: float = 0.1, **train_options: Any) -> None:
        if init_head not in ("probe", "random"):
            raise ConfigError("init_head must be 'probe' or 'random'.")
        if lr_decay is not None and not 0 < lr_decay <= 1:
            raise ConfigError(f"lr_decay must be in (0, 1]; got {lr_decay}.")
        for key, value in self.declared("option_defaults").items():
            if key in TRAIN_OPTIONS:
                train_options.setdefault(key, value)
        self.train_config = TrainConfig(**train_options)
        self.train_config.validate()
        self.lr_decay, self.init_head, self.valid_fraction = lr_decay, init_head, valid_fraction

    def options(self) -> dict[str, Any]:
        return {"lr_decay": self.lr_decay, "init_head": self.init_head,
                "valid_fraction": self.valid_fraction, **asdict(self.train_config)}

    # -- what subclasses decide -------------------------------------------------------------
    def trainable_depth(self, n_groups: int) -> int:
        """How many layer groups, counted from the output side, ever train."""
        return n_groups

    def start_epoch(self, depth: int) -> int:
        """Epoch at which the group ``depth`` below the top starts training (0 = at once)."""
        return 0

    def prepare_backbone(self, model: TransferModel) -> None:
        """Hook for strategies that change the backbone's modules (LoRA)."""

    def freeze_to_plan(self, model: TransferModel
                       ) -> tuple[list[ParamGroup], list[nn.Module], int]:
        """``prepare_backbone``, then ``plan``, and every parameter's ``requires_grad`` set to
        the plan, before anything wraps the model (DESIGN.md): (groups, frozen modules,
        trainable parameter count)."""
        self.prepare_backbone(model)
        groups, frozen = self.plan(model)
        planned = {id(p) for g in groups for p in g.params}
        for p in model.parameters():
            p.requires_grad_(id(p) in planned)
        return groups, frozen, sum(p.numel() for p in model.parameters() if p.requires_grad)

    def plan(self, model: TransferModel) -> tuple[list[ParamGroup], list[nn.Module]]:
        cfg = self.train_config
        groups = model.backbone.layer_groups()
        n_train = max(0, min(self.trainable_depth(len(groups)), len(groups)))
        plan = [ParamGroup(list(model.head.parameters()), cfg.head_lr or cfg.lr, 0, "head")]
        frozen: list[nn.Module] = []
        for i, group in enumerate(groups):
            depth = len(groups) - 1 - i  # 0 = the group next to the head
            start = self.start_epoch(depth)
            if depth >= n_train or start >= cfg.epochs:
                frozen.append(group)
                continue
            lr = cfg.lr * (self.lr_decay ** depth if self.lr_decay else 1.0)
            plan.append(ParamGroup(list(group.parameters()), lr, start, f"group {i}"))
        return plan, frozen

    # -- the one path -----------------------------------------------------------------------
    def fit(self, model: TransferModel, data: Dataset, ctx: FitContext) -> dict[str, Any]:
        train_ex, valid_ex = _train_valid(data, self.valid_fraction, ctx.seed)
        return self.fit_on(model, train_ex, valid_ex, data, ctx, self.train_config)

    def fit_on(self, model: TransferModel, train_ex: Examples, valid_ex: Examples | None,
               data: Dataset, ctx: FitContext, cfg: TrainConfig) -> dict[str, Any]:
        """One training run on ``train_ex``, stopping early on ``valid_ex`` (None: never)."""
        info: dict[str, Any] = {}
        if train_ex.multilabel:
            model.multilabel, model.delimiter = True, train_ex.delimiter
        if self.init_head == "probe":
            from .probe import Probe

            probe_data = Dataset(train=train_ex, test=data.test, classes=data.classes)
            Probe().fit(model, probe_data, ctx)
            info["head_init"] = "probe"
            info["head_scale"] = _temper_head(model, ctx.features(model, train_ex, "features"))
        groups, frozen, trainable = self.freeze_to_plan(model)
        total = sum(p.numel() for p in model.parameters())
        n_classes = len(model.classes)
        train_batches = BackboneBatches(
            model.backbone, train_ex.inputs, label_indices(train_ex, model.classes), n_classes,
            prefix=self.cacheable_prefix(model, frozen), cache=ctx.cache)
        valid_batches = None if valid_ex is None else BackboneBatches(
            model.backbone, valid_ex.inputs, label_indices(valid_ex, model.classes), n_classes)
        result = Trainer(model, groups, cfg, train_batches, valid=valid_batches,
                         run=RunSettings.of(ctx), frozen=frozen).fit()
        self.finish_backbone(model)
        for p in model.parameters():
            p.requires_grad_(False)
        model.backbone.invalidate_fingerprint()  # new weights: never reuse old cache entries
        if model.multilabel:
            model.thresholds = self._thresholds(model, valid_ex, ctx)
        return {**info, **result, "trainable_params": trainable, "total_params": total,
                "trainable_fraction": trainable / total, "n_valid": 0 if valid_ex is None
                else len(valid_ex)}

    def finish_backbone(self, model: TransferModel) -> None:
        """Hook after training (LoRA merges here when asked)."""

    @staticmethod
    def _thresholds(model: TransferModel, valid_ex: Examples | None, ctx: FitContext
                    ) -> list[float]:
        from ..metrics import tune_thresholds

        if valid_ex is None:
            return [0.5] * len(model.classes)
        proba = model.head_proba(ctx.features(model, valid_ex, "features: valid"))
        return tune_thresholds(label_indices(valid_ex, model.classes), proba)

    def cacheable_prefix(self, model: TransferModel, frozen: list[nn.Module]
                         ) -> list[nn.Module] | None:
        """Frozen repeated layers whose outputs can be computed once (see train/prefix.py).

        Only a *static* prefix of a text backbone qualifies: image training augments its
        inputs, so frozen image layers see new pixels every epoch."""
        return None


def _temper_head(model: TransferModel, features: np.ndarray) -> float:
    """Shrink the probe's head so its training logits have unit spread.

    A probe fitted on few examples separates its own training set almost perfectly; left as
    is, its saturated softmax gives fine-tuning near-zero gradients (exactly zero in bf16).
    Keeping the direction but not the confidence gives LP-FT's good start *and* a signal.
    """
    import torch

    with torch.no_grad():
        logits = model.head(torch.from_numpy(features).float())
        spread = float(logits.std())
        scale = 1.0 / spread if spread > 1.0 else 1.0
        model.head.weight.mul_(scale)
        model.head.bias.mul_(scale)
    return scale


def _train_valid(data: Dataset, fraction: float, seed: int
                 ) -> tuple[Examples, Examples | None]:
    if data.valid is not None and len(data.valid):
        return data.train, data.valid
    counts = np.unique(data.train.strata(), return_counts=True)[1]
    # a stratified split needs at least one example of every class on each side
    n_valid = max(int(round(fraction * len(data.train))), len(counts))
    if fraction <= 0 or counts.min() < 4 or n_valid > len(data.train) // 4:
        return data.train, None  # too few examples to spare a validation split
    return stratified_split(data.train, n_valid, seed, DataReport(), what="validation")


@register
class Full(FineTuneStrategy):
    """Every layer trains (combine with ``lr_decay`` for layer-wise learning rates)."""

    name = "full"


@register
class Partial(FineTuneStrategy):
    """The top ``train_layers`` layer groups train; the rest stay frozen (and in eval mode)."""

    name = "partial"

    option_help: ClassVar[dict[str, str]] = {
        "train_layers": "How many top layer groups train (the rest stay frozen).",
        "cache_prefix": "Text: run the frozen lower layers once and replay their output "
                        "every epoch.",
    }

    def __init__(self, train_layers: int = 2, cache_prefix: bool = True, **options: Any
                 ) -> None:
        if train_layers < 0:
            raise ConfigError("train_layers must be >= 0.")
        super().__init__(**options)
        self.train_layers, self.cache_prefix = train_layers, cache_prefix

    def options(self) -> dict[str, Any]:
        return {"train_layers": self.train_layers, "cache_prefix": self.cache_prefix,
                **super().options()}

    def cacheable_prefix(self, model: TransferModel, frozen: list[nn.Module]
                         ) -> list[nn.Module] | None:
        from ..train.prefix import static_prefix

        return static_prefix(model.backbone, frozen) if self.cache_prefix else None

    def trainable_depth(self, n_groups: int) -> int:
        return self.train_layers


@register
class Gradual(FineTuneStrategy):
    """ULMFiT-style gradual unfreezing: the head alone first, then one more layer group from
    the top every ``unfreeze_every`` epochs (zero-LR groups until then, so DDP is safe)."""

    name = "gradual"

    option_help: ClassVar[dict[str, str]] = {
        "unfreeze_every": "Epochs between unfreezing one more layer group.",
    }
    option_defaults: ClassVar[dict[str, Any]] = {"epochs": 4}

    def __init__(self, unfreeze_every: int = 1, lr_decay: float | None = 0.8,
                 **options: Any) -> None:
        if unfreeze_every < 1:
            raise ConfigError("unfreeze_every must be >= 1.")
        super().__init__(lr_decay=lr_decay, **options)
        self.unfreeze_every = unfreeze_every

    def options(self) -> dict[str, Any]:
        return {"unfreeze_every": self.unfreeze_every, **super().options()}

    def start_epoch(self, depth: int) -> int:
        return (depth + 1) * self.unfreeze_every


@register
class BitFit(FineTuneStrategy):
    """Only biases and normalisation parameters train (Ben Zaken et al. 2022), plus the head."""

    name = "bitfit"
    option_defaults: ClassVar[dict[str, Any]] = {"lr": 1e-3}

    def plan(self, model: TransferModel) -> tuple[list[ParamGroup], list[nn.Module]]:
        cfg = self.train_config
        norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
        norm_params = {id(p) for m in model.backbone.modules() if isinstance(m, norm_types)
                       for p in m.parameters(recurse=False)}
        params = [p for n, p in model.backbone.named_parameters()
                  if n.endswith("bias") or id(p) in norm_params]
        return [ParamGroup(list(model.head.parameters()), cfg.head_lr or cfg.lr, 0, "head"),
                ParamGroup(params, cfg.lr, 0, "biases+norms")], []
