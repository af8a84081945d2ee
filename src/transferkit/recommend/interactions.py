"""Interactions and items, read with the table readers of ``data.tables`` and checked row by row.

Interactions are ``user_id,item_id[,rating][,timestamp]``; items are ``item_id`` plus the text
columns that describe them (joined). Bad rows follow the house policy (DESIGN.md): each is
named by file and line with what is wrong and how to fix it, skipped and counted; the read
fails when they are more than ``max_bad_fraction`` of a file, or on any under ``strict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import did_you_mean
from ..data.cells import column_list, shorten
from ..data.examples import DataReport
from ..data.tables import read_table_frame
from ..errors import DataError

USER_GUESSES = ("user_id", "user", "userid", "customer_id", "visitor_id")
ITEM_GUESSES = ("item_id", "item", "itemid", "movie_id", "product_id", "track_id")
RATING_GUESSES = ("rating", "score", "weight", "count")
TIME_GUESSES = ("timestamp", "time", "ts", "date", "datetime")
TEXT_SEPARATOR = ". "  # between the text columns of one item: a sentence break for the encoder

# Issue kinds, worded for the report: what the row lacked and what was done with it.
MISSING_ID = "row without a user or item id (skipped)"
UNKNOWN_ITEM = "item id not in the items file (row skipped: add the item there)"
DUPLICATE = "duplicate (user, item) row (the first kept)"
BAD_NUMBER = "rating or timestamp that is not a number or date (row skipped)"
EMPTY_ITEM_TEXT = "item without text (skipped: its text columns are empty)"
DUPLICATE_ITEM = "duplicate item id in the items file (the first kept)"


@dataclass
class Catalogue:
    """The items: ids, the text the encoder reads, a short name to show, and each one's row."""

    ids: list[str]
    texts: list[str]
    names: list[str]
    origins: list[str] = field(default_factory=list)
    rows_read: int = 0  # rows in the file, usable or not (the bad-row threshold's base)

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.ids)}


@dataclass
class Interactions:
    """One row per (user, item) pair, as indices into ``user_ids`` and the catalogue."""

    users: np.ndarray  # int64 [N]
    items: np.ndarray  # int64 [N]
    ratings: np.ndarray  # float32 [N]; 1.0 where the file has no rating column
    times: np.ndarray | None  # float64 [N] seconds, or None without a timestamp column
    user_ids: list[str]
    source: str = ""
    rows_read: int = 0

    def __len__(self) -> int:
        return len(self.users)


def pick(columns: list[str], wanted: str | None, guesses: tuple[str, ...], what: str,
         option: str, where: str, required: bool = True) -> str | None:
    """The column for ``what``: the one named, else the first guess present."""
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{where}: no column named '{wanted}' (the {what} column)"
                            f"{did_you_mean(wanted, columns)}. Columns found: "
                            f"{column_list(columns)}. Pass {option} with one of them.")
        return wanted
    lower = {c.lower(): c for c in columns}
    for guess in guesses:
        if guess in lower:
            return lower[guess]
    if required:
        raise DataError(f"{where}: cannot tell which column holds the {what}; columns found: "
                        f"{column_list(columns)}. Pass {option} NAME.")
    return None


def _frame(path: str | Path) -> tuple[pd.DataFrame, list[str], str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file. Check the path (interactions and items are "
                        "table files: .csv, .tsv, .jsonl, .parquet).")
    frame, rows = read_table_frame(path)
    if frame.empty:
        raise DataError(f"{path}: the file has no rows. Point transferkit at a file with data.")
    frame.columns = [str(c) for c in frame.columns]
    return frame, [f"{path.name} {r}" for r in rows], path.name


def id_text(value: Any) -> str | None:
    """An id as text: ``7``, ``7.0`` and ``"7"`` are one id; empty or NA cells are no id."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    return text if text and text.lower() not in ("nan", "na", "null", "none") else None


def read_items(path: str | Path, text_columns: list[str] | None = None,
               item_column: str | None = None, report: DataReport | None = None) -> Catalogue:
    """The items file: ``item_id`` plus text columns (default: every other column of
    strings), joined into the one text the encoder reads."""
    report = report if report is not None else DataReport()
    frame, rows, where = _frame(path)
    columns = list(frame.columns)
    id_col = pick(columns, item_column, ITEM_GUESSES, "item id", "--item-column", where)
    if text_columns:
        for c in text_columns:
            pick(columns, c, (), "item text", "--item-text", where)
    else:
        text_columns = [c for c in columns if c != id_col]
    ids, texts, names, origins = [], [], [], []
    seen: set[str] = set()
    for values, origin in zip(zip(*(frame[c].tolist() for c in [id_col, *text_columns]),
                                  strict=True), rows, strict=True):
        item = id_text(values[0])
        if item is None:
            report.add(MISSING_ID, origin, f"empty {id_col}")
            continue
        if item in seen:
            report.add(DUPLICATE_ITEM, origin, f"{id_col} {item}")
            continue
        parts = [str(v).strip() for v in values[1:] if id_text(v) is not None]
        if not parts:
            report.add(EMPTY_ITEM_TEXT, origin,
                       f"{id_col} {item}: {', '.join(text_columns)} all empty")
            continue
        seen.add(item)
        ids.append(item)
        texts.append(TEXT_SEPARATOR.join(parts))
        names.append(shorten(parts[0], 80))
        origins.append(origin)
    if not ids:
        raise DataError(f"{where}: no usable items ({'; '.join(report.lines()) or 'no rows'}). "
                        f"Each row needs an {id_col} and text in {', '.join(text_columns)}.")
    return Catalogue(ids, texts, names, origins, rows_read=len(frame))


def read_interactions(
    path: str | Path, catalogue: Catalogue, *, user_column: str | None = None,
    item_column: str | None = None, rating_column: str | None = None,
    time_column: str | None = None, report: DataReport | None = None,
) -> Interactions:
    """The interactions file, each row checked: ids present, item in the catalogue, numbers
    that parse, and each (user, item) pair once (a repeat is reported, the first kept)."""
    report = report if report is not None else DataReport()
    frame, rows, where = _frame(path)
    columns = list(frame.columns)
    ucol = pick(columns, user_column, USER_GUESSES, "user id", "--user-column", where)
    icol = pick(columns, item_column, ITEM_GUESSES, "item id", "--item-column", where)
    rcol = pick(columns, rating_column, RATING_GUESSES, "rating", "--rating-column", where,
                required=False)
    tcol = pick(columns, time_column, TIME_GUESSES, "timestamp", "--time-column", where,
                required=False)
    ratings = _numbers(frame[rcol]) if rcol else np.ones(len(frame))
    times = _times(frame[tcol]) if tcol else None
    known = catalogue.index()
    user_index: dict[str, int] = {}
    first_row: dict[tuple[int, int], str] = {}
    keep_u, keep_i, keep_rows = [], [], []
    unknown = 0
    for r, (u_raw, i_raw, origin) in enumerate(zip(frame[ucol].tolist(), frame[icol].tolist(),
                                                   rows, strict=True)):
        user, item = id_text(u_raw), id_text(i_raw)
        if user is None or item is None:
            report.add(MISSING_ID, origin, f"empty {ucol if user is None else icol}")
            continue
        if item not in known:
            unknown += 1  # a hint for the first few only: difflib over a big catalogue is slow
            hint = did_you_mean(item, known) if unknown <= 5 and len(known) < 20_000 else ""
            report.add(UNKNOWN_ITEM, origin, f"{icol} {shorten(item, 30)}{hint}")
            continue
        if np.isnan(ratings[r]) or (times is not None and np.isnan(times[r])):
            bad = rcol if np.isnan(ratings[r]) else tcol
            report.add(BAD_NUMBER, origin, f"{bad} '{shorten(frame[bad].iloc[r], 30)}'")
            continue
        u = user_index.setdefault(user, len(user_index))
        pair = (u, known[item])
        if pair in first_row:
            report.add(DUPLICATE, origin, f"user {user}, item {item}: first at "
                                          f"{first_row[pair].removeprefix(where + ' ')}")
            continue
        first_row[pair] = origin
        keep_u.append(pair[0])
        keep_i.append(pair[1])
        keep_rows.append(r)
    if not keep_rows:
        raise DataError(f"{where}: no usable interactions ({'; '.join(report.lines())}). "
                        f"Check --user-column/--item-column and that the item ids match the "
                        "items file.")
    idx = np.array(keep_rows)
    return Interactions(users=np.array(keep_u, dtype=np.int64),
                        items=np.array(keep_i, dtype=np.int64),
                        ratings=ratings[idx].astype(np.float32),
                        times=None if times is None else times[idx],
                        user_ids=list(user_index), source=where, rows_read=len(frame))


def _numbers(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column.map(lambda v: None if id_text(v) is None else v),
                         errors="coerce").to_numpy(dtype=np.float64)


def _times(column: pd.Series) -> np.ndarray:
    """Seconds: numbers as they are (Unix time), anything else parsed as a date."""
    numbers = _numbers(column)
    if np.isnan(numbers).mean() < 0.5:
        return numbers
    dates = pd.to_datetime(column, errors="coerce", utc=True, format="mixed")
    seconds = (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return seconds.to_numpy(dtype=np.float64, na_value=np.nan)


def enforce(report: DataReport, sizes: dict[str, int], strict: bool,
            max_bad_fraction: float) -> None:
    """Fail on any issue under ``strict``, or when a file's skipped rows pass the threshold
    (a wrong column or a broken file, more likely than a few bad rows)."""
    if strict and report.issues:
        raise DataError("Data validation found problems (--strict is on):\n  "
                        + "\n  ".join(report.lines())
                        + "\nFix these rows, or run without --strict to skip them.")
    for source, n in sizes.items():
        bad = [i for i in report.issues if i.origin.startswith(source + " ")
               and i.kind not in (DUPLICATE, DUPLICATE_ITEM)]
        if n and len(bad) / n > max_bad_fraction:
            kinds = sorted({i.kind for i in bad})
            raise DataError(f"{source}: {len(bad)} of {n} rows are unusable (more than "
                            f"{max_bad_fraction:.0%}):\n  "
                            + "\n  ".join(report.describe(k) for k in kinds)
                            + "\nThis usually means a wrong --user-column/--item-column, item "
                              "ids that do not match the items file, or a broken file.")


def read_recommendation_data(
    interactions: str | Path, items: str | Path, *, item_text: list[str] | None = None,
    user_column: str | None = None, item_column: str | None = None,
    rating_column: str | None = None, time_column: str | None = None, strict: bool = False,
    max_bad_fraction: float = 0.2,
) -> tuple[Interactions, Catalogue, DataReport]:
    """Both files, validated together (an interaction's item must be in the catalogue)."""
    report = DataReport()
    catalogue = read_items(items, item_text, item_column, report)
    data = read_interactions(interactions, catalogue, user_column=user_column,
                             item_column=item_column, rating_column=rating_column,
                             time_column=time_column, report=report)
    enforce(report, {Path(items).name: catalogue.rows_read, data.source: data.rows_read},
            strict, max_bad_fraction)
    return data, catalogue, report
