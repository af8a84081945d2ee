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
    name="transferkit", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    help="Adapt a pretrained model to your labelled data, evaluate it, and reuse it.\n\n"
         "Start with `transferkit demo`, then `transferkit fit DATA --out runs/first`.",
)
console = Console(stderr=True)
out = Console()

Opt = typer.Option
# The registered strategies, for --help without importing torch (a test keeps it in step
# with the registry in adapt/).
STRATEGY_NAMES = ("probe", "partial", "full", "gradual", "bitfit", "lora", "contrastive",
                  "protonet", "scratch")


def _show_version(value: bool) -> None:
    if value:
        from . import __version__, git_commit

        commit = git_commit()
        out.print(f"transferkit {__version__}" + (f" (commit {commit})" if commit else ""))
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, Opt("--version", callback=_show_version, is_eager=True,
                                       help="Print the version and exit.")] = False) -> None:
    """Adapt a pretrained model to your labelled data, evaluate it, and reuse it.

    Start with `transferkit demo`, then `transferkit fit DATA --out runs/first`."""


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
    from .config import build_config, load_yaml
    from .workflows import fit_run

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


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["loss=batch_hard", "lr=1e-4"]`` -> ``{"loss": "batch_hard", "lr": 0.0001}``.

    Values are read as YAML scalars (numbers, true/false, null), with one fix: YAML 1.1
    reads ``1e-4`` (no dot) as a string, and learning rates are written that way."""
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise TransferkitError(f"--option '{pair}' is not KEY=VALUE; write e.g. "
                                   "--option loss=batch_hard.")
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        options[key.strip().replace("-", "_")] = value
    return options


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
    from .metrics import HEADLINE

    for key in HEADLINE:
        table.add_row(key, f"{metrics[key]:.4f}")
    table.add_row("test examples", str(metrics["n"]))
    return table


def _print_result(result: Any) -> None:
    for line in result.data_lines:  # skipped rows, with file and line: fix them or ignore them
        console.print(f"[yellow]data:[/] {line}", highlight=False, soft_wrap=True)
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
    option: Annotated[list[str] | None, Opt(
        "--option", "-o", help="A strategy's option as STRATEGY.KEY=VALUE, repeatable, e.g. "
        "-o contrastive.loss=batch_hard -o lora.r=16.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Discard an existing study folder.")
                         ] = False,
) -> None:
    """Measure how many labels, how much time and compute transfer saves over scratch."""
    from .workflows import study

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
            label_column=label_column, image_size=image_size, batch_size=batch_size,
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


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferkit fit`.")],
    data: Annotated[str, typer.Argument(help="Labelled data to evaluate on.")],
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column.")] = None,
    output: Annotated[Path | None, Opt(help="Also write the metrics to this JSON file.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --output.")] = False,
) -> None:
    """Evaluate a saved model on labelled data."""
    from ._io import write_json
    from ._outputs import check_output_file
    from .classifier import Classifier

    if output:
        check_output_file(output, overwrite, inputs=[run, data])
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
    engine: Annotated[str, Opt(help="torch, or onnx (ONNX Runtime on CPU, no torch needed; "
                                    "run `transferkit export RUN --onnx` first).")] = "torch",
    int8: Annotated[bool, Opt("--int8", help="onnx: the int8-quantised export "
                                             "(`export --onnx --int8`).")] = False,
    precision: Annotated[str, Opt(help="torch: auto (bf16 where fast), bf16, fp16 (GPU), "
                                       "fp32.")] = "auto",
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --output.")] = False,
    support: Annotated[str | None, Opt(
        help="Labelled examples (CSV, image folder...) of the classes to predict, by "
             "distance to their prototypes: new classes, no training.")
    ] = None,
) -> None:
    """Predict labels and class probabilities for every row of a file."""
    from ._outputs import check_output_file
    from .reuse.engines import load_engine
    from .reuse.predict import predict_file

    inputs_used = (run, inputs, support)
    check_output_file(output, overwrite, inputs_used)  # before the model loads
    if support is not None:
        if engine != "torch":
            raise TransferkitError("--support builds prototypes with the torch engine: drop "
                                   "--engine onnx.")
        from .classifier import Classifier

        model: Any = Classifier.load(run, batch_size=batch_size, precision=precision
                                     ).with_support(support, text_column=text_column)
    else:
        model = load_engine(run, engine, int8=int8, precision=precision, batch_size=batch_size)
    path, n_ok, n_bad = predict_file(model, inputs, output, text_column=text_column,
                                     overwrite=overwrite, inputs=inputs_used)
    skipped = f" ({n_bad} unreadable rows left with an empty label)" if n_bad else ""
    out.print(f"{n_ok} predictions written to {path}{skipped}")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferkit fit`.")],
    onnx: Annotated[bool, Opt("--onnx", help="Export to RUN/onnx/model.onnx (the only "
                                             "format so far).")] = False,
    int8: Annotated[bool, Opt("--int8", help="Also write a dynamically quantised int8 model "
                                             "and measure its accuracy change.")] = False,
    eval_data: Annotated[str | None, Opt(
        help="Labelled data for the int8 accuracy check (default: the run's test split, "
             "rebuilt from run.yaml).")] = None,
    text_column: Annotated[str | None, Opt(help="Text column of --eval-data.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column of --eval-data.")] = None,
    batch_size: Annotated[int, Opt(help="Batch size for the parity and accuracy checks.")] = 32,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an earlier export (only once "
                                                       "the new one passed its checks).")
                         ] = False,
) -> None:
    """Export a saved model to ONNX (backbone + head, LoRA merged), checked against PyTorch."""
    if not onnx:
        raise TransferkitError("Choose an export format: `transferkit export RUN --onnx`.")
    from .reuse.onnx_export import export_onnx

    info = export_onnx(run, int8=int8, overwrite=overwrite, eval_data=eval_data,
                       text_column=text_column, label_column=label_column,
                       batch_size=batch_size)
    fp32 = info["fp32"]
    out.print(f"{run / 'onnx' / fp32['file']}: {fp32['bytes'] / 1e6:.1f} MB, exported in "
              f"{info['export_seconds']:.1f} s; max |Δ probability| vs PyTorch fp32 "
              f"{fp32['parity_max_abs_diff']:.1e} on {fp32['parity_examples']} inputs")
    if info["int8"]:
        q = info["int8"]
        out.print(f"{run / 'onnx' / q['file']}: {q['bytes'] / 1e6:.1f} MB; accuracy "
                  f"{q['accuracy_int8']:.4f} vs {q['accuracy_fp32']:.4f} fp32 "
                  f"({q['accuracy_change'] * 100:+.2f} points) on {q['eval_examples']} examples")
    out.print(f"predict with: transferkit predict {run} INPUTS --output OUT.csv --engine onnx"
              + (" --int8" if info["int8"] else ""))


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferkit fit`.")],
    host: Annotated[str, Opt(help="Address to bind. Anything but loopback should have "
                                  "--api-key-env.")] = "127.0.0.1",
    port: Annotated[int, Opt(help="TCP port.")] = 8000,
    engine: Annotated[str, Opt(help="torch, or onnx (needs `transferkit export RUN --onnx`; "
                                    "does not import torch).")] = "torch",
    int8: Annotated[bool, Opt("--int8", help="onnx: serve the int8-quantised export.")] = False,
    precision: Annotated[str, Opt(help="torch: auto, bf16, fp16 (GPU) or fp32.")] = "auto",
    api_key_env: Annotated[str | None, Opt(
        help="Require the key held in this environment variable (X-API-Key header or "
             "Authorization: Bearer). /health stays open.")] = None,
    max_batch: Annotated[int, Opt(help="Most examples in one micro-batch (1 = one request "
                                       "at a time).", rich_help_panel="Batching")] = 32,
    max_wait_ms: Annotated[float, Opt(help="Longest wait for more requests to join a batch.",
                                      rich_help_panel="Batching")] = 5.0,
    model_batch: Annotated[int | None, Opt(help="Chunk size inside a micro-batch (examples "
                                                "sorted by length). [torch 8, onnx 4]",
                                           rich_help_panel="Batching")] = None,
    queue_size: Annotated[int, Opt(help="Queued requests before 503 + Retry-After.",
                                   rich_help_panel="Batching")] = 256,
    max_body_mb: Annotated[float, Opt(help="Largest request body in MiB.",
                                      rich_help_panel="Limits")] = 16.0,
    max_examples: Annotated[int, Opt(help="Most examples in one request.",
                                     rich_help_panel="Limits")] = 64,
    max_text_chars: Annotated[int, Opt(help="Longest text in characters.",
                                       rich_help_panel="Limits")] = 10_000,
    max_image_pixels: Annotated[int, Opt(help="Largest image (width x height).",
                                         rich_help_panel="Limits")] = 40_000_000,
    threads: Annotated[int | None, Opt(help="torch: intra-op threads for the model (default: "
                                            "torch's, one per core).")] = None,
    access_log: Annotated[bool, Opt("--access-log", help="Log one line per request.")] = False,
) -> None:
    """Serve a saved model over HTTP: POST /predict, GET /health, /metadata, docs at /docs."""
    from .reuse.serve import Limits
    from .reuse.serve import serve as serve_run

    limits = Limits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_examples=max_examples,
                    max_text_chars=max_text_chars, max_image_pixels=max_image_pixels)
    serve_run(run, host=host, port=port, engine=engine, int8=int8, precision=precision,
              model_batch=model_batch, max_batch=max_batch, max_wait_ms=max_wait_ms,
              queue_size=queue_size, limits=limits, api_key_env=api_key_env,
              access_log=access_log, threads=threads)


def _class_list(classes: str | None) -> list[str] | None:
    return [c.strip() for c in classes.split(",") if c.strip()] if classes else None


@app.command("meta-train")
def meta_train(
    data: Annotated[str, typer.Argument(help="Labelled data holding the base classes.")],
    out_dir: Annotated[str, Opt("--out", help="Run folder to write (a protonet artifact).")],
    classes: Annotated[str | None, Opt(help="Base classes, comma-separated (default: all).")
                       ] = None,
    backbone: Annotated[str, Opt(help="Pretrained backbone to meta-train.")] = "minilm",
    valid: Annotated[str | None, Opt(help="Validation data of the base classes: early "
                                          "stopping on episode accuracy.")] = None,
    per_class: Annotated[int | None, Opt(help="Use at most N examples per base class.")
                         ] = None,
    n_way: Annotated[int, Opt(help="Classes per episode.")] = 5,
    k_shot: Annotated[int, Opt(help="Support examples per class and episode.")] = 5,
    n_query: Annotated[int, Opt(help="Query examples per class and episode.")] = 5,
    episodes: Annotated[int, Opt(help="Training episodes (one optimizer step each).")] = 100,
    lr: Annotated[float, Opt(help="Peak learning rate.")] = 5e-5,
    scale: Annotated[float, Opt(help="Distance scale of the prototype softmax, for unit-norm "
                                     "features (divided by the mean squared norm otherwise).")
                     ] = 10.0,
    inner_steps: Annotated[int, Opt(help="First-order MAML for the head (fo-Proto-MAML): "
                                         "gradient steps of the prototype head on each "
                                         "support set, in training and on new classes; 0: "
                                         "a plain prototypical network.")] = 0,
    inner_lr: Annotated[float, Opt(help="Learning rate of those steps, for unit-norm "
                                        "features (divided by the mean squared norm).")
                        ] = 3.0,
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column.")] = None,
    seed: Annotated[int, Opt(help="Seed for episodes and training.")] = 0,
    batch_size: Annotated[int, Opt(help="Batch size for feature extraction.")] = 32,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --out folder.")
                         ] = False,
) -> None:
    """Meta-train a prototypical network (or fo-Proto-MAML) on base classes (N-way K-shot
    episodes)."""
    from ._outputs import check_out_folder
    from .adapt.protonet import meta_train_data
    from .classifier import Classifier

    check_out_folder(out_dir, overwrite, inputs=[data, valid, backbone])  # before training
    dataset = meta_train_data(data, _class_list(classes), valid=valid, per_class=per_class,
                              seed=seed, text_column=text_column, label_column=label_column)
    options = {"n_way": n_way, "k_shot": k_shot, "n_query": n_query, "episodes": episodes,
               "lr": lr, "scale": scale, "inner_steps": inner_steps, "inner_lr": inner_lr}
    clf = _with_progress(lambda progress: _fit_with_progress(
        Classifier(backbone, "protonet", strategy_options=options, seed=seed,
                   batch_size=batch_size), dataset, progress))
    clf.save(out_dir, overwrite=overwrite, inputs=[data, valid, backbone])
    info = clf.fit_info.get("meta_train", {})
    out.print(f"meta-trained {n_way}-way {k_shot}-shot on {len(dataset.classes)} base classes "
              f"({len(dataset.train)} examples): {info.get('steps')} episodes in "
              f"{info.get('train_seconds', 0):.1f} s")
    out.print(f"run folder: {Path(out_dir).resolve()}")
    out.print(f"evaluate on new classes: transferkit meta-eval {out_dir} DATA --classes ...")


def _fit_with_progress(clf: Any, dataset: Any, progress: Any) -> Any:
    clf.context.progress = progress
    return clf.fit(dataset)


@app.command("meta-eval")
def meta_eval(
    model: Annotated[str, typer.Argument(help="A run folder (protonet or any model), or a "
                                              "backbone name for the raw-feature baseline.")],
    data: Annotated[str, typer.Argument(help="Labelled data of the held-out classes.")],
    classes: Annotated[str | None, Opt(help="Classes to draw episodes from, comma-separated "
                                            "(default: all).")] = None,
    n_way: Annotated[int, Opt(help="Classes per episode.")] = 5,
    k_shot: Annotated[int, Opt(help="Support examples per class and episode.")] = 5,
    n_query: Annotated[int, Opt(help="Query examples per class and episode.")] = 15,
    episodes: Annotated[int, Opt(help="Episodes (600+ for a tight confidence interval).")
                        ] = 600,
    seed: Annotated[int, Opt(help="Seed for the episodes.")] = 0,
    inner_steps: Annotated[int | None, Opt(help="Gradient steps of the prototype head on each "
                                                "episode's support (default: the run's own, "
                                                "from meta-train; 0: nearest prototype).")
                           ] = None,
    inner_lr: Annotated[float | None, Opt(help="Learning rate of those steps (default: the "
                                               "run's own, else 3.0).")] = None,
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column.")] = None,
    split: Annotated[str, Opt(help="Split to use when DATA holds several.")] = "test",
    batch_size: Annotated[int, Opt(help="Batch size for feature extraction.")] = 32,
    output: Annotated[Path | None, Opt(help="Also write the result to this JSON file.")
                      ] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --output.")] = False,
) -> None:
    """N-way K-shot accuracy on held-out classes, mean and 95% CI over many episodes."""
    import numpy as np

    from ._io import write_json
    from ._outputs import check_output_file
    from .adapt import TransferModel
    from .adapt.protonet import INNER_LR, meta_evaluate, read_labelled
    from .classifier import Classifier

    if output:
        check_output_file(output, overwrite, inputs=[model, data])
    if (Path(model) / "config.json").is_file():
        clf = Classifier.load(model, batch_size=batch_size)
    else:
        clf = Classifier(model, batch_size=batch_size)
        clf.model = TransferModel(clf._backbone(), [])
    examples = read_labelled(data, _class_list(classes), text_column=text_column,
                             label_column=label_column, split=split)
    found = sorted(set(examples.labels or []))
    labels = np.array([found.index(y) for y in examples.labels or []])
    feats = _with_progress(lambda progress: _features(clf, examples, progress))
    info = clf.fit_info  # a raw backbone has none: nearest prototype, unless told
    steps = inner_steps if inner_steps is not None else info.get("inner_steps", 0)
    result = meta_evaluate(feats, labels, found, n_way=n_way, k_shot=k_shot, n_query=n_query,
                           episodes=episodes, seed=seed, scale=info.get("scale"),
                           inner_steps=steps, inner_lr=inner_lr or info.get("inner_lr", INNER_LR))
    result["model"] = model
    adapted = f" after {steps} steps on each support" if steps else ""
    out.print(f"{n_way}-way {k_shot}-shot accuracy{adapted} of {model} on {len(found)} classes: "
              f"{result['accuracy']:.4f} ± {result['ci95']:.4f} (95% CI, {episodes} episodes; "
              f"chance {1 / n_way:.2f})")
    if output:
        write_json(output, result)
        out.print(f"result: {output}")


def _features(clf: Any, examples: Any, progress: Any) -> Any:
    clf.context.progress = progress
    return clf.context.features(clf.model, examples, "features")


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
def pretrain(
    corpus: Annotated[list[str], typer.Argument(
        help="Unlabelled data: text files (one text a line), CSV/JSONL/Parquet (--text-column),"
             " labelled datasets (labels ignored), image folders or .npz.")],
    out_dir: Annotated[str, Opt("--out", help="Backbone folder to write.")
                       ] = "runs/pretrained",
    source: Annotated[str | None, Opt(
        "--from", help="Backbone to continue pretraining (text: a BERT-like encoder; images: "
                       "a timm name or backbone; with --scratch, its architecture).")] = None,
    scratch: Annotated[bool, Opt("--scratch", help="Start from random weights.")] = False,
    modality: Annotated[str, Opt(help="text or image.")] = "text",
    size: Annotated[str, Opt(help="Text --scratch: BERT size tiny (2x128), mini (4x256) or "
                                  "small (4x512).")] = "tiny",
    vocab_size: Annotated[int, Opt(help="Text --scratch: WordPiece vocabulary size.")] = 8000,
    tokenizer: Annotated[str | None, Opt(help="Text --scratch: use this tokenizer (a folder) "
                                              "instead of training one.")] = None,
    cased: Annotated[bool, Opt("--cased", help="Text --scratch: keep case in the tokenizer.")
                     ] = False,
    text_column: Annotated[str | None, Opt(help="Text column of table files.")] = None,
    whole_word: Annotated[bool, Opt("--whole-word", help="Mask whole words, not pieces.")
                          ] = False,
    mlm_probability: Annotated[float, Opt(help="Share of tokens masked.")] = 0.15,
    max_length: Annotated[int, Opt(help="Text: tokens per example.")] = 128,
    image_size: Annotated[int | None, Opt(help="Images: resolution (--scratch: 32; else the "
                                               "backbone's own).")] = None,
    temperature: Annotated[float, Opt(help="Images: NT-Xent temperature.")] = 0.2,
    epochs: Annotated[int, Opt(help="Passes over the corpus.")] = 3,
    max_steps: Annotated[int | None, Opt(help="Stop after this many optimizer steps.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate (text: 5e-5 continued, 5e-4 "
                                         "scratch; images: 1e-4 continued, 1e-3 scratch).")
                  ] = None,
    batch_size: Annotated[int | None, Opt(help="Examples per step (text: 32 continued, 64 "
                                                "scratch; images: 64 continued, 128 scratch)."
                                           )] = None,
    eval_every: Annotated[int | None, Opt(help="Held-out evaluation every N steps "
                                               "(default: about 10 a run).")] = None,
    patience: Annotated[int | None, Opt(help="Evaluations without improvement before "
                                             "stopping.")] = 3,
    valid_fraction: Annotated[float, Opt(help="Share of the corpus held out (at most "
                                              "--valid-max examples).")] = 0.05,
    valid_max: Annotated[int, Opt(help="Held-out examples at most (evaluation cost).")
                         ] = 2000,
    checkpoint_every: Annotated[int | None, Opt(help="Checkpoint every N steps (resume with "
                                                     "--resume).")] = None,
    seed: Annotated[int, Opt(help="Seed for the held-out split, masking and init.")] = 0,
    precision: Annotated[str, Opt(help="auto, bf16, fp16 or fp32.")] = "auto",
    device: Annotated[str, Opt(help="auto, cpu, cuda, cuda:N.")] = "auto",
    trust_remote_code: Annotated[bool, Opt("--trust-remote-code",
                                           help="Run code shipped with --from.")] = False,
    resume: Annotated[bool, Opt("--resume", help="Continue an interrupted run from its last "
                                                 "checkpoint.")] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace --out once the new backbone "
                                                       "is whole.")] = False,
) -> None:
    """Self-supervised pretraining: masked-LM for text, SimCLR for images -> a backbone."""
    from .workflows import pretrain as run

    options = {k: v for k, v in locals().items() if k not in ("corpus", "out_dir", "cased",
                                                               "run")}
    summary = _with_progress(lambda progress: run(
        corpus, out=out_dir, lowercase=not cased, progress=progress, **options))
    score = ("perplexity", "valid_perplexity") if "valid_perplexity_best" in summary \
        else ("loss", "valid_loss")
    start, best = summary.get(f"{score[1]}_start"), summary.get(f"{score[1]}_best")
    if start is not None and best is not None:
        out.print(f"held-out {score[0]}: {start:.4g} -> {best:.4g}")
    rate = summary.get("tokens_per_second") or summary.get("images_per_second")
    unit = "tokens/s" if summary.get("tokens_per_second") else "images/s"
    out.print(f"{summary['steps']} steps in {summary['train_seconds']:.0f} s"
              + (f", {rate:.0f} {unit}" if rate else ""))
    out.print(f"backbone: {Path(out_dir).resolve()}  (use: --backbone {out_dir})")


@app.command()
def demo(
    out_dir: Annotated[str, Opt("--out", help="Run folder to write.")] = "runs/demo",
) -> None:
    """Fit the bundled MiniLM on the embedded SMS-spam data against a TF-IDF baseline."""
    from .workflows import run_demo

    result = _with_progress(lambda progress: run_demo(out_dir, progress))
    _print_result(result)


@app.command()
def examples(
    out_dir: Annotated[str, Opt("--out", help="Folder to write them into.")] = "examples",
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an earlier examples folder.")
                         ] = False,
) -> None:
    """Write the small example files of the README: spam.csv (labelled), spam_test.csv,
    new.csv (unlabelled texts)."""
    from .workflows import write_examples

    folder = write_examples(out_dir, overwrite)
    for path in sorted(folder.glob("*.csv")):
        rows = sum(1 for _ in path.open(encoding="utf-8")) - 1
        out.print(f"{path}: {rows} rows")
    out.print(f"try: transferkit fit {folder / 'spam.csv'} --out runs/spam")


def main() -> None:
    """Usage mistakes are click's (typer runs its own bundled copy of click, whose errors it
    shows as a short message with exit 2 in standalone mode); a TransferkitError is a
    mistake in what the user asked for, shown the same way."""
    import logging

    from rich.logging import RichHandler

    logging.getLogger("transferkit").addHandler(RichHandler(
        console=console, show_time=False, show_path=False, show_level=False))
    try:
        app()
    except TransferkitError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
