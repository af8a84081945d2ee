"""The transfer study: strategy x label budget x seed, each a real run on the same test set.

It answers the question a user adopting transfer learning actually has: *for my data*, how
many labels, how much time and compute does the pretrained model save over training from
scratch? Cells are saved one file each as they finish, so an interrupted study (Ctrl-C, a
crash) resumes where it stopped; features of the frozen backbone are computed once for the
whole study through the feature cache.
"""

from __future__ import annotations

import copy
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import write_json
from ..adapt import STRATEGIES
from ..data.examples import DataReport, Dataset
from ..data.split import per_class_budget
from ..errors import ConfigError

BASELINES = ("classic",)  # not a backbone strategy: no pretrained model involved


@dataclass
class StudyPlan:
    budgets: list[int | str]  # labels per class; "all" = the whole training split
    strategies: list[str]
    seeds: list[int]
    backbone: str = "minilm"
    epochs: int = 2  # for every strategy that trains the backbone
    batch_size: int = 32
    precision: str = "auto"
    image_size: int | None = None
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        """Refuse an unknown strategy before anything is read or written."""
        from ..config import did_you_mean

        known = sorted([*STRATEGIES, *BASELINES])
        for s in self.strategies:
            if s not in known:
                raise ConfigError(f"Unknown study strategy '{s}'{did_you_mean(s, known)}. Use "
                                  f"any of: {', '.join(known)}.")

    def cells(self) -> list[tuple[str, int | str, int]]:
        return [(s, b, seed) for seed in self.seeds for b in self.budgets
                for s in self.strategies]


def parse_budgets(text: str) -> list[int | str]:
    out: list[int | str] = []
    for part in str(text).split(","):
        part = part.strip()
        if part == "all":
            out.append("all")
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise ConfigError(f"Budget '{part}' is not a positive number or 'all' "
                              "(example: --budgets 8,32,128,all).")
    return out


def cell_name(strategy: str, budget: int | str, seed: int) -> str:
    return f"{strategy}__{budget}__seed{seed}"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def forward_flops_per_example(backbone: Any, sample: list[Any]) -> float:
    """Forward FLOPs of one example, counted by torch on a real batch (no formula guessing)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = backbone.preprocess(sample)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        backbone(**batch)
    return counter.get_total_flops() / max(1, len(sample))


def run_cell(strategy: str, data: Dataset, plan: StudyPlan, pristine: Any, seed: int,
             flops_per_example: float, memo: dict | None = None) -> dict[str, Any]:
    """One real run: fit on the budgeted training set, evaluate on the shared test set."""
    from ..classifier import Classifier
    from ..train.cache import FeatureCache
    from .baselines import classic_baseline

    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    start = time.perf_counter()
    n_train = len(data.train)
    if strategy == "classic":
        result = classic_baseline(data, seed, cnn=True)  # images: a small CNN, not pixels+LR
        return {"accuracy": result["metrics"]["accuracy"],
                "macro_f1": result["metrics"]["macro_f1"], "n_train": n_train,
                "wall_seconds": time.perf_counter() - start, "extract_seconds": 0.0,
                "train_seconds": result["seconds"], "trainable_params": None,
                "total_params": None, "train_flops": None, "model": result["name"],
                "peak_rss_mb": _peak_rss_mb()}
    kind = STRATEGIES[strategy]  # what the strategy says of itself, not its name
    trains_backbone = not kind.frozen_backbone
    options = {**({"epochs": plan.epochs} if kind.takes_epochs else {}),
               **plan.strategy_options.get(strategy, {})}
    backbone = copy.deepcopy(pristine) if trains_backbone else pristine
    clf = Classifier(backbone, strategy, strategy_options=options, seed=seed,
                     batch_size=plan.batch_size, precision=plan.precision)
    clf.context.cache = FeatureCache()
    clf.context.memo = memo
    clf.fit(data)
    n_fit_extract = len(clf.context.extraction)
    metrics = clf.evaluate(data)
    info = clf.fit_info
    model = clf.model
    total = sum(p.numel() for p in model.parameters())
    trainable = info.get("trainable_params", sum(p.numel() for p in model.head.parameters()))
    epochs = info.get("epochs_completed", 0) if "steps" in info else 0
    # Estimated training FLOPs, whether or not features came from a cache (the compute is
    # this cell's either way): one forward pass over the budget (probe features / head
    # initialisation), then per epoch a forward pass plus a backward pass of about twice the
    # forward cost for the share of parameters that train.
    share = trainable / total if total else 0.0
    flops = flops_per_example * n_train * (1 + epochs * (1 + 2 * share))
    extracted = sum(s.n for s in clf.context.extraction[:n_fit_extract] if not s.from_cache)
    out = {
        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n_train": n_train,
        "wall_seconds": time.perf_counter() - start,
        "extract_seconds": clf.timings.get("extract", 0.0),
        "train_seconds": clf.timings.get("fit_head", 0.0), "trainable_params": int(trainable),
        "total_params": int(total), "train_flops": float(flops), "model": strategy,
        "peak_rss_mb": _peak_rss_mb(), "features_from_cache": extracted == 0,
    }
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_study(data: Dataset, plan: StudyPlan, out: Path,
              progress: Callable[..., None] | None = None,
              claim_out: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run every missing cell, then derive the figures and write the report.

    ``claim_out`` prepares the study folder; it is called once the backbone has loaded, so
    a study that cannot start leaves the folder as it was."""
    from ..backbones import load_backbone
    from .study_report import summarise, write_study_report

    plan.validate()
    needs_backbone = any(s not in BASELINES for s in plan.strategies)
    pristine = load_backbone(plan.backbone, image_size=plan.image_size) if needs_backbone \
        else None
    if claim_out is not None:
        claim_out()
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    flops = forward_flops_per_example(pristine, data.train.inputs[:16]) if pristine else 0.0
    memo: dict = {}
    t_shared = time.perf_counter()
    if pristine is not None:  # the frozen backbone's features, once for the whole study
        from ..adapt import FitContext, TransferModel
        from ..train.cache import FeatureCache
        from ..train.device import resolve_device

        ctx = FitContext(batch_size=plan.batch_size, precision=plan.precision,
                         device=resolve_device("auto"), cache=FeatureCache(), memo=memo,
                         progress=progress)
        frozen = TransferModel(pristine, data.classes)
        pool = data.train
        if "all" not in plan.budgets:  # only the examples some cell will use
            top = max(int(b) for b in plan.budgets)
            chosen = sorted({o for seed in plan.seeds for o in per_class_budget(
                data.train, top, seed, DataReport()).origins})
            position = {o: i for i, o in enumerate(data.train.origins)}
            pool = data.train.subset([position[o] for o in chosen])
        ctx.features(frozen, pool, "features: train (once for the study)")
        ctx.features(frozen, data.test, "features: test (once for the study)")
    shared_seconds = time.perf_counter() - t_shared
    todo = plan.cells()
    durations: list[float] = []
    for i, (strategy, budget, seed) in enumerate(todo):
        path = cells_dir / f"{cell_name(strategy, budget, seed)}.json"
        if path.is_file():  # finished before: a rerun skips it
            continue
        if progress is not None:
            remaining = sum(not (cells_dir / f"{cell_name(*c)}.json").is_file()
                            for c in todo[i:])
            eta = np.mean(durations) * remaining if durations else None
            progress("study", i, len(todo), eta=eta,
                     detail=f"{strategy} {budget}/class seed {seed}")
        train = data.train if budget == "all" else per_class_budget(
            data.train, int(budget), seed, DataReport())
        cell_data = replace(data, train=train)
        t0 = time.perf_counter()
        record = run_cell(strategy, cell_data, plan, pristine, seed, flops, memo)
        durations.append(time.perf_counter() - t0)
        record.update({"strategy": strategy, "budget": budget, "seed": seed})
        write_json(path, record)  # atomic: a cell is saved whole or not at all
    if progress is not None:
        progress("study", len(todo), len(todo))
    cells = [json.loads((cells_dir / f"{cell_name(*c)}.json").read_text()) for c in todo]
    summary = summarise(cells, plan, data)
    summary["shared_extraction_seconds"] = shared_seconds
    write_study_report(out, summary)
    return summary
