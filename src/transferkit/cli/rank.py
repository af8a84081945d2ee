"""``transferkit rank``: which pretrained backbone to start from, scored on your data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import Opt, _with_progress, app, out


@app.command("rank")
def rank_command(
    train: Annotated[str, typer.Argument(help="Labelled training data (any `fit` format).")],
    backbones: Annotated[str | None, Opt(
        help="Comma-separated candidates (aliases, folders, timm names, HF ids). [default: "
             "every installed backbone of the data's kind, see `transferkit models`]")] = None,
    score: Annotated[str | None, Opt(
        help="Score that orders the ranking: logme, hscore, transrate, leep, nce, knn, "
             "linear_probe, size. [default: the best measured, see docs/rank.md]")] = None,
    test: Annotated[str | None, Opt(help="Test data, used by --verify (default: a stratified "
                                         "20% of TRAIN, as `fit` holds out).")] = None,
    out_dir: Annotated[str | None, Opt("--out", help="Folder for rank.json and the report.")
                       ] = None,
    max_examples: Annotated[int, Opt(help="Score a stratified sample of at most this many "
                                          "training examples (0: all).")] = 2000,
    verify: Annotated[bool, Opt("--verify", help="Also fit a linear probe on each candidate "
                                "and report how well each score predicted its test accuracy "
                                "(costs a full fit per candidate).")] = False,
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column.")] = None,
    image_size: Annotated[int | None, Opt(help="Image resolution for image backbones.")] = None,
    clip_seconds: Annotated[float | None, Opt(
        help="Audio: cut or pad every clip to this many seconds. [1.0]")] = None,
    max_length: Annotated[int | None, Opt(help="Truncate texts to this many tokens.")] = None,
    batch_size: Annotated[int, Opt(help="Batch size for the backbones.")] = 32,
    seed: Annotated[int, Opt(help="Seed for the held-out split and the sample.")] = 0,
    no_cache: Annotated[bool, Opt("--no-cache", help="Do not read or write the feature cache.")
                        ] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --out folder.")
                         ] = False,
) -> None:
    """Rank pretrained backbones for your task from their frozen features, in seconds per
    candidate, before any training (`fit --backbone auto` fits the first)."""
    from ..select.rank import DEFAULT_SCORE, score_names
    from ..workflows.rank import rank_run

    result = _with_progress(lambda progress: rank_run(
        train, test=test, candidates=backbones, score=score or DEFAULT_SCORE, out=out_dir,
        max_examples=max_examples or None, verify=verify, text_column=text_column,
        label_column=label_column, image_size=image_size, clip_seconds=clip_seconds,
        max_length=max_length,
        batch_size=batch_size, seed=seed, cache=not no_cache, overwrite=overwrite,
        progress=progress))
    r = result.ranking
    table = Table(title=f"backbones ranked by {r.score}, on {r.scored_on}")
    shown = [r.score, *[s for s in score_names() if s != r.score]]
    shown = [s for s in shown if any(c.scores.get(s) is not None for c in r.candidates)]
    if out.width < 130:  # a narrow terminal gets the ordering score; rank.json has them all
        shown = shown[:1]
    table.add_column("#", justify="right")
    table.add_column("backbone", no_wrap=True)
    for col in (*shown, "params", "seconds"):
        table.add_column(col, justify="right")
    if result.truth:
        table.add_column("probe test acc", justify="right")
    for i, c in enumerate([c for c in r.candidates if c.error is None], 1):
        row = [str(i), c.name,
               *[f"{c.scores[s]:.4g}" if c.scores.get(s) is not None else "—" for s in shown],
               f"{c.params / 1e6:.1f}M", f"{c.seconds.get('total', 0):.1f}"]
        if result.truth:
            row.append(f"{result.truth[c.name]:.4f}")
        table.add_row(*row)
    out.print(table)
    for c in r.candidates:
        if c.error is not None:
            out.print(f"not scored: {c.name}: {c.error}")
    for name, a in result.agreement.items():
        out.print(f"{name}: weighted tau {a['weighted_tau']:.3f}, picks {a['pick']}, "
                  f"top-1 regret {a['top1_regret']:.4f}")
    if len(shown) == 1 and not out_dir:
        out.print("every score of every candidate: add --out DIR (rank.json and a report)")
    out.print(f"best: {r.best.name}")
    if out_dir:
        out.print(f"report: {(Path(out_dir) / 'report.html').resolve()}")
