"""What a training run optimises (``TrainConfig``) and where it runs (``RunSettings``).

They are two objects because they change for different reasons: a strategy decides the
first (its options *are* ``TrainConfig`` fields, ``TRAIN_OPTIONS``), while the second comes
from the caller's run (seed, device, the run and checkpoint folders) and is the same for
every strategy of that run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

SCHEDULES = ("linear", "cosine", "constant")
METRICS = ("accuracy", "macro_f1", "micro_f1", "loss", "perplexity")
LOWER_IS_BETTER = ("loss", "perplexity")


@dataclass
class TrainConfig:
    epochs: int = 3
    lr: float = 5e-5
    head_lr: float | None = None  # default: same as lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: str = "linear"
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    class_weights: str | None = None  # "balanced": inverse class frequency
    eval_every: int | None = None  # optimizer steps; None: at the end of every epoch
    metric: str = "accuracy"
    patience: int | None = 3  # evaluations without improvement before stopping
    restore_best: bool = True
    checkpoint_every: int | None = None  # optimizer steps; None: at the end of each epoch
    max_steps: int | None = None
    log_every: int = 10
    log_with: str | None = None  # "tensorboard"
    mixup: float = 0.0  # images: mixup alpha (timm.data.Mixup); 0 = off
    cutmix: float = 0.0  # images: cutmix alpha; 0 = off

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

    @classmethod
    def of(cls, context: Any, **changes: Any) -> RunSettings:
        """The settings ``context`` holds under the same names (a strategy's ``FitContext``
        holds them all), with ``changes`` on top. Read by name because the contexts live in
        layers above ``train``, which may not import them."""
        given = {f.name: getattr(context, f.name) for f in fields(cls) if hasattr(context, f.name)}
        return cls(**{**given, **changes})
