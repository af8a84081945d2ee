"""``transferkit study``: what transfer saves on your data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import TransferkitError
from .app import (
    Opt,
    _with_progress,
    app,
    console,
    out,
    parse_options,
)


@app.command("study")
def study_command(
    train: Annotated[str, typer.Argument(help="Labelled training data (any `fit` format).")],
    test: Annotated[str | None, Opt(help="Test data (default: a stratified 20% of TRAIN).")
                    ] = None,
    backbone: Annotated[str, Opt(help="Pretrained backbone.")] = "minilm",
    budgets: Annotated[str, Opt(help="Labels per class, comma-separated; 'all' = everything.")
                       ] = "8,32,128,512,all",
    strategies: Annotated[str, Opt(help="Comma-separated: any of `transferkit strategies` "
                                        "(scratch: same architecture, random weights), and "
                                        "no-pretraining baselines: tfidf-logreg, fasttext "
                                        "(text), pixels-logreg, small-cnn (images), or "
                                        "'baselines' for those of the data's kind.")
                          ] = "scratch,baselines,probe,partial,lora,full",
    seeds: Annotated[int, Opt(help="Seeds per cell.")] = 3,
    epochs: Annotated[int, Opt(help="Epochs for strategies that train the backbone.")] = 2,
    out_dir: Annotated[str, Opt("--out", help="Study folder (rerun to resume).")] = "runs/study",
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column.")] = None,
    image_size: Annotated[int | None, Opt(help="Image resolution for the backbone.")] = None,
    clip_seconds: Annotated[float | None, Opt(
        help="Audio: cut or pad every clip to this many seconds. [1.0]")] = None,
    batch_size: Annotated[int, Opt(help="Batch size.")] = 32,
    option: Annotated[list[str] | None, Opt(
        "--option", "-o", help="A strategy's option as STRATEGY.KEY=VALUE, repeatable, e.g. "
        "-o contrastive.loss=batch_hard -o lora.r=16.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Discard an existing study folder.")
                         ] = False,
) -> None:
    """Measure how many labels, how much time and compute transfer saves over scratch."""
    from ..workflows import study

    per_strategy: dict[str, dict[str, Any]] = {}
    for key, value in parse_options(option).items():
        name, dot, field = key.partition(".")
        if not dot or not field:
            raise TransferkitError(f"--option '{key}=...' names no strategy; write "
                                   f"STRATEGY.KEY=VALUE, e.g. --option contrastive.{key}=...")
        per_strategy.setdefault(name, {})[field] = value
    try:
        summary = _with_progress(lambda progress: study(
            train, test=test, backbone=backbone, budgets=budgets, strategies=strategies,
            seeds=seeds, out=out_dir, epochs=epochs, text_column=text_column,
            label_column=label_column, image_size=image_size, clip_seconds=clip_seconds,
            batch_size=batch_size,
            strategy_options=per_strategy or None, overwrite=overwrite, progress=progress))
    except KeyboardInterrupt:
        console.print(f"interrupted: finished cells are saved in {out_dir}/cells; run the "
                      "same command again to continue.")
        sys.exit(130)
    table = Table(title="test accuracy, mean over seeds")
    table.add_column("strategy")
    for b in summary["budgets"]:
        table.add_column(f"{b}/class", justify="right")
    for s, curve in summary["curves"].items():
        table.add_row(s, *[f"{curve[str(b)]['accuracy_mean']:.3f}" if str(b) in curve else ""
                           for b in summary["budgets"]])
    out.print(table)
    for line in summary["headline"]:
        out.print(line)
    out.print(f"report: {(Path(out_dir) / 'report.html').resolve()}")
