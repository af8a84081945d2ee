"""What both pretraining objectives share: the held-out split, the Trainer, throughput.

An objective is an ``nn.Module`` whose ``forward(**batch)`` returns the loss of a batch and
whose ``backbone`` attribute prepares and collates its inputs (what ``BackboneBatches``
needs: ``prepare``, ``cost``, ``collate``, ``modality``). It counts what it trains on in
``units_seen`` (tokens or images), so throughput is measured, not estimated.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from ..config import PretrainConfig
from ..train.batches import BackboneBatches
from ..train.config import RunSettings, TrainConfig
from ..train.optim import ParamGroup
from ..train.trainer import Hooks, Trainer


def holdout(n: int, fraction: float, at_most: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/held-out indices; no held-out part when the corpus is too small for one."""
    order = np.random.default_rng(seed).permutation(n)
    n_valid = min(at_most, int(round(n * fraction)))
    if n_valid < 1 or n - n_valid < 1:
        return np.sort(order), np.array([], dtype=np.int64)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def run_objective(
    objective: nn.Module, train_items: list[Any], cfg: PretrainConfig, *, lr: float,
    batch_size: int, metric: str, evaluator: Callable[[], dict[str, float]] | None,
    run_dir: Any, checkpoint_dir: Any, progress: Any = None, device: Any = None,
    sampler: Callable[[int], list[list[int]]] | None = None,
) -> dict[str, Any]:
    """Train ``objective`` on the one loop; the result adds throughput and evaluation time."""
    steps_per_epoch = math.ceil(len(train_items) / batch_size)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    eval_seconds = [0.0]

    def timed_evaluator() -> dict[str, float]:
        t0 = time.perf_counter()
        try:
            return evaluator()
        finally:
            eval_seconds[0] += time.perf_counter() - t0

    train_cfg = TrainConfig(
        epochs=cfg.epochs, max_steps=cfg.max_steps, lr=lr, weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio, schedule="linear", metric=metric,
        eval_every=cfg.eval_every or max(1, total // 10), patience=cfg.patience,
        checkpoint_every=cfg.checkpoint_every, max_grad_norm=1.0, log_every=10)
    params = [p for p in objective.parameters() if p.requires_grad]
    objective.units_seen = 0
    # the objective returns its own loss; the targets are placeholders the criterion ignores
    items = BackboneBatches(objective.backbone, train_items,
                            np.zeros(len(train_items), dtype=np.int64), 1)
    result = Trainer(
        objective, [ParamGroup(params, lr, 0, "all")], train_cfg, items,
        hooks=Hooks(sampler, lambda loss, _: loss,
                    timed_evaluator if evaluator is not None else None),
        run=RunSettings(seed=cfg.seed, batch_size=batch_size, precision=cfg.precision,
                        device=device, run_dir=run_dir, checkpoint_dir=checkpoint_dir,
                        resume=cfg.resume, progress=progress)).fit()
    log = run_dir / "train_log.jsonl" if run_dir is not None else None
    result["history"] = [json.loads(line) for line in log.read_text().splitlines()] \
        if log is not None and log.is_file() else []
    seconds = max(1e-9, result["train_seconds"] - eval_seconds[0])
    result.update(units_seen=int(objective.units_seen), train_only_seconds=seconds,
                  eval_seconds=eval_seconds[0], units_per_second=objective.units_seen / seconds,
                  planned_steps=total)
    return result
