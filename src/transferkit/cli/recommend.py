"""``transferkit recommend fit | predict``: recommendations with pretrained item embeddings.

A sub-app of its own (``app.py`` adds it), importing nothing from ``app.py``: the commands
print through their own consoles, and errors reach ``main``'s one handler."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import DataError
from .strategy_flags import parse_options

recommend_app = typer.Typer(
    name="recommend", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    help="Recommend items to users: collaborative filtering for items with interactions, "
         "pretrained text embeddings for new (cold) items. Start with `transferkit recommend "
         "fit INTERACTIONS --items ITEMS --out RUN`.")
out = Console()
Opt = typer.Option


@recommend_app.command("fit")
def fit_command(
    interactions: Annotated[str, typer.Argument(
        help="user_id,item_id[,rating][,timestamp] rows (CSV, TSV, JSONL, Parquet).")],
    items: Annotated[str, Opt(help="Items file: item_id plus the text columns that describe "
                                   "each item.")],
    out_dir: Annotated[str | None, Opt("--out", help="Run folder to write [default: "
                                                     "runs/<data>-recommend-<time>].")] = None,
    item_text: Annotated[str | None, Opt(help="Comma-separated text columns of ITEMS, joined "
                                              "[default: every column but the id].")] = None,
    backbone: Annotated[str, Opt(help="Text backbone that embeds the item texts (`transferkit"
                                      " models` lists them).")] = "minilm",
    models: Annotated[str, Opt(help="Comma-separated models to fit and compare: popularity, "
                                    "als, bpr, content, hybrid.")
                      ] = "popularity,als,content,hybrid",
    default_model: Annotated[str | None, Opt(help="The model `predict` and `serve` use "
                                                  "[default: hybrid].")] = None,
    cold_share: Annotated[float, Opt(help="Share of the items held out entirely (cold) for "
                                          "the evaluation.")] = 0.2,
    test_share: Annotated[float, Opt(help="Share of each user's warm interactions held out "
                                          "(their latest, when there are timestamps).")] = 0.2,
    tune: Annotated[str, Opt(help="ALS settings searched on a validation split: small, full "
                                  "(a wider grid, ~40 fits), none.")] = "small",
    strategy: Annotated[str, Opt(help="The text encoder: probe (frozen, the default) or a "
                                      "fine-tuning strategy (partial, full, gradual, bitfit, "
                                      "lora) that tunes it on the training interactions "
                                      "toward the ALS item factors, stopping early on a "
                                      "validation split (slower; see docs/recommend.md).")
                        ] = "probe",
    option: Annotated[list[str] | None, Opt(
        "--option", "-o", help="A fine-tuning strategy's option as KEY=VALUE, repeatable, "
        "e.g. -o epochs=5 -o lr=1e-4 (`transferkit strategies NAME` lists them).")] = None,
    seed: Annotated[int, Opt(help="Seed for the split, the models and the bootstrap.")] = 0,
    threads: Annotated[int, Opt(help="Threads for ALS / BPR.")] = 1,
    user_column: Annotated[str | None, Opt(help="User id column.")] = None,
    item_column: Annotated[str | None, Opt(help="Item id column (both files).")] = None,
    rating_column: Annotated[str | None, Opt(help="Rating column (optional).")] = None,
    time_column: Annotated[str | None, Opt(help="Timestamp column (optional).")] = None,
    strict: Annotated[bool, Opt("--strict", help="Fail on any bad row instead of skipping "
                                                 "it.")] = False,
    no_cache: Annotated[bool, Opt("--no-cache", help="Do not read or write the feature "
                                                     "cache.")] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --out folder.")
                         ] = False,
) -> None:
    """Fit popularity, ALS, content and hybrid recommenders, evaluate them on warm and cold
    items, and write a run folder with its report."""
    from ..workflows.recommend import recommend_fit

    result = recommend_fit(
        interactions, items, out=out_dir, item_text=item_text, backbone=backbone,
        models=[m.strip() for m in models.split(",") if m.strip()],
        default_model=default_model, cold_share=cold_share, test_share=test_share, seed=seed,
        tune=tune, threads=threads, user_column=user_column, item_column=item_column,
        rating_column=rating_column, time_column=time_column, strict=strict,
        cache=not no_cache, overwrite=overwrite, strategy=strategy,
        strategy_options=parse_options(option))
    for line in result.data_lines:
        Console(stderr=True).print(f"[yellow]data:[/] {line}", highlight=False, soft_wrap=True)
    table = Table(title="test metrics (warm items | cold items)")
    for col in ("model", "warm NDCG@10", "warm Recall@20", "cold NDCG@10", "cold Recall@20"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, r in result.results.items():
        table.add_row(name, *[f"{r[s][m]['mean']:.4f}" for s in ("warm", "cold")
                              for m in ("ndcg@10", "recall@20")])
    out.print(table)
    out.print(f"run folder: {Path(result.out).resolve()}")
    out.print(f"report:     {Path(result.report).resolve()}")


@recommend_app.command("predict")
def predict_command(
    run: Annotated[Path, typer.Argument(help="Run folder of `transferkit recommend fit`.")],
    user: Annotated[list[str] | None, Opt(help="A user id (repeat for several).")] = None,
    users: Annotated[Path | None, Opt(help="A file of user ids (one a line, or a table with "
                                           "a user_id column).")] = None,
    k: Annotated[int, Opt(help="Items per user.")] = 10,
    model: Annotated[str | None, Opt(help="Which of the run's models [default: the run's "
                                          "default, the hybrid].")] = None,
    new_items: Annotated[Path | None, Opt(help="Items to add (id + text, like the fit's "
                                                "items file), placed from their text with no "
                                                "retraining.")] = None,
    only_new: Annotated[bool, Opt("--only-new", help="Recommend among the --new-items only.")
                        ] = False,
    output: Annotated[Path | None, Opt(help="Write user,rank,item,name,score rows to this CSV "
                                            "instead of printing them.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --output.")
                         ] = False,
) -> None:
    """Recommend items to one or more users of a run (optionally among new items too)."""
    from .._outputs import check_output_file
    from ..recommend.recommender import Recommender

    if output is not None:
        check_output_file(output, overwrite, inputs=[run, users, new_items])
    wanted = list(user or []) + (_read_users(users) if users is not None else [])
    if not wanted:
        raise DataError("Name the users to recommend to: --user ID (repeatable) or --users "
                        "FILE.")
    if only_new and new_items is None:
        raise DataError("--only-new recommends among --new-items: name the file with "
                        "--new-items FILE.")
    rec = Recommender.load(run)
    if new_items is not None:
        rec = rec.with_new_items(new_items)
    answers = rec.recommend_many(wanted, k=k, model=model, only_new=only_new)
    if output is not None:
        import pandas as pd

        from .._io import write_with

        rows = [{"user": u, "rank": i + 1, **r} for u, recs in answers.items()
                for i, r in enumerate(recs)]
        write_with(output, lambda p: pd.DataFrame(rows).to_csv(p, index=False))
        out.print(f"{len(rows)} recommendations for {len(answers)} users written to {output}")
        return
    for u, recs in answers.items():
        table = Table(title=f"user {u} · {model or rec.default_model}")
        for col in ("#", "item", "name", "score"):
            table.add_column(col, justify="left" if col in ("item", "name") else "right")
        for i, r in enumerate(recs, 1):
            table.add_row(str(i), r["item"], r["name"], f"{r['score']:.4f}")
        out.print(table)


def _read_users(path: Path) -> list[str]:
    """One id a line (``.txt``), or a table's user id column."""
    from ..recommend.interactions import USER_GUESSES, id_text, pick

    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError(f"{path}: no such file. Check the --users path.")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    from ..data.tables import read_table_frame

    frame, _ = read_table_frame(path) if path.is_file() else (None, None)
    if frame is None:
        raise DataError(f"{path}: no such file. Check the --users path.")
    column = pick([str(c) for c in frame.columns], None, USER_GUESSES, "user id",
                  "a user_id column", path.name)
    return [u for u in (id_text(v) for v in frame[column].tolist()) if u is not None]
