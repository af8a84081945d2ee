"""``transferkit recommend fit``: interactions + item texts -> split -> every model fitted and
evaluated by segment -> a run folder with its report, ready for ``recommend predict`` and
``serve``.

The models saved are the ones evaluated (fitted on the split's training rows), so what
``predict`` answers is what the report measured; ``--cold-share 0 --test-share 0`` fits on
every interaction instead (the report then has nothing to measure and says so)."""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, git_commit
from .._io import make_temp_dir, ordinary_permissions, write_json, write_text
from .._outputs import fresh_run_dir, staged_output
from ..artifact.store import share_weights
from ..errors import ConfigError
from ..evaluate.recommend_report import write_recommend_report
from ..recommend.embed import embed_texts, text_backbone
from ..recommend.encoder import FROZEN, EncoderTuner, check_strategy
from ..recommend.interactions import read_recommendation_data
from ..recommend.models import DEFAULT_MODELS
from ..recommend.recommender import BACKBONE_DIR, Recommender
from ..recommend.split import split_rows
from ..recommend.training import check_models, evaluate_models, train_models
from ..recommend.tuning import GRIDS
from .fit import Progress


@dataclass
class RecommendResult:
    out: Path
    results: dict[str, Any]  # {model: {segment: {metric: {mean, lo, hi}}}}
    recommender: Recommender
    report: Path
    seconds: dict[str, Any] = field(default_factory=dict)
    data_lines: list[str] = field(default_factory=list)


def recommend_fit(
    interactions: str | Path, items: str | Path, *, out: str | Path | None = None,
    item_text: list[str] | str | None = None, backbone: str = "minilm",
    models: list[str] | tuple[str, ...] = DEFAULT_MODELS, default_model: str | None = None,
    cold_share: float = 0.2, test_share: float = 0.2, seed: int = 0, tune: str = "small",
    threads: int = 1, user_column: str | None = None, item_column: str | None = None,
    rating_column: str | None = None, time_column: str | None = None, strict: bool = False,
    max_bad_fraction: float = 0.2, batch_size: int = 32, max_length: int | None = None,
    cache: bool = True, overwrite: bool = False, progress: Progress | None = None,
    strategy: str = FROZEN, strategy_options: dict[str, Any] | None = None,
) -> RecommendResult:
    """Everything ``transferkit recommend fit`` does; every option is checked before any
    file is read. ``strategy``: ``probe`` keeps the text encoder frozen (the default); a
    fine-tuning strategy of the registry (``partial``, ``full``, ``lora``...) with
    ``strategy_options`` tunes it on the training interactions first (``recommend.encoder``)."""
    start = time.perf_counter()
    if isinstance(item_text, str):
        item_text = [c.strip() for c in item_text.split(",") if c.strip()]
    models = check_models(models)
    default_model = default_model or ("hybrid" if "hybrid" in models else models[0])
    if default_model not in models:
        raise ConfigError(f"--default-model {default_model} is not among --models "
                          f"({', '.join(models)}); add it there or choose one of them.")
    if tune not in GRIDS:
        raise ConfigError(f"--tune {tune}: choose one of {', '.join(GRIDS)}.")
    tuning = check_strategy(strategy, strategy_options)
    if tuning is not None and "hybrid" not in models:
        raise ConfigError(f"--strategy {strategy} fine-tunes the text encoder toward the "
                          "hybrid's ALS factors; add hybrid to --models, or use --strategy "
                          f"{FROZEN}.")
    out = Path(out) if out is not None else fresh_run_dir(str(interactions), "recommend")
    options = {"interactions": str(interactions), "items": str(items), "item_text": item_text,
               "backbone": backbone, "models": models, "default_model": default_model,
               "cold_share": cold_share, "test_share": test_share, "seed": seed, "tune": tune,
               "user_column": user_column, "item_column": item_column,
               "rating_column": rating_column, "time_column": time_column,
               "strategy": strategy, "strategy_options": dict(strategy_options or {})}
    with staged_output(out, overwrite, kind="recommend", inputs=[interactions, items]) as stage:
        data, catalogue, report = read_recommendation_data(
            interactions, items, item_text=item_text, user_column=user_column,
            item_column=item_column, rating_column=rating_column, time_column=time_column,
            strict=strict, max_bad_fraction=max_bad_fraction)
        split = split_rows(data.users, data.items, data.times, cold_share=cold_share,
                           test_share=test_share, seed=seed)
        encoder = text_backbone(backbone, max_length=max_length)
        if tuning is not None and encoder.frozen_only:
            raise ConfigError(f"--backbone {backbone} cannot be trained (its weights are not "
                              f"a torch model); use --strategy {FROZEN} with it, or another "
                              "backbone.")
        embeddings, embedding = embed_texts(encoder, catalogue.texts, catalogue.origins,
                                            cache=cache, batch_size=batch_size,
                                            progress=progress)
        tuner = None if tuning is None else EncoderTuner(
            encoder, catalogue.texts, catalogue.origins, tuning, batch_size=batch_size,
            cache=cache, run_dir=stage, progress=progress)
        trained = train_models(data, len(catalogue), split, embeddings, models=models,
                               seed=seed, threads=threads, grid=tune, tune_encoder=tuner)
        tuned = trained.tuning.get("encoder")
        results = evaluate_models(trained, data, split, seed=seed)
        config = {"default_model": default_model, "item_text": item_text,
                  "item_column": item_column, "backbone": encoder.describe(),
                  "embedding_precision": embedding["precision"], "seed": seed,
                  "strategy": strategy,
                  "strategy_options": tuned["options"] if tuned else {},
                  "split": split.summary(len(data.user_ids), len(catalogue))}
        recommender = Recommender(trained.models, data.user_ids, catalogue.ids, catalogue.names,
                                  trained.matrix.tocsr(), trained.embeddings, trained.text_map,
                                  config,
                                  out)
        recommender.save(stage)
        _save_backbone(encoder, stage, shared=tuned is None)
        run = {"title": f"{Path(str(interactions)).name} · recommend · {backbone}",
               "default_model": default_model, "backbone": backbone, "seed": seed,
               "strategy": strategy, "encoder": tuned,
               "seconds": trained.seconds, "embedding": embedding,
               "settings": _settings(trained.models), "tuning": trained.tuning,
               "text_map_trials": trained.tuning.get("text_map", {}).get("trials", []),
               "version": __version__, "commit": git_commit(),
               "python": platform.python_version(),
               "total_seconds": time.perf_counter() - start}
        summary = split.summary(len(data.user_ids), len(catalogue))
        write_recommend_report(stage, {"results": results, "run": run, "split": summary,
                                       "data_lines": report.lines()})
        write_json(stage / "run.json", {"options": options, "run": run, "split": summary,
                                        "data": report.to_dict()})
        write_text(stage / "run.yaml", _yaml(options))
        ordinary_permissions(stage)  # safetensors writes 0600 files
    return RecommendResult(out=out, results=results, recommender=Recommender.load(out),
                           report=out / "report.html", seconds=run, data_lines=report.lines())


def _save_backbone(encoder: Any, stage: Path, shared: bool) -> None:
    """The text encoder, for new items at predict time (a fine-tuned one with its tuned
    weights); unchanged pretrained weights (``shared``) are hard links to one cached copy
    (``artifact.store.share_weights``)."""
    tmp = make_temp_dir(".backbone.", stage)
    try:
        encoder.save(tmp)
        if shared:
            share_weights(tmp)
        tmp.rename(stage / BACKBONE_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _settings(models: dict[str, Any]) -> dict[str, str]:
    return {name: ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in v.params.items() if not isinstance(v, np.ndarray))
            for name, v in models.items()}


def _yaml(options: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(options, sort_keys=False, allow_unicode=True)
