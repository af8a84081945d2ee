"""Prototypical networks (Snell et al. 2017): classify by distance to class prototypes.

A class is the mean embedding of its examples (its prototype), and an input belongs to the
nearest one, so a new class needs only K examples and no training. Meta-training makes the
encoder good at exactly that: N-way K-shot episodes drawn from the base classes
(``train/sampler.py``), each a cross-entropy over ``-scale * squared distance`` from the
queries to the episode's support prototypes, on the one training loop.

The prototype classifier is written as a linear head: ``-s||x - c||^2 = 2s c.x - s||c||^2 -
s||x||^2`` and the last term is the same for every class, so ``W = 2s c`` and
``b = -s||c||^2`` give the same softmax. A protonet therefore saves, exports and serves like
any other model, and new classes are new rows of the head (``Classifier.with_support``).
``scale`` matters: unit-norm embeddings have squared distances in [0, 4], whose unscaled
softmax is almost flat; without it meta-training made the encoder worse. It is set for unit
norm and divided by the features' mean squared norm otherwise (``softmax_scale``), so the
softmax is as sharp whatever the backbone: EfficientNet-Lite0's pooled features have squared
norms near 4,600, and scale 10 on them made meta-training collapse to chance.

Because the prototype head is a linear head, first-order MAML for the head fits in the same
path (``inner_steps``, fo-Proto-MAML): the head starts at the prototypes and takes a few
gradient steps on the support (``adapt_head``) before it scores the queries, in meta-training
and wherever new classes arrive (meta-eval episodes, the fitted head, ``with_support``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..data.examples import Dataset, Examples
from ..errors import ConfigError
from ..train.batches import BackboneBatches
from ..train.config import TRAIN_OPTIONS, RunSettings, TrainConfig
from ..train.optim import ParamGroup
from ..train.sampler import Episodes
from ..train.trainer import Hooks, Trainer
from .base import (
    FitContext,
    Strategy,
    batchnorm_modules,
    label_indices,
    register,
)
from .model import TransferModel

DEFAULT_SCALE = 10.0
INNER_LR = 3.0  # fo-Proto-MAML's inner steps, for unit-norm features (adapt_head)


def prototype_head(features: np.ndarray, labels: np.ndarray, n_classes: int,
                   scale: float = DEFAULT_SCALE, inner_steps: int = 0,
                   inner_lr: float = INNER_LR) -> nn.Linear:
    """The nearest-prototype classifier as an ``nn.Linear`` (see the module docstring), then
    ``inner_steps`` gradient steps on ``features`` (:func:`adapt_head`)."""
    cent = np.stack([features[labels == k].mean(0) for k in range(n_classes)]).astype(np.float64)
    head = nn.Linear(features.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(2 * scale * cent).float())
        head.bias.copy_(torch.from_numpy(-scale * (cent ** 2).sum(1)).float())
        if inner_steps:
            d_weight, d_bias = adapt_head(head.weight, head.bias, torch.from_numpy(
                np.ascontiguousarray(features, dtype=np.float32)), torch.from_numpy(
                np.asarray(labels, dtype=np.int64)), inner_steps, inner_lr)
            head.weight += d_weight
            head.bias += d_bias
    return head


def adapt_head(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor,
               labels: torch.Tensor, steps: int, lr: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The inner loop of first-order MAML for the head: ``steps`` full-batch gradient steps
    of cross-entropy on the support ``features`` [..., M, D] (``labels`` [M] in 0..N-1) from
    the head ``weight`` [..., N, D], ``bias`` [..., N], in float32 and outside any autograd
    graph; leading dimensions are independent episodes. Returns the *changes* to weight and
    bias: added to the head, they carry the query loss's gradient to the head's initial
    values (the prototypes, and through them the encoder) and treat the steps themselves as
    constants, which is what makes it first-order. ``lr`` is meant for unit-norm features:
    like the softmax scale it is divided by the features' mean squared norm, since a step
    moves the logits by about lr x that norm (image features' are in the thousands)."""
    x = features.detach().float()
    w0, b0 = weight.detach().float(), bias.detach().float()
    step = (lr / x.pow(2).sum(-1).mean(-1).clamp_min(1e-12))[..., None]  # per episode
    target = nn.functional.one_hot(labels, w0.shape[-2]).float()
    w, b = w0, b0
    for _ in range(steps):  # the cross-entropy's gradient in closed form: (softmax - y) / M
        grad = (torch.softmax(x @ w.transpose(-1, -2) + b[..., None, :], -1) - target
                ) / x.shape[-2]
        w = w - step[..., None] * (grad.transpose(-1, -2) @ x)
        b = b - step * grad.sum(-2)
    return (w - w0).to(weight.dtype), (b - b0).to(bias.dtype)


def adapted_prototype_logits(support: torch.Tensor, query: torch.Tensor, n_way: int,
                             k_shot: int, scale: float, steps: int, lr: float) -> torch.Tensor:
    """Query logits [..., N*Q, N] of the prototype head of ``support`` [..., N*K, D]
    (class-major) after ``steps`` of :func:`adapt_head` on it; leading dimensions are
    independent episodes."""
    protos = support.reshape(*support.shape[:-2], n_way, k_shot, -1).mean(-2)
    weight, bias = 2 * scale * protos, -scale * protos.pow(2).sum(-1)
    shots = torch.arange(n_way, device=support.device).repeat_interleave(k_shot)
    d_weight, d_bias = adapt_head(weight, bias, support, shots, steps, lr)
    return query @ (weight + d_weight).transpose(-1, -2) + (bias + d_bias).unsqueeze(-2)


def softmax_scale(features: np.ndarray, scale: float = DEFAULT_SCALE) -> float:
    """``scale`` (meant for unit-norm embeddings) over the mean squared norm of ``features``."""
    sq = float(np.mean(np.sum(np.square(features, dtype=np.float64), axis=1)))
    return scale / sq if sq > 0 else scale


def prototype_criterion(n_way: int, k_shot: int, n_query: int, scale: float,
                        inner_steps: int = 0, inner_lr: float = INNER_LR):
    """Episode loss for batches laid out by :class:`~transferkit.train.sampler.Episodes`:
    N*K support embeddings (class-major), then N*Q queries in the same class order. With
    ``inner_steps`` it is first-order Proto-MAML: the queries are scored by the prototype
    head after that many gradient steps on the support (:func:`adapt_head`)."""
    def criterion(emb: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
        support, query = emb[:n_way * k_shot], emb[n_way * k_shot:]
        target = torch.arange(n_way, device=emb.device).repeat_interleave(n_query)
        if inner_steps:
            logits = adapted_prototype_logits(support, query, n_way, k_shot, scale,
                                              inner_steps, inner_lr).float()
        else:
            protos = support.reshape(n_way, k_shot, -1).mean(1)
            logits = -scale * torch.cdist(query, protos).pow(2)
        return nn.functional.cross_entropy(logits, target)

    return criterion


def check_episodes(labels: np.ndarray, classes: list[str], n_way: int, k_shot: int,
                   n_query: int, what: str) -> None:
    """A clear error when the data cannot fill an N-way K-shot Q-query episode."""
    if n_way < 2 or k_shot < 1 or n_query < 1:
        raise ConfigError(f"Episodes need n_way >= 2, k_shot >= 1 and n_query >= 1 (got "
                          f"{n_way}-way {k_shot}-shot, {n_query} queries).")
    counts = np.bincount(labels, minlength=len(classes))
    usable = [c for c, n in zip(classes, counts, strict=True) if n >= k_shot + n_query]
    if len(usable) < n_way:
        raise ConfigError(
            f"{what}: {n_way}-way {k_shot}-shot episodes with {n_query} queries need at least "
            f"{n_way} classes with {k_shot + n_query} examples each; {len(usable)} of the "
            f"{len(classes)} classes have that many ({', '.join(usable) or 'none'}). Lower "
            "--n-way, --k-shot or --n-query, or add classes / examples."
        )


def episode_accuracies(features: np.ndarray, labels: np.ndarray, n_way: int, k_shot: int,
                       n_query: int, episodes: int, seed: int, scale: float | None = None,
                       inner_steps: int = 0, inner_lr: float = INNER_LR,
                       chunk: int = 100) -> np.ndarray:
    """Query accuracy of each of ``episodes`` episodes drawn from precomputed features: by
    the nearest prototype, or with ``inner_steps`` by the prototype head (at ``scale``,
    default :func:`softmax_scale`) after that many steps on the episode's support.
    ``chunk`` episodes are scored at once."""
    draws = np.asarray(Episodes(labels, n_way, k_shot, n_query, episodes, seed)(0))
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    if inner_steps and scale is None:
        scale = softmax_scale(features)
    target = torch.arange(n_way).repeat_interleave(n_query)
    out = []
    for s in range(0, len(draws), chunk):
        emb = x[torch.from_numpy(draws[s:s + chunk])]  # [episodes, N*(K+Q), D]
        support, query = emb[:, :n_way * k_shot], emb[:, n_way * k_shot:]
        if inner_steps:
            pred = adapted_prototype_logits(support, query, n_way, k_shot, scale, inner_steps,
                                            inner_lr).argmax(-1)
        else:
            protos = support.reshape(len(emb), n_way, k_shot, -1).mean(2)
            pred = torch.cdist(query, protos).argmin(-1)
        out.append((pred == target).double().mean(1))
    return torch.cat(out).numpy()


def meta_evaluate(features: np.ndarray, labels: np.ndarray, classes: list[str], *,
                  n_way: int = 5, k_shot: int = 5, n_query: int = 15, episodes: int = 600,
                  seed: int = 0, scale: float | None = None, inner_steps: int = 0,
                  inner_lr: float = INNER_LR) -> dict[str, Any]:
    """N-way K-shot accuracy over ``episodes`` episodes: mean and 95% confidence interval
    (1.96 standard errors, the convention of the few-shot literature); ``inner_steps`` as in
    :func:`episode_accuracies`."""
    check_episodes(labels, classes, n_way, k_shot, n_query, "meta-eval")
    if inner_steps < 0 or inner_lr <= 0:
        raise ConfigError(f"--inner-steps must be >= 0 and --inner-lr > 0 (got {inner_steps} "
                          f"and {inner_lr}).")
    acc = episode_accuracies(features, labels, n_way, k_shot, n_query, episodes, seed,
                             scale, inner_steps, inner_lr)
    return {"accuracy": float(acc.mean()), "ci95": float(1.96 * acc.std(ddof=1)
                                                         / np.sqrt(len(acc))),
            "episodes": len(acc), "n_way": n_way, "k_shot": k_shot, "n_query": n_query,
            "inner_steps": inner_steps, "inner_lr": inner_lr if inner_steps else None,
            "chance": 1.0 / n_way, "classes": classes, "n_examples": len(labels)}


@register
class Protonet(Strategy):
    """Episodic meta-training of the encoder, then a prototype head over the training classes.

    Options: ``n_way`` (default: min(5, number of classes)), ``k_shot`` (5), ``n_query`` (5),
    ``episodes`` (100 training episodes), ``scale`` (10, for unit-norm features: see
    ``softmax_scale``; the one used is in ``fit_info``), ``meta_train`` (False: raw-feature
    prototypes, no training), ``valid_episodes`` (episodes on the validation split for early
    stopping, when there is one), ``freeze_batchnorm`` (True: batch norm keeps its pretrained
    running statistics while episodes train), ``inner_steps`` (0) and ``inner_lr`` (3.0),
    and any training-loop option (``lr`` 5e-5, ``patience``...).

    ``inner_steps=S`` makes it first-order MAML for the head, in the form of fo-Proto-MAML
    (Triantafillou et al. 2020): in every episode the head starts at the support's
    prototypes and takes S gradient steps on the support, and the query loss of the adapted
    head trains the encoder (through the prototypes; the steps count as constants). The head
    is initialised from prototypes rather than learned, because an episode's classes fill its
    N slots in random order, so one learned initialisation would have to suit every order.
    New classes are adapted the same way: ``meta-eval``, the fitted head and
    ``predict --support`` all take the S steps on their support examples.
    """

    keeps_prototypes = True
    #: how it runs on a frozen-only backbone: prototypes of the raw features
    frozen_with: ClassVar[str] = "--no-meta-train"

    name = "protonet"

    # episodes are the step count: epochs and max_steps would contradict it
    train_options = TRAIN_OPTIONS - {"epochs", "max_steps"}
    option_defaults: ClassVar[dict[str, Any]] = {"lr": 5e-5}
    option_help: ClassVar[dict[str, str]] = {
        "n_way": "Classes per training episode (default: min(5, number of classes)).",
        "k_shot": "Support examples per class in an episode.",
        "n_query": "Query examples per class in an episode.",
        "episodes": "Training episodes (the step budget).",
        "scale": "Softmax scale for unit-norm features.",
        "meta_train": "Meta-train the encoder on episodes (false: raw-feature prototypes).",
        "valid_episodes": "Episodes on the validation split for early stopping.",
        "freeze_batchnorm": "Batch norm keeps its pretrained running statistics.",
        "inner_steps": "fo-Proto-MAML: gradient steps of the head on each support set "
                       "(0: plain prototypes).",
        "inner_lr": "Learning rate of those inner steps.",
    }

    def __init__(self, n_way: int | None = None, k_shot: int = 5, n_query: int = 5,
                 episodes: int = 100, scale: float = DEFAULT_SCALE, meta_train: bool = True,
                 valid_episodes: int = 100, freeze_batchnorm: bool = True,
                 inner_steps: int = 0, inner_lr: float = INNER_LR,
                 **train_options: Any) -> None:
        if episodes < 1 or scale <= 0:
            raise ConfigError("episodes must be >= 1 and scale > 0.")
        if inner_steps < 0 or inner_lr <= 0:
            raise ConfigError(f"inner_steps must be >= 0 and inner_lr > 0 (got {inner_steps} "
                              f"and {inner_lr}).")
        self.inner_steps, self.inner_lr = inner_steps, inner_lr
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.episodes, self.scale, self.meta_train = episodes, scale, meta_train
        self.valid_episodes, self.train_options = valid_episodes, train_options
        self.freeze_batchnorm = freeze_batchnorm
        TrainConfig(**{"lr": 5e-5, **train_options}).validate()

    def trains_backbone(self) -> bool:
        return self.meta_train

    def options(self) -> dict[str, Any]:
        return {"n_way": self.n_way, "k_shot": self.k_shot, "n_query": self.n_query,
                "episodes": self.episodes, "scale": self.scale, "meta_train": self.meta_train,
                "valid_episodes": self.valid_episodes, "freeze_batchnorm": self.freeze_batchnorm,
                "inner_steps": self.inner_steps, "inner_lr": self.inner_lr, **self.train_options}

    def fit(self, model: TransferModel, data: Dataset, ctx: FitContext) -> dict[str, Any]:
        from .contrastive import embed

        if data.multilabel:
            raise ConfigError("protonet needs single-label data (one class per example).")
        backbone, classes = model.backbone, model.classes
        labels = label_indices(data.train, classes)
        n_way = self.n_way or min(5, len(classes))
        inner = {"inner_steps": self.inner_steps, "inner_lr": self.inner_lr}
        info: dict[str, Any] = {"n_way": n_way, "k_shot": self.k_shot, "n_query": self.n_query,
                                **inner}
        scale = None
        if self.meta_train:
            # the softmax scale from the untrained features' norms (a seeded sample of them)
            sample = np.random.default_rng(ctx.seed).choice(
                len(data.train), min(256, len(data.train)), replace=False)
            scale = softmax_scale(embed(backbone, [data.train.inputs[i] for i in sample]
                                        ).numpy(), self.scale)
            check_episodes(labels, classes, n_way, self.k_shot, self.n_query, data.train.source
                           or "training data")
            evaluator = None
            valid = data.valid
            if valid is not None and len(valid):
                v_labels = label_indices(valid, classes)
                try:
                    check_episodes(v_labels, classes, n_way, self.k_shot, self.n_query, "valid")
                except ConfigError as e:  # asked for early stopping: never drop it silently
                    raise ConfigError(f"The validation data cannot make episodes for early "
                                      f"stopping: {e} Give more validation examples per "
                                      "class, or no validation data.") from e
                if valid is not None:
                    def evaluator() -> dict[str, float]:
                        feats = embed(backbone, valid.inputs).numpy()
                        acc = episode_accuracies(feats, v_labels, n_way, self.k_shot,
                                                 self.n_query, self.valid_episodes, ctx.seed,
                                                 scale, **inner)
                        return {"valid_accuracy": float(acc.mean())}
            options = {"lr": 5e-5, "warmup_ratio": 0.1, "patience": 4, **self.train_options}
            options.update(epochs=1, metric="accuracy")
            options.setdefault("eval_every", max(1, self.episodes // 5))
            cfg = TrainConfig(**options)
            sampler = Episodes(labels, n_way, self.k_shot, self.n_query, self.episodes,
                               ctx.seed)
            encoder = TransferModel(backbone, classes, head=nn.Identity())
            params = list(backbone.parameters())
            for p in params:
                p.requires_grad_(True)
            criterion = prototype_criterion(n_way, self.k_shot, self.n_query, scale, **inner)
            result = Trainer(
                encoder, [ParamGroup(params, cfg.lr, 0, "encoder")], cfg,
                BackboneBatches(backbone, data.train.inputs, labels, len(classes)),
                hooks=Hooks(sampler, criterion, evaluator), run=RunSettings.of(ctx),
                frozen=batchnorm_modules(backbone) if self.freeze_batchnorm else []).fit()
            for p in params:
                p.requires_grad_(False)
            backbone.eval()
            backbone.invalidate_fingerprint()
            info["meta_train"] = {k: result[k] for k in (
                "steps", "best_step", "best_valid", "stopped_early", "precision",
                "train_seconds")}
            info["meta_train"]["lr"] = cfg.lr
        feats = ctx.features(model, data.train, "features: prototypes")
        info["scale"] = scale if scale is not None else softmax_scale(feats, self.scale)
        model.head = prototype_head(feats, labels, len(classes), info["scale"], **inner)
        return info


def read_labelled(source: str, classes: list[str] | None = None, *,
                  text_column: str | None = None, label_column: str | None = None,
                  split: str = "train") -> Examples:
    """Labelled single-label examples of ``source`` (its ``split`` when it has several), bad
    rows dropped, only ``classes`` kept when given: the input of meta-train and meta-eval."""
    from ..data import load_examples

    examples = load_examples(source, split=split, text_column=text_column,
                             label_column=label_column)
    if examples.labels is None or not len(examples):
        raise ConfigError(f"{source}: no labelled examples found.")
    if classes:
        found = set(examples.labels)
        missing = sorted(set(classes) - found)
        if missing:
            raise ConfigError(f"--classes names {', '.join(missing)}, not in {source}; its "
                              f"classes are: {', '.join(sorted(found))}.")
        wanted = set(classes)
        examples = examples.subset([i for i, y in enumerate(examples.labels) if y in wanted])
    return examples


def meta_train_data(source: str, classes: list[str] | None = None, *,
                    valid: str | None = None, per_class: int | None = None, seed: int = 0,
                    text_column: str | None = None, label_column: str | None = None
                    ) -> Dataset:
    """The base classes of ``source`` (all of them when ``classes`` is empty) as a Dataset:
    every example trains (meta-evaluation is on other classes), optional label budget."""
    from ..data.examples import DataReport
    from ..data.split import per_class_budget

    train_ex = read_labelled(source, classes, text_column=text_column,
                             label_column=label_column)
    report = DataReport()
    if per_class is not None:
        train_ex = per_class_budget(train_ex, per_class, seed, report)
    valid_ex = read_labelled(valid, classes, text_column=text_column,
                             label_column=label_column, split="valid") if valid else None
    found = sorted(set(train_ex.labels or []))
    return Dataset(train=train_ex, test=train_ex.subset([]), classes=found, valid=valid_ex,
                   report=report)
