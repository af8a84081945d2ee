"""What a training run optimises (``TrainConfig``) and where it runs (``RunSettings``).

They are two objects because they change for different reasons: a strategy decides the
first (its options *are* ``TrainConfig`` fields, ``TRAIN_OPTIONS``), while the second comes
from the caller's run (seed, device, the run and checkpoint folders) and is the same for
every strategy of that run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from ..errors import ConfigError

Schedule = Literal["linear", "cosine", "constant"]
Metric = Literal["accuracy", "macro_f1", "micro_f1", "loss", "perplexity"]
SCHEDULES, METRICS = get_args(Schedule), get_args(Metric)
LOWER_IS_BETTER = ("loss", "perplexity")


def _opt(default: Any, help: str) -> Any:  # noqa: A002  (the option's help text)
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """The training loop's options; each field's help is what ``transferkit strategies`` and
    the ``fit`` flags show."""

    epochs: int = _opt(3, "Passes over the training data (the most; early stopping may end "
                          "sooner).")
    lr: float = _opt(5e-5, "Peak learning rate.")
    head_lr: float | None = _opt(None, "Learning rate of the head (default: lr).")
    weight_decay: float = _opt(0.01, "AdamW weight decay.")
    warmup_ratio: float = _opt(0.1, "Share of the steps spent warming the LR up.")
    schedule: Schedule = _opt(
        "linear", "LR schedule after warm-up.")
    grad_accum: int = _opt(1, "Gradient accumulation steps.")
    max_grad_norm: float | None = _opt(1.0, "Clip gradients to this norm (unset: no clipping).")
    class_weights: Literal["balanced"] | None = _opt(
        None, "'balanced': weigh the loss by inverse class frequency.")
    eval_every: int | None = _opt(None, "Evaluate every N optimizer steps (default: each "
                                        "epoch).")
    metric: Metric = _opt(
        "accuracy", "Early-stopping metric on the validation data.")
    patience: int | None = _opt(3, "Early stopping: evaluations without improvement "
                                   "(unset: never stop early).")
    restore_best: bool = _opt(True, "End with the weights of the best evaluation.")
    checkpoint_every: int | None = _opt(None, "Checkpoint every N steps for --resume "
                                              "(default: each epoch).")
    max_steps: int | None = _opt(None, "Stop after this many optimizer steps.")
    log_every: int = _opt(10, "Log the loss every N steps.")
    log_with: str | None = _opt(None, "Experiment tracker for Accelerate, e.g. tensorboard.")
    mixup: float = _opt(0.0, "Images: mixup alpha (0 = off).")
    cutmix: float = _opt(0.0, "Images: cutmix alpha (0 = off).")

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"Unknown schedule '{self.schedule}': use {', '.join(SCHEDULES)}.")
        if self.metric not in METRICS:
            raise ConfigError(f"Unknown metric '{self.metric}': use {', '.join(METRICS)}.")
        if self.epochs < 1 or self.lr <= 0 or self.grad_accum < 1:
            raise ConfigError("epochs and grad_accum must be >= 1 and lr > 0.")
        if self.class_weights not in (None, "balanced"):
            raise ConfigError("class_weights must be 'balanced' or unset.")


TRAIN_OPTIONS = frozenset(f.name for f in fields(TrainConfig))  # strategies pass these on


@dataclass
class RunSettings:
    """Where and how one run trains. ``batch_size`` is the default batching's size (a
    ``sampler`` hook sizes its own batches); ``checkpoint_dir`` None means no checkpoints,
    ``run_dir`` None no ``train_log.jsonl``; ``progress(stage, done, total, **numbers)``."""

    seed: int = 0
    batch_size: int = 32
    precision: str = "auto"
    device: torch.device | None = None
    run_dir: Path | None = None
    checkpoint_dir: Path | None = None
    resume: bool = False
    progress: Callable[..., None] | None = None
    #: each finished training run appends its cost here (steps, examples seen, parameters)
    phases: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, context: Any, **changes: Any) -> RunSettings:
        """The settings ``context`` holds under the same names (a strategy's ``FitContext``
        holds them all), with ``changes`` on top. Read by name because the contexts live in
        layers above ``train``, which may not import them."""
        given = {f.name: getattr(context, f.name) for f in fields(cls) if hasattr(context, f.name)}
        return cls(**{**given, **changes})
