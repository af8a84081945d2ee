"""The one recipe for a model trained from random weights: tune on a held-out part, refit.

A no-pretraining baseline is only honest when it gets the tuning a careful practitioner
would give it *within the same label budget*: a learning rate chosen on held-out examples
and early stopping, not a constant that happened to suit one data set. So, for one budget:

1. carve a stratified validation part out of the budget's training examples
   (``carve_validation``: ~20%, at least one example of each class on each side where the
   class has two);
2. for each learning rate of a small grid, train a fresh model (``torch.manual_seed(seed)``
   before each build) on the rest, stopping early on the validation part (epochs capped,
   ``patience``);
3. keep the learning rate with the best validation score, and the epoch where it peaked;
4. refit a fresh model, same seed, on the *whole* budget for that many epochs at that rate.

Every example seen and every optimizer step, over the grid *and* the refit, is counted in
the cost: what tuning cost is part of what training from scratch costs.

The recipe only orchestrates. One trial is a ``train_one(TrialPlan) -> Trial`` callable, so
any model (a plain ``nn.Module`` on ready tensors, or a strategy's ``TransferModel``) can
use it; ``trainer_trial`` makes that callable for a ``build_model()`` and a batches factory
on the one ``Trainer``, and ``fit_from_scratch`` is both steps in one call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .batches import Batches
from .config import LOWER_IS_BETTER, RunSettings, TrainConfig
from .optim import ParamGroup
from .trainer import Trainer


@dataclass
class Carve:
    """The budget's indices split for tuning. ``held_out`` False: no class had two examples,
    so ``valid_idx`` is a copy of ``train_idx`` (early stopping then watches how well the
    training examples are fitted); ``note`` says so, and when some classes sit out."""

    train_idx: np.ndarray
    valid_idx: np.ndarray
    held_out: bool
    note: str = ""


def carve_validation(labels: np.ndarray, fraction: float = 0.2, seed: int = 0) -> Carve:
    """Hold out about ``fraction`` of each class, never a class's last training example.

    A class with a single example stays in training only: the model must see it, and one
    validation example of it would say little. Multi-label targets (a 0/1 matrix) are
    stratified on each row's first label."""
    labels = np.asarray(labels)
    strata = labels.argmax(1) if labels.ndim == 2 else labels
    rng = np.random.default_rng([seed, 7])  # its own stream: the split never moves the init
    train: list[int] = []
    valid: list[int] = []
    single: list[str] = []
    for c in np.unique(strata):
        members = np.flatnonzero(strata == c)
        members = members[rng.permutation(len(members))]
        if len(members) < 2:
            single.append(str(c))
            train.extend(members.tolist())
            continue
        k = min(len(members) - 1, max(1, round(fraction * len(members))))
        valid.extend(members[:k].tolist())
        train.extend(members[k:].tolist())
    train_idx = np.sort(np.asarray(train, dtype=np.int64))
    if not valid:
        return Carve(train_idx, train_idx.copy(), False,
                     "no class has two examples: validated on a copy of the training examples")
    note = f"classes with one example train only: {', '.join(single)}" if single else ""
    return Carve(train_idx, np.sort(np.asarray(valid, dtype=np.int64)), True, note)


@dataclass
class TrialPlan:
    """One training run of the recipe. ``valid_idx`` None: the refit, which trains exactly
    ``epochs`` epochs with nothing to stop on; else stop after ``patience`` epochs without
    improvement on ``valid_idx`` and keep the best weights. Indices are into the caller's
    training examples; ``seed`` seeds the model's build and the batch order."""

    lr: float
    train_idx: np.ndarray
    valid_idx: np.ndarray | None
    epochs: int
    patience: int | None
    seed: int


@dataclass
class Trial:
    """What one run gives back. ``best_epoch``: epochs of training behind the best validation
    score (0: the untrained model scored best); ``best_loss`` breaks ties between learning
    rates on a coarse score (accuracy on a handful of examples)."""

    model: Any
    metric: str
    best_score: float | None
    best_epoch: int
    epochs: int
    steps: int
    examples_seen: int
    examples_evaluated: int = 0
    best_loss: float | None = None

    @classmethod
    def from_fit(cls, model: Any, result: dict[str, Any], n_train: int, n_valid: int = 0,
                 history: Sequence[dict[str, Any]] = ()) -> Trial:
        """A finished ``Trainer.fit()`` (evaluated once per epoch, the default) as a Trial;
        ``history`` (the trainer's ``state.history``) gives the loss at the best step and the
        number of evaluations, else they are inferred from ``result``."""
        epochs, steps, metric = result["epochs_completed"], result["steps"], result["metric"]
        per_epoch = max(1, steps // epochs) if epochs else 1
        evals = [e for e in history if f"valid_{metric}" in e]
        at_best = [e.get("valid_loss") for e in evals if e["step"] == result["best_step"]]
        best_loss = at_best[0] if at_best else (result["best_valid"] if metric == "loss"
                                                 else None)
        n_evals = len(evals) if history else (epochs + 1 if n_valid else 0)
        return cls(model=model, metric=metric, best_score=result["best_valid"],
                   best_epoch=(result["best_step"] or 0) // per_epoch, epochs=epochs,
                   steps=steps, examples_seen=result.get("examples_seen", epochs * n_train),
                   examples_evaluated=n_evals * n_valid, best_loss=best_loss)


TrainOne = Callable[[TrialPlan], Trial]

# Early stopping counts epochs, and at a small budget an epoch is one or two optimizer steps:
# a tuning trial's patience and cap get at least these many steps, so a model from random
# weights is not stopped before it has had a chance to move (measured on rotten_tomatoes at
# 32 labels per class: with 3 epochs of patience, 6 steps, the fastText baseline stopped at
# its starting loss and predicted one class).
MIN_PATIENCE_STEPS = 20
MIN_CAP_STEPS = 150


def trial_budget(plan: TrialPlan, batch_size: int, min_patience_steps: int = MIN_PATIENCE_STEPS,
                 min_cap_steps: int = MIN_CAP_STEPS) -> tuple[int, int | None]:
    """(epochs, patience) for ``plan`` at ``batch_size``: the plan's own for the refit,
    stretched to ``min_cap_steps`` and ``min_patience_steps`` for a tuning trial."""
    if plan.valid_idx is None:
        return plan.epochs, plan.patience
    per_epoch = max(1, math.ceil(len(plan.train_idx) / batch_size))
    patience = None if plan.patience is None else max(
        plan.patience, math.ceil(min_patience_steps / per_epoch))
    return max(plan.epochs, math.ceil(min_cap_steps / per_epoch)), patience

# A constant learning rate without warm-up: the epoch at which a run peaked on the validation
# part then means the same in the refit (a decaying schedule would be stretched by the cap).
# Early stopping on accuracy, what the baselines report; pass ``metric="loss"`` where a few
# hundred validation examples make accuracy too coarse to stop on.
SCRATCH_CONFIG = TrainConfig(warmup_ratio=0.0, schedule="constant", weight_decay=0.0,
                             max_grad_norm=None)


@dataclass
class RecipeResult:
    """The refitted model; ``cost`` (examples_seen, steps, examples_evaluated, trainable and
    total params, train_flops when a forward cost was given, wall_seconds) covers the grid
    and the refit; ``info`` holds the choice (lr, epochs), the grid's scores and the
    validation split's sizes and notes."""

    model: Any
    cost: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> dict[str, Any]:
        return {"lr": self.info["lr"], "epochs": self.info["epochs"]}


def _params(model: Any) -> tuple[int, int]:
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def run_recipe(train_one: TrainOne, labels: np.ndarray, *, lrs: Sequence[float],
               max_epochs: int = 30, patience: int = 3, seed: int = 0,
               valid_fraction: float = 0.2, max_examples: int | None = None,
               flops_per_example: float | None = None) -> RecipeResult:
    """Grid over ``lrs`` with early stopping on a carved validation part, then the refit on
    all of ``labels``' examples (see the module's docstring). Ties on the validation score go
    to the lower validation loss, then to the earlier rate of ``lrs``.

    ``max_examples``: a cap on the examples one run of the grid may see, which lowers the
    epoch cap where the budget is large (60,000 images at 40 epochs would take hours on a
    CPU); ``info["notes"]`` says when the chosen run was still improving at the cap.

    ``flops_per_example``: the model's forward FLOPs for one example; training is counted as
    three forward passes (forward + a backward of about twice its cost), validation as one."""
    if not lrs:
        raise ValueError("run_recipe needs at least one learning rate")
    start = time.perf_counter()
    labels = np.asarray(labels)
    carve = carve_validation(labels, valid_fraction, seed)
    cap = max_epochs if max_examples is None else \
        max(1, min(max_epochs, max_examples // max(1, len(carve.train_idx))))
    trials = [train_one(TrialPlan(lr, carve.train_idx, carve.valid_idx, cap, patience, seed))
              for lr in lrs]

    def rank(t: Trial) -> tuple[float, float]:
        score = -math.inf if t.best_score is None else float(t.best_score)
        if t.metric in LOWER_IS_BETTER:
            score = -score
        return score, -(t.best_loss if t.best_loss is not None else math.inf)

    best_i = max(range(len(trials)), key=lambda i: (rank(trials[i]), -i))
    # at least one epoch: a random model that no epoch beat on a tiny validation part is
    # still better trained a little than not at all
    epochs = max(1, trials[best_i].best_epoch)
    notes = [carve.note] if carve.note else []
    if trials[best_i].best_epoch >= trials[best_i].epochs:  # its last epoch was its best
        notes.append(f"the chosen run was still improving at its {trials[best_i].epochs}-epoch "
                     "cap")
    final = train_one(TrialPlan(lrs[best_i], np.arange(len(labels)), None, epochs, None, seed))
    runs = [*trials, final]
    trainable, total = _params(final.model)
    seen = sum(t.examples_seen for t in runs)
    evaluated = sum(t.examples_evaluated for t in runs)
    cost = {"examples_seen": seen, "steps": sum(t.steps for t in runs),
            "examples_evaluated": evaluated, "trainable_params": trainable,
            "total_params": total,
            "train_flops": None if flops_per_example is None
            else float(flops_per_example * (3 * seen + evaluated)),
            "wall_seconds": time.perf_counter() - start}
    info = {"lr": float(lrs[best_i]), "epochs": epochs, "metric": trials[best_i].metric,
            "grid": [{"lr": float(lr), "best_score": t.best_score, "best_loss": t.best_loss,
                      "best_epoch": t.best_epoch, "epochs_run": t.epochs}
                     for lr, t in zip(lrs, trials, strict=True)],
            "validation": "held-out" if carve.held_out else "training copy",
            "epoch_cap": cap, "n_tune_train": len(carve.train_idx),
            "n_valid": len(carve.valid_idx), "notes": notes}
    return RecipeResult(final.model, cost, info)


def trainer_trial(build_model: Callable[[], nn.Module], batches: Callable[[np.ndarray], Batches],
                  cfg: TrainConfig | None = None, run: RunSettings | None = None, *,
                  min_steps: tuple[int, int] = (MIN_PATIENCE_STEPS, MIN_CAP_STEPS)) -> TrainOne:
    """``train_one`` on the one ``Trainer``: ``build_model()`` after ``torch.manual_seed``,
    all its parameters in one group at the plan's rate, ``batches(indices)`` for the train
    and validation parts. ``cfg`` holds the rest (default ``SCRATCH_CONFIG``); its ``lr``,
    ``epochs`` and ``patience`` come from each plan, stretched for a tuning trial to at least
    ``min_steps`` = (patience, cap) optimizer steps (``trial_budget``)."""
    base = cfg or SCRATCH_CONFIG
    run = run or RunSettings(precision="fp32")

    def train_one(plan: TrialPlan) -> Trial:
        torch.manual_seed(plan.seed)
        model = build_model()
        data = batches(plan.train_idx)
        valid = None if plan.valid_idx is None else batches(plan.valid_idx)
        epochs, patience = trial_budget(plan, run.batch_size, *min_steps)
        trainer = Trainer(model, [ParamGroup(list(model.parameters()), plan.lr)],
                          replace(base, lr=plan.lr, epochs=epochs, patience=patience),
                          data, valid=valid, run=replace(run, seed=plan.seed, resume=False,
                                                         checkpoint_dir=None, run_dir=None))
        result = trainer.fit()
        return Trial.from_fit(trainer.unwrapped, result, len(data),
                              0 if valid is None else len(valid), trainer.state.history)

    return train_one


def fit_from_scratch(build_model: Callable[[], nn.Module],
                     batches: Callable[[np.ndarray], Batches], labels: np.ndarray, *,
                     lrs: Sequence[float], max_epochs: int = 30, patience: int = 3,
                     seed: int = 0, valid_fraction: float = 0.2, max_examples: int | None = None,
                     cfg: TrainConfig | None = None, run: RunSettings | None = None,
                     flops_per_example: float | None = None,
                     min_steps: tuple[int, int] = (MIN_PATIENCE_STEPS, MIN_CAP_STEPS)
                     ) -> RecipeResult:
    """``run_recipe`` over ``trainer_trial``: the whole recipe for a plain torch model."""
    return run_recipe(trainer_trial(build_model, batches, cfg, run, min_steps=min_steps),
                      labels, lrs=lrs,
                      max_epochs=max_epochs, patience=patience, seed=seed,
                      valid_fraction=valid_fraction, max_examples=max_examples,
                      flops_per_example=flops_per_example)
