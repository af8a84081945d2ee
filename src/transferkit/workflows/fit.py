"""``transferkit fit``: data -> fit -> evaluate -> a run folder with its report."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__, git_commit
from .._io import write_json, write_text
from .._outputs import checkpoint_dir_for, fresh_run_dir, staged_output
from ..adapt import FitContext, get_strategy
from ..artifact.store import save_model
from ..classifier import Classifier
from ..config import FitConfig, dump_yaml
from ..data import Dataset, issue_summary, load_data
from ..data.split import per_class_budget
from ..errors import ConfigError
from ..evaluate.baselines import classic_baseline
from ..evaluate.report import write_model_card, write_run_report
from ..select.rank import Ranking, rank
from ..train.cache import FeatureCache
from ..train.device import resolve_device

log = logging.getLogger("transferkit")
AUTO = "auto"  # --backbone auto: rank the candidates, fit the best
Progress = Callable[..., None]  # (stage, done, total, **extra: loss, lr, best)


@dataclass
class RunResult:
    out: Path
    metrics: dict[str, Any]
    report: Path
    comparison: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    data_lines: list[str] = field(default_factory=list)  # rows skipped, where, and why


def fit_run(config: FitConfig, progress: Progress | None = None,
            data: Dataset | None = None) -> RunResult:
    """Everything ``transferkit fit`` does: data -> fit -> evaluate -> artifact + report."""
    start = time.perf_counter()
    get_strategy(config.strategy, config.strategy_options)  # bad options: before any reading
    if config.candidates and config.backbone != AUTO:
        raise ConfigError(f"--candidates is for --backbone auto (it names the backbones to "
                          f"rank); the backbone here is '{config.backbone}'. Drop one of them.")
    if config.out is None:
        if "RANK" in os.environ:  # each process would pick its own time-stamped folder
            raise ConfigError("Under torchrun / accelerate launch pass --out: every process "
                              "must use the same run folder.")
        config = config.model_copy(update={"out": str(fresh_run_dir(config.train,
                                                                    config.strategy))})
    out = Path(config.out)
    if config.resume and not checkpoint_dir_for(out).is_dir():
        log.warning("--resume: no checkpoint at %s (the run was killed before its first one, "
                    "or finished), so training starts from the beginning.",
                    checkpoint_dir_for(out))
    # Under `accelerate launch` / torchrun every rank runs this; only rank 0 writes the run.
    main_process = int(os.environ.get("RANK", "0")) == 0
    inputs = [config.train, config.valid, config.test]
    with staged_output(out, config.overwrite, main_process, inputs=inputs) as stage:
        if data is None:
            data = load_data(
                config.train, config.valid, config.test, text_column=config.text_column,
                label_column=config.label_column, per_class=config.per_class, seed=config.seed,
                test_size=config.test_size, strict=config.strict,
                max_bad_fraction=config.max_bad_fraction, label_delimiter=config.label_delimiter,
                max_text_chars=config.max_text_chars,
            )
        ranking = None
        if config.backbone == AUTO:
            ranking, config, memo = _choose_backbone(config, data, progress)
        clf = _classifier(config)
        if ranking is not None:  # the ranked candidates' features serve the fit
            clf.context.memo = memo
            write_json(stage / "rank.json", ranking.to_dict())
        clf.context.progress = progress
        clf.context.run_dir = stage
        clf.context.checkpoint_dir = checkpoint_dir_for(out)
        clf.context.resume = config.resume
        clf.fit(data)
        n_before = len(clf.context.extraction)
        metrics = clf.evaluate(data)
        extraction = clf.context.extraction
        extract_seconds = clf.timings["extract"] + sum(s.seconds for s in extraction[n_before:])
        comparison = []
        if config.compare_baseline and not data.multilabel:
            comparison = compare_with_baseline(config, data, clf, metrics)
        model = clf._require_model()
        save_model(model, stage, clf.strategy_record())
        title = f"{Path(str(config.train)).name} · {config.backbone} · {config.strategy}"
        run = {
            "title": title, "strategy": config.strategy, "seed": config.seed,
            "version": __version__, "commit": git_commit(),
            "precision": extraction[0].precision if extraction else "",
            "cached": bool(extraction) and all(s.from_cache for s in extraction),
            "extract_seconds": extract_seconds, "fit_seconds": clf.timings["fit_head"],
            "total_seconds": time.perf_counter() - start,
            "strategy_info": _info_text(clf.fit_info),
            "data_issues": issue_summary(data.report), "data_lines": data.report.lines(),
            "python": platform.python_version(), "torch": torch.__version__,
        }
        context = {"metrics": metrics, "run": run, "data": data.summary(),
                   "backbone": model.backbone.describe(), "comparison": comparison,
                   "labels": model.classes,
                   "ranking": ranking.to_dict() if ranking is not None else None}
        write_run_report(stage, context)
        write_model_card(stage, "model_card.md.j2", **context)
        write_text(stage / "run.yaml", dump_yaml(config))
        write_json(stage / "run.json", {"run": run, "data": data.summary(),
                                        "timings": clf.timings, "fit_info": clf.fit_info,
                                        "comparison": comparison})
    return RunResult(out=out, metrics=metrics, report=out / "report.html",
                     comparison=comparison, timings={**clf.timings, "total": run["total_seconds"]},
                     data_lines=data.report.lines())


def _choose_backbone(config: FitConfig, data: Dataset, progress: Progress | None
                     ) -> tuple[Ranking, FitConfig, dict]:
    """``--backbone auto``: rank the candidates on the training data, then fit the best one
    the strategy can use (a strategy that trains the backbone skips frozen-only ones)."""
    ctx = FitContext(seed=config.seed, batch_size=config.batch_size,
                     precision=config.precision, device=resolve_device(config.device),
                     cache=FeatureCache() if config.cache else None, memo={})
    ranking = rank(data, config.candidates, seed=config.seed, image_size=config.image_size,
                   clip_seconds=config.clip_seconds, max_length=config.max_length,
                   context=ctx, progress=progress)
    best = ranking.best  # raises, naming each candidate's error, when none could be scored
    trains = get_strategy(config.strategy, config.strategy_options).trains_backbone()
    usable = [c for c in ranking.candidates
              if c.error is None and not (trains and c.frozen_only)]
    if not usable:
        raise ConfigError(
            f"Every ranked candidate can only be used frozen, and strategy "
            f"'{config.strategy}' trains the backbone. Name trainable candidates with "
            "--candidates, or use a strategy that keeps the backbone frozen.")
    chosen = usable[0].name
    log.info("--backbone auto: fitting %s (first by %s: %s) among %s", chosen, ranking.score,
             best.name, ", ".join(c.name for c in ranking.candidates))
    return ranking, config.model_copy(update={"backbone": chosen}), ctx.memo or {}


def _classifier(config: FitConfig) -> Classifier:
    """An unfitted Classifier of ``config``: its backbone loads pristine, as published."""
    return Classifier(
        config.backbone, config.strategy, strategy_options=config.strategy_options,
        pooling=config.pooling, max_length=config.max_length, image_size=config.image_size,
        clip_seconds=config.clip_seconds, seed=config.seed, batch_size=config.batch_size,
        precision=config.precision, device=config.device, cache=config.cache,
        trust_remote_code=config.trust_remote_code)


def compare_with_baseline(config: FitConfig, data: Dataset, clf: Classifier,
                          metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the report: this run and a no-pretraining baseline on the same test split, at
    full data and at each of ``config.compare_budgets`` labels per class (features come from
    the cache, so for a probe each extra budget costs only a head fit)."""

    ours = f"{config.backbone} + {config.strategy}"
    rows = [{"name": ours, "n_train": len(data.train), "accuracy": metrics["accuracy"],
             "macro_f1": metrics["macro_f1"], "seconds": clf.timings["fit_total"]}]
    base = classic_baseline(data, config.seed)
    rows.append({"name": base["name"], "n_train": base["n_train"],
                 "accuracy": base["metrics"]["accuracy"],
                 "macro_f1": base["metrics"]["macro_f1"], "seconds": base["seconds"]})
    for budget in sorted(config.compare_budgets):
        small = replace(data, train=per_class_budget(data.train, budget, config.seed,
                                                     data.report.__class__()))
        # from the pristine backbone: the fitted one has already seen every label
        small_clf = _classifier(config).fit(small)
        m = small_clf.evaluate(small)
        rows.append({"name": f"{ours}, {budget}/class", "n_train": len(small.train),
                     "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                     "seconds": small_clf.timings["fit_total"]})
        b = classic_baseline(small, config.seed)
        rows.append({"name": f"{base['name']}, {budget}/class", "n_train": b["n_train"],
                     "accuracy": b["metrics"]["accuracy"], "macro_f1": b["metrics"]["macro_f1"],
                     "seconds": b["seconds"]})
    return rows


def _info_text(info: dict[str, Any]) -> str:
    if not info:
        return ""
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()]
    return "(" + ", ".join(parts) + ")"
