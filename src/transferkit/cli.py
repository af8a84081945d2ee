"""The ``transferkit`` command line: one sub-command per verb, no logic of its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import TransferkitError

app = typer.Typer(
    name="transferkit", no_args_is_help=True, add_completion=False,
    help="Adapt a pretrained model to your labelled data, evaluate it, and reuse it.\n\n"
         "Start with `transferkit demo`, then `transferkit fit DATA --out runs/first`.",
)
console = Console(stderr=True)
out = Console()

Opt = typer.Option


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
    strategy: Annotated[str | None, Opt(help="How to adapt the backbone. [default: probe]")] = None,
    head: Annotated[str | None, Opt(
        help="Probe head: logreg (cross-validated) or linear (torch). [default: logreg]")] = None,
    out_dir: Annotated[str | None, Opt("--out", help="Run folder to write. [default: runs/latest]")
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
    baseline: Annotated[bool | None, Opt(
        "--baseline/--no-baseline",
        help="Also train a no-pretraining baseline (TF-IDF or raw pixels) on the same split."),
    ] = None,
    no_cache: Annotated[bool, Opt("--no-cache", help="Do not read or write the feature cache.")
                        ] = False,
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
    overwrite: Annotated[bool | None, Opt(
        "--overwrite", help="Replace an existing --out folder (only once the run succeeded).")
    ] = None,
    config: Annotated[Path | None, Opt(help="YAML file with any of these options "
                                            "(flags given here win).")] = None,
) -> None:
    """Fit a classifier on labelled data, evaluate it on a test split, and save the run."""
    from .api import fit_run
    from .config import build_config, load_yaml

    file_values = load_yaml(config) if config else {}
    cli_values: dict[str, Any] = dict(
        train=train, valid=valid, test=test, backbone=backbone, strategy=strategy, out=out_dir,
        text_column=text_column, label_column=label_column, per_class=per_class,
        label_delimiter=label_delimiter,
        test_size=test_size, seed=seed, batch_size=batch_size, precision=precision,
        pooling=pooling, max_length=max_length, image_size=image_size, device=device,
        strict=strict, compare_baseline=baseline, overwrite=overwrite,
        cache=False if no_cache else None,
    )
    strategy_flags = dict(
        head=head, epochs=epochs, lr=lr, lr_decay=lr_decay, train_layers=train_layers,
        schedule=schedule, grad_accum=grad_accum, class_weights=class_weights,
        eval_every=eval_every, patience=patience, metric=metric,
        checkpoint_every=checkpoint_every, r=lora_r, alpha=lora_alpha,
        merge=True if merge else None, log_with=log_with,
    )
    given = {k: v for k, v in strategy_flags.items() if v is not None}
    if given:
        cli_values["strategy_options"] = {**(file_values.get("strategy_options") or {}), **given}
    if resume:
        cli_values["resume"] = True
    if train is None and "train" not in file_values:
        raise TransferkitError("No training data: pass TRAIN or set train: in --config.")
    cfg = build_config(file_values, cli_values)
    result = _with_progress(lambda progress: fit_run(cfg, progress))
    _print_result(result)


def _with_progress(job: Any) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), TimeRemainingColumn(), console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int, **extra: Any) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            description = stage
            if extra.get("detail"):
                description += f" {extra['detail']}"
            if extra.get("eta") is not None:
                description += f" (about {extra['eta'] / 60:.0f} min left)"
            if extra.get("loss") is not None:  # training: loss, LR, best validation score
                description += f" loss {extra['loss']:.4f} lr {extra['lr']:.2e}"
                if extra.get("best") is not None:
                    description += f" best {extra['best']:.4f}"
            bar.update(tasks[stage], completed=done, description=description)

        return job(progress)


def _metrics_table(metrics: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    from .evaluate.metrics import HEADLINE

    for key in HEADLINE:
        table.add_row(key, f"{metrics[key]:.4f}")
    table.add_row("test examples", str(metrics["n"]))
    return table


def _print_result(result: Any) -> None:
    out.print(_metrics_table(result.metrics, "test metrics"))
    if result.comparison:
        table = Table(title="same split, same labels")
        for col in ("model", "train examples", "accuracy", "macro F1", "fit s"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for row in result.comparison:
            table.add_row(row["name"], str(row["n_train"]), f"{row['accuracy']:.4f}",
                          f"{row['macro_f1']:.4f}", f"{row['seconds']:.1f}")
        out.print(table)
    out.print(f"run folder: {Path(result.out).resolve()}")
    out.print(f"report:     {Path(result.report).resolve()}")


@app.command("study")
def study_command(
    train: Annotated[str, typer.Argument(help="Labelled training data (any `fit` format).")],
    test: Annotated[str | None, Opt(help="Test data (default: a stratified 20% of TRAIN).")
                    ] = None,
    backbone: Annotated[str, Opt(help="Pretrained backbone.")] = "minilm",
    budgets: Annotated[str, Opt(help="Labels per class, comma-separated; 'all' = everything.")
                       ] = "8,32,128,512,all",
    strategies: Annotated[str, Opt(help="Comma-separated: scratch (same architecture, random "
                                        "weights), classic (TF-IDF / small CNN), probe, "
                                        "partial, lora, full, ...")
                          ] = "scratch,classic,probe,partial,lora,full",
    seeds: Annotated[int, Opt(help="Seeds per cell.")] = 3,
    epochs: Annotated[int, Opt(help="Epochs for strategies that train the backbone.")] = 2,
    out_dir: Annotated[str, Opt("--out", help="Study folder (rerun to resume).")] = "runs/study",
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column.")] = None,
    image_size: Annotated[int | None, Opt(help="Image resolution for the backbone.")] = None,
    batch_size: Annotated[int, Opt(help="Batch size.")] = 32,
    overwrite: Annotated[bool, Opt("--overwrite", help="Discard an existing study folder.")
                         ] = False,
) -> None:
    """Measure how many labels, how much time and compute transfer saves over scratch."""
    from .api import study

    try:
        summary = _with_progress(lambda progress: study(
            train, test=test, backbone=backbone, budgets=budgets, strategies=strategies,
            seeds=seeds, out=out_dir, epochs=epochs, text_column=text_column,
            label_column=label_column, image_size=image_size, batch_size=batch_size,
            overwrite=overwrite, progress=progress))
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


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferkit fit`.")],
    data: Annotated[str, typer.Argument(help="Labelled data to evaluate on.")],
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column.")] = None,
    output: Annotated[Path | None, Opt(help="Also write the metrics to this JSON file.")] = None,
) -> None:
    """Evaluate a saved model on labelled data."""
    from ._io import write_json
    from .api import Classifier

    clf = Classifier.load(run)
    metrics = clf.evaluate(data, text_column=text_column, label_column=label_column)
    out.print(_metrics_table(metrics, f"{run} on {data}"))
    if output:
        write_json(output, metrics)
        out.print(f"metrics: {output}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferkit fit`.")],
    inputs: Annotated[str, typer.Argument(help="File or folder to predict (labels optional).")],
    output: Annotated[Path, Opt(help="CSV to write: row, input, label, prob_<class>...")],
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    batch_size: Annotated[int, Opt(help="Batch size.")] = 32,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --output.")] = False,
) -> None:
    """Predict labels and class probabilities for every row of a file."""
    from .api import Classifier
    from .reuse.predict import predict_file

    clf = Classifier.load(run, batch_size=batch_size)
    path, n_ok, n_bad = predict_file(clf, inputs, output, text_column=text_column,
                                     overwrite=overwrite)
    skipped = f" ({n_bad} unreadable rows left with an empty label)" if n_bad else ""
    out.print(f"{n_ok} predictions written to {path}{skipped}")


@app.command()
def models() -> None:
    """List backbone aliases and where each resolves on this machine."""
    from .backbones import ALIASES, where

    table = Table(title="backbone aliases (any timm name, HF id or local folder works too)")
    for col in ("alias", "modality", "model", "resolves to"):
        table.add_column(col, overflow="fold")
    for alias in ALIASES.values():
        table.add_row(alias.name, alias.modality, alias.description, where(alias.name))
    out.print(table)


@app.command()
def demo(
    out_dir: Annotated[str, Opt("--out", help="Run folder to write.")] = "runs/demo",
) -> None:
    """Fit the bundled MiniLM on the embedded SMS-spam data against a TF-IDF baseline."""
    from .demo import run_demo

    result = _with_progress(lambda progress: run_demo(out_dir, progress))
    _print_result(result)


def main() -> None:
    try:
        app(standalone_mode=False)
    except TransferkitError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
