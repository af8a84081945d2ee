"""``transferkit fit``: the main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import TransferkitError
from .app import (
    STRATEGY_NAMES,
    Opt,
    _print_result,
    _with_progress,
    app,
    parse_options,
)


@app.command()
def fit(
    train: Annotated[str | None, typer.Argument(
        help="Training data: CSV/TSV/JSONL/Parquet/TXT file, image folder (root/<class>/*.jpg),"
             " .npz (images, labels), save_to_disk folder or hf:NAME.")] = None,
    valid: Annotated[str | None, Opt(help="Validation data (same formats).")] = None,
    test: Annotated[str | None, Opt(
        help="Test data. Without it a stratified --test-size part of TRAIN is held out.")] = None,
    backbone: Annotated[str | None, Opt(
        help="Alias (see `transferkit models`), local folder, timm name or HF id. "
             "[default: minilm]")] = None,
    strategy: Annotated[str | None, Opt(help="How to adapt the backbone: "
                                         f"{', '.join(STRATEGY_NAMES)}. [default: probe]")
                        ] = None,
    head: Annotated[str | None, Opt(
        help="Probe head: logreg (cross-validated) or linear (torch). [default: logreg]")] = None,
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
    epochs: Annotated[int | None, Opt(help="Fine-tuning epochs. [3]", rich_help_panel="Fine-tuning")
                      ] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate (full/partial 5e-5, lora 5e-4, "
                                         "bitfit 1e-3).", rich_help_panel="Fine-tuning")] = None,
    lr_decay: Annotated[float | None, Opt(help="Layer-wise LR decay, e.g. 0.8.",
                                          rich_help_panel="Fine-tuning")] = None,
    train_layers: Annotated[int | None, Opt(help="partial: how many top layer groups train.",
                                            rich_help_panel="Fine-tuning")] = None,
    schedule: Annotated[str | None, Opt(help="linear, cosine or constant (after warm-up).",
                                        rich_help_panel="Fine-tuning")] = None,
    grad_accum: Annotated[int | None, Opt(help="Gradient accumulation steps.",
                                          rich_help_panel="Fine-tuning")] = None,
    class_weights: Annotated[str | None, Opt(help="'balanced' for imbalanced classes.",
                                             rich_help_panel="Fine-tuning")] = None,
    eval_every: Annotated[int | None, Opt(help="Evaluate every N steps (default: each epoch).",
                                          rich_help_panel="Fine-tuning")] = None,
    patience: Annotated[int | None, Opt(help="Early stopping: evaluations without improvement.",
                                        rich_help_panel="Fine-tuning")] = None,
    metric: Annotated[str | None, Opt(help="Early-stopping metric: accuracy, macro_f1, loss.",
                                      rich_help_panel="Fine-tuning")] = None,
    checkpoint_every: Annotated[int | None, Opt(help="Checkpoint every N steps (for --resume).",
                                                rich_help_panel="Fine-tuning")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue a killed run from its last "
                                "checkpoint.", rich_help_panel="Fine-tuning")] = False,
    lora_r: Annotated[int | None, Opt(help="LoRA rank. [8]", rich_help_panel="Fine-tuning")
                      ] = None,
    lora_alpha: Annotated[int | None, Opt(help="LoRA alpha. [16]", rich_help_panel="Fine-tuning")
                          ] = None,
    merge: Annotated[bool, Opt("--merge", help="LoRA: fold the adapter into the weights on save.",
                               rich_help_panel="Fine-tuning")] = False,
    log_with: Annotated[str | None, Opt(help="Experiment tracker, e.g. tensorboard.",
                                        rich_help_panel="Fine-tuning")] = None,
    option: Annotated[list[str] | None, Opt(
        "--option", "-o", help="Any other strategy option as KEY=VALUE, repeatable, e.g. "
        "-o loss=batch_hard -o pair_batch=16 (contrastive), -o k_shot=8 (protonet).",
        rich_help_panel="Fine-tuning")] = None,
    overwrite: Annotated[bool | None, Opt(
        "--overwrite", help="Replace an existing --out folder (only once the run succeeded).")
    ] = None,
    config: Annotated[Path | None, Opt(help="YAML file with any of these options "
                                            "(flags given here win).")] = None,
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
        pooling=pooling, max_length=max_length, image_size=image_size, device=device,
        strict=strict, max_text_chars=max_text_chars, compare_baseline=baseline,
        overwrite=overwrite,
        cache=False if no_cache else None, trust_remote_code=True if trust_remote_code else None,
    )
    strategy_flags = dict(
        head=head, epochs=epochs, lr=lr, lr_decay=lr_decay, train_layers=train_layers,
        schedule=schedule, grad_accum=grad_accum, class_weights=class_weights,
        eval_every=eval_every, patience=patience, metric=metric,
        checkpoint_every=checkpoint_every, r=lora_r, alpha=lora_alpha,
        merge=True if merge else None, log_with=log_with,
    )
    given = {**parse_options(option), **{k: v for k, v in strategy_flags.items()
                                         if v is not None}}
    if given:
        cli_values["strategy_options"] = {**(file_values.get("strategy_options") or {}), **given}
    if resume:
        cli_values["resume"] = True
    if train is None and "train" not in file_values:
        raise TransferkitError("No training data: pass TRAIN or set train: in --config.")
    cfg = build_config(file_values, cli_values)
    result = _with_progress(lambda progress: fit_run(cfg, progress))
    _print_result(result)
