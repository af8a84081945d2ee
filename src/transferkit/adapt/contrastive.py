"""Few-shot contrastive tuning (SetFit's recipe on the one training loop), then a head.

Phase 1 tunes the encoder so that examples of one class embed close together and examples of
different classes apart, with sentence-transformers' own losses applied to our pooled
embeddings: ``cosine`` (SetFit's CosineSimilarityLoss, here over *every* pair of a batch, so
one forward pass of B examples yields B(B-1)/2 pairs) or the batch triplet losses. Batches are
class-balanced and drawn per step (``train/sampler.py``), so memory grows with the batch, not
with the O(n^2) pairs. With validation data phase 1 stops early on nearest-centroid accuracy
and keeps its best weights (the untuned start is scored too, so tuning never ends below it).
Phase 2 fits the probe (cross-validated logistic regression, or ``head='linear'``) on the
tuned features. Multi-label data work too: examples with the same label set are positives.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.examples import Dataset, Examples
from ..errors import ConfigError
from ..train.loop import TRAIN_OPTIONS, ParamGroup, TrainConfig, train
from ..train.sampler import BalancedBatches
from .base import FitContext, Strategy, batchnorm_modules, register, reject_unknown_options
from .model import TransferModel

LOSSES = ("cosine", "batch_all", "batch_hard", "batch_semi_hard", "batch_hard_soft_margin")


def contrastive_criterion(loss: str, margin: float = 0.25):
    """``criterion(embeddings [B, D], groups [B]) -> loss`` from a sentence-transformers loss.

    The losses are used through ``compute_loss_from_embeddings``: transferkit owns the
    backbone and the batching, sentence-transformers the objective. Triplet losses use
    cosine distance with SetFit's margin, which suits unit-norm sentence embeddings.
    """
    try:  # sentence-transformers >= 6 moved the losses; the old path warns there
        from sentence_transformers.sentence_transformer import losses as st
    except ImportError:
        from sentence_transformers import losses as st

    if loss not in LOSSES:
        raise ConfigError(f"Unknown contrastive loss '{loss}'. Choose one of: "
                          f"{', '.join(LOSSES)}.")
    cosine = st.BatchHardTripletLossDistanceFunction.cosine_distance
    if loss == "cosine":
        fn = st.CosineSimilarityLoss(None)

        def criterion(emb: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
            i, j = torch.triu_indices(len(emb), len(emb), 1, device=emb.device)
            same = (groups[i] == groups[j]).float()
            return fn.compute_loss_from_embeddings([emb[i], emb[j]], same)

        return criterion
    if loss == "batch_all":
        fn = st.BatchAllTripletLoss(None, distance_metric=cosine, margin=margin)
    elif loss == "batch_hard":
        fn = st.BatchHardTripletLoss(None, distance_metric=cosine, margin=margin)
    elif loss == "batch_semi_hard":
        fn = st.BatchSemiHardTripletLoss(None, distance_metric=cosine, margin=margin)
    else:
        fn = st.BatchHardSoftMarginTripletLoss(None, distance_metric=cosine)
    return lambda emb, groups: fn.compute_loss_from_embeddings([emb], groups)


def label_groups(examples: Examples, group_of: dict[str, int] | None = None
                 ) -> tuple[np.ndarray, dict[str, int]]:
    """One integer per example: its label, or for multi-label data its whole label set (two
    examples are positives exactly when their label sets are equal). Sets unseen in
    ``group_of`` get new ids."""
    group_of = dict(group_of or {})
    keys = ["\x1f".join(sorted(s)) for s in examples.label_sets()]
    for k in keys:
        group_of.setdefault(k, len(group_of))
    return np.array([group_of[k] for k in keys], dtype=np.int64), group_of


@torch.no_grad()
def embed(backbone: nn.Module, inputs: list[Any], batch_size: int = 64) -> torch.Tensor:
    """Pooled embeddings of ``inputs`` with the backbone as it is *now* (no feature cache:
    the weights change during tuning), longest first to keep padding small."""
    device = next(backbone.parameters()).device
    prepared = backbone.prepare(inputs)
    order = np.argsort([-backbone.cost(p) for p in prepared], kind="stable")
    out = torch.empty(len(inputs), backbone.feature_dim)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = backbone.collate([prepared[i] for i in idx])
        out[torch.from_numpy(idx)] = backbone(**{k: v.to(device) for k, v in batch.items()}
                                              ).float().cpu()
    return out


def centroid_accuracy(train_emb: torch.Tensor, train_groups: np.ndarray,
                      valid_emb: torch.Tensor, valid_groups: np.ndarray) -> float:
    """Share of validation examples whose nearest class centroid (cosine) is their own."""
    ids = np.unique(train_groups)
    cent = torch.stack([train_emb[torch.from_numpy(train_groups == g)].mean(0) for g in ids])
    cent = nn.functional.normalize(cent, dim=-1)
    pred = ids[(nn.functional.normalize(valid_emb, dim=-1) @ cent.T).argmax(1).numpy()]
    return float((pred == valid_groups).mean())


@register
class Contrastive(Strategy):
    """Contrastive tuning of the whole encoder on balanced batches, then the probe.

    Options: ``loss`` (see ``LOSSES``), ``head`` (``logreg`` | ``linear``, phase 2),
    ``pair_batch`` (examples per phase-1 batch), ``epochs`` (the step budget, in passes over
    the n labelled examples at full batches: steps = ceil(epochs x n / pair_batch), at least
    ``min_steps``; when n < pair_batch every step is the whole set), ``max_steps``,
    ``valid_fraction`` (held out of train for phase-1 early stopping when the data have no
    validation split; default: none for text, 0.2 for images, whose augmentation makes
    tuning riskier), ``margin`` (triplet losses), and any training-loop option (``lr``,
    ``warmup_ratio``, ``schedule``, ``patience``, ``eval_every``...).
    Text defaults (cosine loss, lr 1e-4, 24 passes, batch 32: 12 whole-set steps at 8 per
    class and 2 classes, 96 steps at 64) were chosen on validation texts drawn from the
    *training* files, never on a test split (``benchmarks/fewshot_tune.py``, 3 seeds). At 64
    per class 24 passes beat 12 on rotten_tomatoes and sms_spam (0.7483 / 0.7430, 0.9733 /
    0.9727); 36 passes, or lower rates over more passes, helped rotten_tomatoes and hurt
    sms_spam. At 8 per class 24 whole-set steps instead of 12 gained 0.1 and 0.4 points
    (0.6527 / 0.6517, 0.9480 / 0.9443) for twice the time, more than half of SetFit's there
    (``benchmarks/fewshot.py``); hence a budget in full batches, which grows with the data.
    Image defaults (lr 1e-5, 4 passes, 20% held out for early stopping, ``freeze_batchnorm``)
    were checked on Fashion-MNIST validation images (EfficientNet-Lite0, 64 px): batch norm
    must keep its pretrained statistics (updating them from few-shot batches of augmented
    views: 0.624 at 8 per class, keeping them: 0.679, the probe 0.680), and neither lr 1e-4
    nor 3e-5 over 12 passes did better than the probe (0.676 / 0.678 at 8, 0.789 at 64).
    """

    name = "contrastive"
    text_defaults = {"lr": 1e-4, "epochs": 24}
    image_defaults = {"lr": 1e-5, "epochs": 4}

    def __init__(self, loss: str = "cosine", head: str = "logreg", pair_batch: int = 32,
                 epochs: int | None = None, min_steps: int = 8, max_steps: int | None = None,
                 valid_fraction: float | None = None, margin: float = 0.25,
                 freeze_batchnorm: bool = True, **train_options: Any) -> None:
        from .probe import HEADS

        if loss not in LOSSES:
            raise ConfigError(f"Unknown contrastive loss '{loss}'. Choose one of: "
                              f"{', '.join(LOSSES)}.")
        if head not in HEADS:
            raise ConfigError(f"Unknown head '{head}'. Choose one of: {', '.join(HEADS)}.")
        reject_unknown_options(self, train_options, TRAIN_OPTIONS)
        if pair_batch < 2:
            raise ConfigError("pair_batch must be at least 2 (pairs are formed in a batch).")
        self.loss, self.head, self.pair_batch, self.margin = loss, head, pair_batch, margin
        self.epochs, self.min_steps, self.max_steps = epochs, min_steps, max_steps
        self.valid_fraction, self.freeze_batchnorm = valid_fraction, freeze_batchnorm
        self.train_options = train_options
        TrainConfig(**{"lr": 1e-4, **train_options}).validate()

    def options(self) -> dict[str, Any]:
        return {"loss": self.loss, "head": self.head, "pair_batch": self.pair_batch,
                "epochs": self.epochs, "min_steps": self.min_steps,
                "max_steps": self.max_steps, "valid_fraction": self.valid_fraction,
                "margin": self.margin, "freeze_batchnorm": self.freeze_batchnorm,
                **self.train_options}

    def fit(self, model: TransferModel, data: Dataset, ctx: FitContext) -> dict[str, Any]:
        from .finetune import _train_valid
        from .probe import Probe

        backbone = model.backbone
        defaults = self.image_defaults if backbone.modality == "image" else self.text_defaults
        fraction = self.valid_fraction if self.valid_fraction is not None else (
            0.2 if backbone.modality == "image" else 0.0)
        if data.valid is not None and len(data.valid):
            train_ex, valid_ex = data.train, data.valid
        else:
            train_ex, valid_ex = _train_valid(data, fraction, ctx.seed) if fraction > 0 \
                else (data.train, None)
        groups, group_of = label_groups(train_ex)
        if len(np.unique(groups)) < 2:
            raise ConfigError("Contrastive tuning needs at least two classes (or label sets) "
                              "in the training data.")
        batch = min(self.pair_batch, len(train_ex))
        epochs = self.epochs or defaults["epochs"]
        steps = max(self.min_steps, math.ceil(epochs * len(train_ex) / self.pair_batch))
        if self.max_steps:
            steps = min(steps, self.max_steps)
        views = 2 if backbone.modality == "image" else 1
        sampler = BalancedBatches(groups, batch // views, steps, ctx.seed, views=views)
        options = {"lr": defaults["lr"], "warmup_ratio": 0.1, "patience": 4, **self.train_options}
        options.update(epochs=1, max_steps=steps, metric="accuracy", max_grad_norm=1.0)
        options.setdefault("eval_every", max(1, steps // 8))
        cfg = TrainConfig(**options)

        evaluator = None
        if valid_ex is not None:
            valid_groups, _ = label_groups(valid_ex, group_of)

            def evaluator() -> dict[str, float]:
                acc = centroid_accuracy(embed(backbone, train_ex.inputs), groups,
                                        embed(backbone, valid_ex.inputs), valid_groups)
                return {"valid_accuracy": acc}

        encoder = TransferModel(backbone, model.classes, head=nn.Identity())
        norms = batchnorm_modules(backbone) if self.freeze_batchnorm else []
        params = list(backbone.parameters())
        for p in params:
            p.requires_grad_(True)
        result = train(
            encoder, [ParamGroup(params, cfg.lr, 0, "encoder")], train_ex.inputs, groups,
            None, None, len(group_of), cfg, seed=ctx.seed, batch_size=batch,
            precision=ctx.precision, device=ctx.device, run_dir=ctx.run_dir,
            checkpoint_dir=ctx.checkpoint_dir, resume=ctx.resume, progress=ctx.progress,
            frozen_modules=norms, sampler=sampler,
            criterion=contrastive_criterion(self.loss, self.margin), evaluator=evaluator,
        )
        for p in params:
            p.requires_grad_(False)
        backbone.eval()
        backbone.invalidate_fingerprint()  # new weights: never reuse old cache entries
        info = Probe(head=self.head).fit(model, data, ctx)
        phase1 = {k: result[k] for k in ("steps", "best_step", "best_valid", "stopped_early",
                                          "precision", "train_seconds")}
        return {"phase1": {**phase1, "loss": self.loss, "lr": cfg.lr, "batch": batch,
                           "planned_steps": steps, "n_valid": 0 if valid_ex is None
                           else len(valid_ex)},
                "head": info, "train_config": asdict(cfg)}
