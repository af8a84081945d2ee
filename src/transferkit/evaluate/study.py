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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import write_json
from ..adapt import STRATEGIES
from ..data.examples import AUDIO, IMAGE, TEXT, DataReport, Dataset
from ..data.split import per_class_budget
from ..errors import ConfigError
from .baselines import no_pretraining_baselines

# Not backbone strategies: no pretrained model involved (which ones apply depends on the data)
BASELINES = tuple(sorted({b for m in (TEXT, IMAGE, AUDIO) for b in no_pretraining_baselines(m)}))
ALL_BASELINES = "baselines"  # in a study's strategies: every baseline of the data's modality


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
    clip_seconds: float | None = None  # audio: None is DEFAULT_CLIP_SECONDS
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self, modality: str | None = None) -> None:
        """Refuse an unknown strategy (or a baseline of another modality) before anything is
        read or written."""
        from ..config import did_you_mean

        baselines = sorted(no_pretraining_baselines(modality)) if modality else \
            [*BASELINES, ALL_BASELINES]
        known = sorted([*STRATEGIES, *baselines])
        for s in self.strategies:
            if s not in known:
                raise ConfigError(f"Unknown study strategy '{s}'{did_you_mean(s, known)}. Use "
                                  f"any of: {', '.join(known)}.")

    def resolve(self, modality: str) -> None:
        """``baselines`` becomes every no-pretraining baseline of the data's modality."""
        named: list[str] = []
        for s in self.strategies:
            named += sorted(no_pretraining_baselines(modality)) if s == ALL_BASELINES else [s]
        self.strategies = list(dict.fromkeys(named))
        self.validate(modality)

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


def _reset_peak_rss() -> bool:
    """Start a new resident-memory peak for this process (Linux: ``clear_refs`` 5 resets
    VmHWM), so each cell reports its own peak; False where the OS cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset: bool) -> float:
    """Peak resident memory since the last reset (else since the process started)."""
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, else KiB
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


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
    """One real run: fit on the budgeted training set, evaluate on the shared test set, and
    say what it cost, the same way for every strategy and baseline."""
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    own_peak = _reset_peak_rss()
    start = time.perf_counter()
    baselines = no_pretraining_baselines(data.modality)
    if strategy in baselines:
        out = _baseline_cell(baselines[strategy](data, seed))
    else:
        out = _strategy_cell(strategy, data, plan, pristine, seed, flops_per_example, memo)
    out.update({"n_train": len(data.train), "wall_seconds": time.perf_counter() - start,
                "peak_rss_mb": _peak_rss_mb(own_peak), "peak_rss_scope":
                "cell" if own_peak else "process"})
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _baseline_cell(result: dict[str, Any]) -> dict[str, Any]:
    cost = result.get("cost", {})
    return {"accuracy": result["metrics"]["accuracy"], "macro_f1": result["metrics"]["macro_f1"],
            "extract_seconds": 0.0, "train_seconds": result["seconds"],
            "trainable_params": cost.get("trainable_params"),
            "total_params": cost.get("total_params"), "train_flops": cost.get("train_flops"),
            "steps": cost.get("steps"), "examples_seen": cost.get("examples_seen"),
            "model": result["name"], "pretrained": False, "chosen": result.get("chosen", {})}


def _strategy_cell(strategy: str, data: Dataset, plan: StudyPlan, pristine: Any, seed: int,
                   flops_per_example: float, memo: dict | None) -> dict[str, Any]:
    from ..classifier import Classifier
    from ..train.cache import FeatureCache

    kind = STRATEGIES[strategy]  # what the strategy says of itself, not its name
    options = {**({"epochs": plan.epochs} if kind.takes_epochs else {}),
               **plan.strategy_options.get(strategy, {})}
    backbone = pristine if kind.frozen_backbone else copy.deepcopy(pristine)
    clf = Classifier(backbone, strategy, strategy_options=options, seed=seed,
                     batch_size=plan.batch_size, precision=plan.precision)
    clf.context.cache = FeatureCache()
    clf.context.memo = memo
    clf.fit(data)
    metrics = clf.evaluate(data)
    cost = clf.fit_info["cost"]
    total = cost["total_params"]
    # Estimated FLOPs, whether or not features came from a cache (the compute is this
    # cell's either way): one forward pass per example through the backbone for features,
    # then for every training run a forward pass plus a backward pass of about twice the
    # forward cost for the share of parameters that train.
    passes = cost["examples_extracted"] + cost["examples_from_cache"] + sum(
        p["examples_seen"] * (1 + 2 * p["trainable_params"] / total) for p in cost["phases"])
    return {
        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
        "extract_seconds": clf.timings.get("extract", 0.0),
        "train_seconds": clf.timings.get("fit_head", 0.0),
        "trainable_params": int(cost["trainable_params"]), "total_params": int(total),
        "train_flops": float(flops_per_example * passes), "steps": cost["steps"],
        "examples_seen": cost["examples_seen"], "training_runs": cost["training_runs"],
        "model": strategy, "pretrained": kind.pretrained,
        "features_from_cache": cost["examples_extracted"] == 0,
    }


def provenance(plan: StudyPlan) -> dict[str, Any]:
    """What a number can be traced to: the code, the libraries and the whole resolved plan."""
    import platform
    from dataclasses import asdict
    from importlib.metadata import PackageNotFoundError, version

    from .._version import __version__, git_commit

    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "timm", "scikit-learn", "numpy", "peft"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return {"transferkit": __version__, "commit": git_commit(), "versions": versions,
            "plan": asdict(plan), "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}


def run_study(data: Dataset, plan: StudyPlan, out: Path,
              progress: Callable[..., None] | None = None,
              claim_out: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run every missing cell, then derive the figures and write the report.

    ``claim_out`` prepares the study folder; it is called once the backbone has loaded, so
    a study that cannot start leaves the folder as it was."""
    from ..backbones import load_backbone
    from .study_report import summarise, write_study_report

    plan.resolve(data.modality)
    needs_backbone = any(s in STRATEGIES for s in plan.strategies)
    pristine = load_backbone(plan.backbone, image_size=plan.image_size,
                             clip_seconds=plan.clip_seconds) if needs_backbone else None
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
    summary["provenance"] = provenance(plan)
    write_study_report(out, summary)
    return summary
