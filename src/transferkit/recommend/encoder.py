"""``--strategy``: the text encoder frozen (``probe``) or fine-tuned on the interaction signal.

The strategies are the registry's own (``adapt/``): ``probe`` keeps the encoder frozen and
fits the hybrid's text map on its features (a probe, closed form: ridge or kNN); a
fine-tuning strategy (``full``, ``partial``, ``gradual``, ``bitfit``, ``lora``) plans which
layer groups train and at which learning rate exactly as it does for a classifier
(``FineTuneStrategy.plan``, its prefix cache, LoRA's adapters), and the one training loop
(``train.Trainer``) trains them. What differs is the target, handed to the loop as hooks:
the encoder and a linear head regress each warm item's text onto its ALS item factors
(MSE, factors scaled to unit spread), and early stopping scores the hybrid on the
validation split's pseudo-cold items (NDCG@10), the split the text map is chosen on; the
test is never looked at. The head starts from a ridge fit on the frozen features
(``init_head=probe``, LP-FT), so training starts from the frozen hybrid's own map.

``contrastive``, ``protonet`` and ``scratch`` do not apply: the first two are built on
class labels (class-balanced pairs, class prototypes), which items do not have, and the
third drops the pretrained weights that are the point of the cold start.

The tuned encoder then embeds the whole catalogue (through the one cached extraction path,
keyed by its new fingerprint) and the hybrid's text map is chosen and fit on those
embeddings as for a frozen encoder; the run folder saves the tuned encoder, so new items at
predict time are embedded by it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapt.finetune import FineTuneStrategy
from ..adapt.model import TransferModel
from ..backbones.base import Backbone
from ..config import did_you_mean
from ..errors import ConfigError
from ..train.batches import BackboneBatches
from ..train.cache import FeatureCache
from ..train.config import RunSettings
from ..train.trainer import Hooks, Trainer
from .embed import embed_texts
from .models import Vectors, fit_als
from .tuning import SELECT_BY, Validation

FROZEN = "probe"
NOT_APPLICABLE = {
    "contrastive": "it tunes on class-balanced pairs of labels, and items have no labels",
    "protonet": "its head is class prototypes, and items have no classes",
    "scratch": "it starts from random weights, and the cold start needs what the pretrained "
               "encoder knows",
}
#: the loop's defaults for this target, under the strategy's own (lr: 5e-5 full/partial,
#: 5e-4 LoRA, 1e-3 BitFit); a user's option wins over both
DEFAULTS: dict[str, Any] = {"epochs": 10, "patience": 3}


def strategy_choices() -> list[str]:
    from ..adapt import STRATEGIES

    return [FROZEN] + sorted(n for n, c in STRATEGIES.items()
                             if issubclass(c, FineTuneStrategy) and n not in NOT_APPLICABLE)


def check_strategy(name: str, options: dict[str, Any] | None = None
                   ) -> FineTuneStrategy | None:
    """The registry's strategy ``name`` with ``options`` checked by the registry; None for the
    frozen encoder. A name the registry lacks, or one that cannot apply here, is refused
    with the choices."""
    from ..adapt import STRATEGIES, get_strategy

    options = dict(options or {})
    choices = strategy_choices()
    if name in NOT_APPLICABLE:
        raise ConfigError(f"--strategy {name} cannot tune a recommender's text encoder: "
                          f"{NOT_APPLICABLE[name]}. Choose from: {', '.join(choices)}.")
    if name not in choices:
        known = "" if name not in STRATEGIES else " here"
        raise ConfigError(f"Unknown strategy '{name}'{known}{did_you_mean(name, choices)}. "
                          f"Choose from: {', '.join(choices)} ({FROZEN}: the encoder frozen, "
                          "the default; the others fine-tune it on the interactions).")
    if name == FROZEN:
        if options:
            raise ConfigError(f"--strategy {FROZEN} keeps the encoder frozen and takes no "
                              f"options (got {', '.join(sorted(options))}); the text map is "
                              f"chosen on the validation split. Drop them, or pick a "
                              f"fine-tuning strategy: {', '.join(choices[1:])}.")
        return None
    if options.get("metric", "loss") != "loss":
        raise ConfigError(f"Option 'metric' of strategy '{name}': early stopping here is the "
                          "hybrid's NDCG@10 on the validation split's pseudo-cold items "
                          "(logged as valid_loss = 1 - NDCG@10); drop the option.")
    own = STRATEGIES[name].declared("option_defaults")
    defaults = {k: v for k, v in DEFAULTS.items() if k not in own}
    strategy = get_strategy(name, {**defaults, **options})
    strategy.train_config = replace(strategy.train_config, metric="loss")
    return strategy


class EncoderTuner:
    """Fine-tunes ``backbone`` in place for the hybrid, on a run's validation split; called
    by ``training.train_models`` once ALS's settings are chosen."""

    def __init__(self, backbone: Backbone, texts: list[str], origins: list[str],
                 strategy: FineTuneStrategy, *, batch_size: int = 32, cache: bool = True,
                 run_dir: Any = None, progress: Any = None) -> None:
        self.backbone, self.texts, self.origins = backbone, texts, origins
        self.strategy, self.batch_size, self.cache = strategy, batch_size, cache
        self.run_dir, self.progress = run_dir, progress

    def __call__(self, val: Validation, als_params: dict[str, Any], embeddings: np.ndarray,
                 *, seed: int, threads: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The catalogue's embeddings by the tuned encoder, and what tuning did."""
        torch.manual_seed(seed)
        start = time.perf_counter()
        als = fit_als(val.matrix, seed=seed, threads=threads, **als_params)
        warm, cold = val.warm, val.split.cold_items
        scale = float(als.items[warm].std()) or 1.0  # targets at unit spread: MSE's scale
        targets = (als.items[warm] / scale).astype(np.float32)
        head = nn.Linear(self.backbone.feature_dim, targets.shape[1])
        if self.strategy.init_head == "probe":  # LP-FT: start from the frozen map
            _ridge_init(head, embeddings[warm], targets)
        model = TransferModel(self.backbone, [], head=head)
        strategy = self.strategy
        groups, frozen, trainable = strategy.freeze_to_plan(model)
        feature_cache = FeatureCache() if self.cache else None
        data = BackboneBatches(self.backbone, [self.texts[i] for i in warm], targets,
                               targets.shape[1], cache=feature_cache,
                               prefix=strategy.cacheable_prefix(model, frozen))
        cold_inputs = self.backbone.prepare([self.texts[i] for i in cold])

        def evaluator() -> dict[str, float]:
            placed = _forward(model, cold_inputs, self.batch_size) * scale
            items = als.items.copy()
            items[cold] = placed
            score = val.score(Vectors(als.users, items, als.bias), "cold")
            return {"valid_loss": 1.0 - score, f"valid_{SELECT_BY}": score}

        run = RunSettings(seed=seed, batch_size=self.batch_size, precision="fp32",
                          run_dir=self.run_dir, progress=self.progress)
        trainer = Trainer(model, groups, strategy.train_config, data,
                          hooks=Hooks(criterion=_mse, evaluator=evaluator), run=run,
                          frozen=frozen)
        result = trainer.fit()
        strategy.finish_backbone(model)
        for p in model.parameters():
            p.requires_grad_(False)
        self.backbone.invalidate_fingerprint()  # new weights: never reuse old cache entries
        train_s = time.perf_counter() - start
        tuned, embedding = embed_texts(self.backbone, self.texts, self.origins,
                                       cache=self.cache, batch_size=self.batch_size)
        history = [{k: v for k, v in e.items() if k != "best"}
                   for e in trainer.state.history if "valid_loss" in e]
        return tuned, {
            "strategy": strategy.name, "options": _jsonable(strategy.options()),
            "steps": result["steps"], "epochs_completed": result["epochs_completed"],
            "best_step": result["best_step"], "stopped_early": result["stopped_early"],
            f"valid_{SELECT_BY}_best": 1.0 - float(result["best_valid"]),
            "trainable_params": trainable,
            "total_params": sum(p.numel() for p in self.backbone.parameters()),
            "train_items": len(warm), "valid_cold_items": len(cold), "target_scale": scale,
            "seconds": train_s, "embed_seconds": embedding["seconds"], "history": history}


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(outputs, targets.float())


def _forward(model: TransferModel, prepared: list[Any], batch_size: int) -> np.ndarray:
    """The head's factors for prepared inputs, in order (the model is in eval mode)."""
    device = next(model.head.parameters()).device
    parts = []
    for s in range(0, len(prepared), batch_size):
        batch = model.backbone.collate(prepared[s:s + batch_size])
        parts.append(model(**{k: v.to(device) for k, v in batch.items()}).float().cpu())
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.head.out_features),
                                                           np.float32)


def _ridge_init(head: nn.Linear, features: np.ndarray, targets: np.ndarray,
                alpha: float = 10.0) -> None:
    from sklearn.linear_model import Ridge

    ridge = Ridge(alpha=alpha).fit(features, targets)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(ridge.coef_.astype(np.float32)))
        head.bias.copy_(torch.from_numpy(np.asarray(ridge.intercept_, np.float32)))


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if isinstance(v, int | float | str | bool | list)
            or v is None}
