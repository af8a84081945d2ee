"""The command line's shared parts: the typer app, consoles, progress and result printing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..errors import TransferkitError
from .recommend import recommend_app
from .strategy_flags import parse_options  # noqa: F401  (fit, study and cli import it here)

app = typer.Typer(
    name="transferkit", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    help="Adapt a pretrained model to your labelled data, evaluate it, and reuse it.\n\n"
         "Start with `transferkit demo`, then `transferkit fit DATA --out runs/first`.",
)
console = Console(stderr=True)
out = Console()
app.add_typer(recommend_app, name="recommend")  # `transferkit recommend fit | predict`

Opt = typer.Option

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
    from ..metrics import HEADLINE

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

