"""``transferkit fit``: the main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import TransferkitError
from .app import (
    Opt,
    _print_result,
    _with_progress,
    app,
    parse_options,
)
from .strategy_flags import STRATEGY_NAMES, with_strategy_flags


@app.command()
@with_strategy_flags
def fit(
    train: Annotated[str | None, typer.Argument(
        help="Training data: CSV/TSV/JSONL/Parquet/TXT file, image folder (root/<class>/*.jpg),"
             " .npz (images, labels), save_to_disk folder or hf:NAME.")] = None,
    valid: Annotated[str | None, Opt(help="Validation data (same formats).")] = None,
    test: Annotated[str | None, Opt(
        help="Test data. Without it a stratified --test-size part of TRAIN is held out.")] = None,
    backbone: Annotated[str | None, Opt(
        help="Alias (see `transferkit models`), local folder, timm name or HF id; 'auto' "
             "ranks the --candidates on the data (`transferkit rank`) and fits the best. "
             "[default: minilm]")] = None,
    candidates: Annotated[str | None, Opt(
        help="With --backbone auto: comma-separated backbones to rank. [default: every "
             "installed backbone of the data's kind]")] = None,
    strategy: Annotated[str | None, Opt(help="How to adapt the backbone: "
                                         f"{', '.join(STRATEGY_NAMES)}. [default: probe]")
                        ] = None,
    out_dir: Annotated[str | None, Opt("--out", help="Run folder to write. [default: a new "
                                                  "runs/<data>-<strategy>-<time>]")
                       ] = None,
    text_column: Annotated[str | None, Opt(help="Text column (default: found automatically).")
                           ] = None,
    label_column: Annotated[str | None, Opt(help="Label column (default: found automatically).")
                            ] = None,
    label_delimiter: Annotated[str | None, Opt(
        help="Multi-label: labels in one cell separated by this, e.g. '|'.")] = None,
    per_class: Annotated[int | None, Opt(help="Label budget: at most N training examples per "
                                              "class (stratified, seeded).")] = None,
    test_size: Annotated[float | None, Opt(help="Held-out fraction when no --test. [0.2]")] = None,
    seed: Annotated[int | None, Opt(help="One seed for splits, sampling and training. [0]")
                    ] = None,
    batch_size: Annotated[int | None, Opt(help="Batch size for the backbone. [32]")] = None,
    precision: Annotated[str | None, Opt(
        help="auto (bf16 where the hardware runs it fast), bf16, fp16 (GPU) or fp32. [auto]")
    ] = None,
    pooling: Annotated[str | None, Opt(help="Text pooling: mean, cls, max, last.")] = None,
    max_length: Annotated[int | None, Opt(help="Truncate texts to this many tokens.")] = None,
    image_size: Annotated[int | None, Opt(help="Resize images to this size for the backbone.")
                          ] = None,
    clip_seconds: Annotated[float | None, Opt(
        help="Audio: cut or pad every clip to this many seconds. [1.0]")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu, cuda, cuda:N. [auto]")] = None,
    strict: Annotated[bool | None, Opt("--strict/--no-strict",
                                       help="Fail on any bad row instead of skipping it.")] = None,
    max_text_chars: Annotated[int | None, Opt(
        help="Skip (and report) texts longer than this many characters. [100000]")] = None,
    baseline: Annotated[bool | None, Opt(
        "--baseline/--no-baseline",
        help="Also train a no-pretraining baseline (TF-IDF or raw pixels) on the same split."),
    ] = None,
    no_cache: Annotated[bool, Opt("--no-cache", help="Do not read or write the feature cache.")
                        ] = False,
    trust_remote_code: Annotated[bool, Opt(
        "--trust-remote-code", help="Run Python code shipped with the backbone (auto_map, *.py)."
        " Only for models whose authors you trust; refused without it.")] = False,
    resume: Annotated[bool, Opt("--resume", help="Continue a killed run from its last "
                                "checkpoint.")] = False,
    option: Annotated[list[str] | None, Opt(
        "--option", "-o", help="Any other strategy option as KEY=VALUE, repeatable, e.g. "
        "-o loss=batch_hard (contrastive), -o k_shot=8 (protonet); `transferkit strategies"
        " NAME` lists a strategy's options.")] = None,
    overwrite: Annotated[bool | None, Opt(
        "--overwrite", help="Replace an existing --out folder (only once the run succeeded).")
    ] = None,
    config: Annotated[Path | None, Opt(help="YAML file with any of these options "
                                            "(flags given here win).")] = None,
    strategy_flags: dict[str, Any] | None = None,
) -> None:
    """Fit a classifier on labelled data, evaluate it on a test split, and save the run."""
    from ..config import build_config, load_yaml
    from ..workflows import fit_run

    file_values = load_yaml(config) if config else {}
    cli_values: dict[str, Any] = dict(
        train=train, valid=valid, test=test, backbone=backbone, strategy=strategy, out=out_dir,
        text_column=text_column, label_column=label_column, per_class=per_class,
        label_delimiter=label_delimiter,
        test_size=test_size, seed=seed, batch_size=batch_size, precision=precision,
        pooling=pooling, max_length=max_length, image_size=image_size,
        clip_seconds=clip_seconds, device=device,
        strict=strict, max_text_chars=max_text_chars, compare_baseline=baseline,
        overwrite=overwrite,
        cache=False if no_cache else None, trust_remote_code=True if trust_remote_code else None,
        candidates=[c.strip() for c in candidates.split(",") if c.strip()] if candidates
        else None,
    )
    given = {**parse_options(option), **(strategy_flags or {})}
    if given:
        cli_values["strategy_options"] = {**(file_values.get("strategy_options") or {}), **given}
    if resume:
        cli_values["resume"] = True
    if train is None and "train" not in file_values:
        raise TransferkitError("No training data: pass TRAIN or set train: in --config.")
    cfg = build_config(file_values, cli_values)
    result = _with_progress(lambda progress: fit_run(cfg, progress))
    _print_result(result)
