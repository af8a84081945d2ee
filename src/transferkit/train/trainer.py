"""The one training loop (Accelerate): every strategy that trains anything runs through here.

It owns what a demanding user expects of a loop and nothing else: AdamW with per-group
learning rates (layer-wise decay, zero-LR groups for later unfreezing), warm-up + linear or
cosine decay, gradient accumulation and clipping, class weights, mixed precision, evaluation
every N steps or each epoch, early stopping with restore of the best weights, atomic
checkpoints and exact resume, a JSONL log and optional TensorBoard. Which parameters train is
decided by the caller *before* ``accelerator.prepare`` (DESIGN.md: never flip
``requires_grad`` on a wrapped model).

What differs between callers is handed in as objects, not flags: the data (``Batches``:
a backbone's raw inputs, or ready tensors), the ``TrainConfig``, the ``RunSettings``, and
three ``Hooks`` that let objectives other than classification share all of the above
instead of growing a second loop.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .batches import Batches
from .checkpoint import Checkpoints, TrainState
from .config import LOWER_IS_BETTER, RunSettings, TrainConfig
from .device import default_device, resolve_precision
from .optim import ParamGroup, build_optimizer, default_loss


@dataclass
class Hooks:
    """``sampler(epoch)``: the epoch's batches as lists of indices into the training data
    (class-balanced batches for contrastive tuning, N-way K-shot episodes for prototypical
    networks); deterministic in ``epoch``, since exact resume rebuilds them. Default: the
    data's own order, in batches of ``RunSettings.batch_size``.
    ``criterion(outputs, targets)``: the loss of ``model(**batch)`` against the batch's
    targets (a sentence-transformers loss on embeddings, a prototype loss, an objective
    that returns its own loss). Default: cross-entropy, or BCE for multi-label targets.
    ``evaluator()``: ``{"valid_<metric>": value, ...}`` for early stopping, called with the
    model in eval mode (centroid accuracy, episode accuracy, perplexity). Default:
    classification metrics on the validation data."""

    sampler: Callable[[int], list[list[int]]] | None = None
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    evaluator: Callable[[], dict[str, float]] | None = None


def _accelerator(precision: str, device: torch.device, cfg: TrainConfig, run: RunSettings):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if not torch.distributed.is_initialized():
        # Accelerate keeps process-wide state; a fresh one per run lets one process train
        # several models with different settings (tests, studies).
        AcceleratorState._reset_state(reset_partial_state=True)
    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]
    if cfg.log_with:
        import importlib.util

        module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}.get(
            cfg.log_with, cfg.log_with)
        if importlib.util.find_spec(module) is None and not (
                module == "tensorboard" and importlib.util.find_spec("tensorboardX")):
            raise ConfigError(f"--log-with {cfg.log_with} needs the '{module}' package: "
                              f"pip install {module}")
    return Accelerator(
        mixed_precision=mixed, gradient_accumulation_steps=cfg.grad_accum,
        cpu=device.type == "cpu", log_with=cfg.log_with,
        project_dir=str(run.run_dir) if run.run_dir else None,
    )


class Trainer:
    """Trains ``model`` in place on ``data``: ``Trainer(...).fit()`` returns the facts of the
    run (steps, best step and score, stopped early, precision, seconds).

    ``groups``: the parameters that train and their learning rates (``ParamGroup``);
    ``valid``: the data the default evaluation scores; ``frozen``: modules kept in eval
    mode while the rest trains (frozen layers are deterministic: no dropout, no batch-norm
    updates)."""

    def __init__(self, model: nn.Module, groups: list[ParamGroup], cfg: TrainConfig,
                 data: Batches, *, valid: Batches | None = None, hooks: Hooks | None = None,
                 run: RunSettings | None = None, frozen: list[nn.Module] | None = None) -> None:
        cfg.validate()
        self.model, self.groups, self.cfg, self.data, self.valid = model, groups, cfg, data, valid
        self.hooks, self.run = hooks or Hooks(), run or RunSettings()
        self.frozen = list(frozen or [])
        self.state = TrainState()
        self.best_weights: dict[str, torch.Tensor] | None = None

    # -- the run ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        started = self._setup()
        try:
            self._train()
        finally:  # a failed run must not leave the backbone replaying cached activations
            self.data.stop()
        acc, state = self.accelerator, self.state
        if self.cfg.log_with:
            acc.end_training()
        if self.cfg.restore_best and self.best_weights is not None:
            self.unwrapped.load_state_dict(self.best_weights)
        self.unwrapped.eval()
        acc.wait_for_everyone()
        self.checkpoints.clear()
        result = {
            "steps": state.global_step, "epochs_completed": state.epoch,
            "examples_seen": state.examples_seen * acc.num_processes,
            "trainable_params": sum(p.numel() for g in self.groups for p in g.params),
            "total_params": sum(p.numel() for p in self.unwrapped.parameters()),
            "best_step": state.best_step, "best_valid": state.best_metric,
            "metric": self.metric, "stopped_early": state.stopped_early,
            "precision": self.precision, "train_seconds": time.perf_counter() - self.start,
            "processes": acc.num_processes, **started, "epoch_seconds": self.epoch_seconds,
        }
        if self.run.phases is not None:  # the caller's record of what fitting cost
            self.run.phases.append({k: result[k] for k in (
                "steps", "examples_seen", "trainable_params", "total_params", "train_seconds")})
        return result

    def _setup(self) -> dict[str, Any]:
        """Everything before the first step, in the order exact resume relies on: the
        optimizer and schedule, the data's one-off work, ``accelerator.prepare``, then the
        checkpoint (which restores into the prepared objects) and the log."""
        cfg, run, data = self.cfg, self.run, self.data
        device = run.device or default_device()
        self.precision = resolve_precision(run.precision, device)
        acc = self.accelerator = _accelerator(self.precision, device, cfg, run)
        self.per_process = math.ceil(len(self._order(0)) / acc.num_processes)
        steps_per_epoch = max(1, math.ceil(self.per_process / cfg.grad_accum))
        total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
        optimizer, self.scheduler = build_optimizer(self.model, self.groups, cfg,
                                                    steps_per_epoch, total_steps, device)
        multilabel = data.labels.ndim == 2
        self.metric = "micro_f1" if multilabel and cfg.metric == "accuracy" else cfg.metric
        self.loss_fn = default_loss(data.labels, data.n_classes, cfg, acc.device)
        self.mixer = None
        if (cfg.mixup or cfg.cutmix) and data.modality == "image" and not multilabel:
            from timm.data import Mixup

            self.mixer = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                               num_classes=data.n_classes)
        started = data.start(device=acc.device, precision=self.precision,
                             batch_size=run.batch_size)
        self.wrapped, self.optimizer = acc.prepare(self.model, optimizer)
        acc.register_for_checkpointing(self.scheduler)
        self.unwrapped = acc.unwrap_model(self.wrapped)
        self.checkpoints = Checkpoints(run.checkpoint_dir, acc)
        if run.resume and (restored := self.checkpoints.restore()):
            self.state, self.best_weights = restored
        if cfg.log_with:
            acc.init_trackers("transferkit", config={k: v for k, v in asdict(cfg).items()
                                                     if isinstance(v, int | float | str)})
        self.log_path = run.run_dir / "train_log.jsonl" \
            if run.run_dir and acc.is_main_process else None
        if self.log_path is not None and self.state.history:  # resumed: the earlier entries
            self.log_path.write_text("".join(json.dumps(e) + "\n" for e in self.state.history))
        return started

    def _train(self) -> None:
        cfg, state = self.cfg, self.state
        self.epoch_seconds: list[float] = []
        scoring = self.hooks.evaluator is not None or bool(self.valid is not None
                                                           and len(self.valid))
        if scoring and state.global_step == 0 and not state.history:
            # score the starting point too: with a probe-initialised head it is a real candidate,
            # and restoring the best weights then never ends below where fine-tuning began
            self._record(self._evaluate())
        self.start = time.perf_counter()  # training time: the starting point's score is not
        done = state.stopped_early or (cfg.max_steps is not None
                                       and state.global_step >= cfg.max_steps)
        while not done and state.epoch < cfg.epochs:
            done = self._epoch(scoring)
        if scoring and cfg.eval_every and (state.best_metric is None
                                           or state.global_step > state.best_step):
            self._record(self._evaluate())  # the final weights get a fair chance to be best

    def _order(self, epoch: int) -> list[list[int]]:
        if self.hooks.sampler is not None:
            return self.hooks.sampler(epoch)
        return self.data.order(epoch, self.run.batch_size, self.run.seed)

    def _epoch(self, scoring: bool) -> bool:
        """One epoch (the rest of one, when resumed); True when the run ends inside it."""
        cfg, state, acc = self.cfg, self.state, self.accelerator
        epoch_start = time.perf_counter()
        mine = self._order(state.epoch)[acc.process_index::acc.num_processes]
        mine = mine[:self.per_process]  # equal counts per process keep DDP in lock-step
        running, running_n = 0.0, 0
        for b, idx in enumerate(mine):
            if b < state.batch_in_epoch:
                continue  # resumed: these batches were trained before the interruption
            loss = self._step(idx).item()
            state.batch_in_epoch = b + 1
            state.examples_seen += len(idx)
            running, running_n = running + loss, running_n + 1
            if not acc.sync_gradients:
                continue
            self.scheduler.step()
            state.global_step += 1
            if self.run.progress is not None:
                self.run.progress(f"train epoch {state.epoch + 1}/{cfg.epochs}", b + 1,
                                  len(mine), loss=loss, lr=self.scheduler.get_last_lr()[0],
                                  best=state.best_metric)
            if state.global_step % cfg.log_every == 0:
                self._log_loss(running / running_n)
                running, running_n = 0.0, 0
            if cfg.eval_every and scoring and state.global_step % cfg.eval_every == 0:
                self._record(self._evaluate())
            at_max = bool(cfg.max_steps and state.global_step >= cfg.max_steps)
            if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0:
                self.checkpoints.save(state, self.best_weights)
            if at_max or state.stopped_early:
                return True
        if running_n:
            self._log_loss(running / running_n)
        if not cfg.eval_every and scoring:
            self._record(self._evaluate())
        state.epoch += 1
        state.batch_in_epoch = 0
        self.epoch_seconds.append(time.perf_counter() - epoch_start)
        if not cfg.checkpoint_every and state.epoch < cfg.epochs:
            self.checkpoints.save(state, self.best_weights)  # by default each epoch: --resume
        return state.stopped_early

    def _step(self, idx: list[int]) -> torch.Tensor:
        acc, model = self.accelerator, self.wrapped
        model.train()
        for module in self.frozen:
            module.eval()  # frozen layers are deterministic: no dropout
        batch = {k: v.to(acc.device) for k, v in self.data.collate(idx, augment=True).items()}
        target = torch.from_numpy(self.data.labels[idx]).to(acc.device)
        soft = None
        if self.mixer is not None and len(idx) % 2 == 0:  # timm mixes pairs within a batch
            batch["pixel_values"], soft = self.mixer(batch["pixel_values"], target)
        with self.data.replay(idx), acc.accumulate(model):
            logits = model(**batch).float()
            if self.hooks.criterion is not None:
                loss = self.hooks.criterion(logits, target)
            elif soft is None:
                loss = self.loss_fn(logits, target)
            else:
                loss = torch.sum(-soft * torch.log_softmax(logits, -1), dim=-1).mean()
            acc.backward(loss)
            if acc.sync_gradients and self.cfg.max_grad_norm:
                acc.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    # -- evaluation, early stopping, the log ------------------------------------------------
    def _evaluate(self) -> dict[str, Any]:
        self.wrapped.eval()
        with torch.inference_mode(), self.accelerator.autocast():
            if self.hooks.evaluator is not None:
                return dict(self.hooks.evaluator())
            valid, size, device = self.valid, self.run.batch_size, self.accelerator.device
            parts = []
            for s in range(0, len(valid), size):
                batch = valid.collate(list(range(s, min(s + size, len(valid)))))
                parts.append(self.unwrapped(**{k: v.to(device) for k, v in batch.items()})
                             .float().cpu())
            logits = torch.cat(parts)
        return classification_scores(logits, valid.labels, self.data.n_classes)

    def _record(self, result: dict[str, Any]) -> None:
        """Early stopping's bookkeeping after an evaluation; the best weights are kept."""
        state, value = self.state, result[f"valid_{self.metric}"]
        better = state.best_metric is None or (
            value < state.best_metric - 1e-6 if self.metric in LOWER_IS_BETTER
            else value > state.best_metric + 1e-6)
        if better:
            state.best_metric, state.best_step, state.bad_evals = value, state.global_step, 0
            if self.cfg.restore_best:
                self.best_weights = {k: v.detach().cpu().clone()
                                     for k, v in self.unwrapped.state_dict().items()}
        else:
            state.bad_evals += 1
            if self.cfg.patience is not None and state.bad_evals >= self.cfg.patience:
                state.stopped_early = True
        self._log({"step": state.global_step, "epoch": state.epoch, **result,
                   "best": state.best_metric})

    def _log_loss(self, loss: float) -> None:
        self._log({"step": self.state.global_step, "epoch": self.state.epoch, "loss": loss,
                   "lr": self.scheduler.get_last_lr()[0]})

    def _log(self, entry: dict[str, Any]) -> None:
        self.state.history.append(entry)
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        if self.cfg.log_with:
            self.accelerator.log({k: v for k, v in entry.items() if isinstance(v, int | float)},
                                 step=self.state.global_step)


def classification_scores(logits: torch.Tensor, labels: Any, n_classes: int
                          ) -> dict[str, float]:
    """The default evaluation: ``valid_loss``, ``valid_accuracy``, ``valid_macro_f1`` and
    ``valid_micro_f1`` (the same as accuracy for single-label data)."""
    from ..metrics import compute_metrics, compute_multilabel_metrics

    names = [str(i) for i in range(n_classes)]
    target = torch.from_numpy(labels)
    if labels.ndim == 2:
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target).item()
        m = compute_multilabel_metrics(labels, torch.sigmoid(logits).numpy(), names)
    else:
        loss = nn.functional.cross_entropy(logits, target).item()
        m = compute_metrics(labels, torch.softmax(logits, -1).numpy(), names)
    return {"valid_loss": loss, "valid_accuracy": m["accuracy"], "valid_macro_f1": m["macro_f1"],
            "valid_micro_f1": m.get("micro_f1", m["accuracy"])}
