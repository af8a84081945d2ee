"""Table cells to texts and labels: exactly the file's text, or a clear refusal.

Labels are compared as text. A label is the cell's text with surrounding spaces removed; a
number is its shortest text (``1`` and ``1.0`` are ``"1"``, so an integer column that gained
a missing value still matches ``"1"``). The cells that *mean* "no label" (empty, ``NA``,
``NaN``, ``null``, ``None``, ``N/A``, in any case) are kept as read here and turned into
reported ``missing_label`` rows by ``clean_rows``, so the user sees which rows and why.
A label column that mixes JSON numbers and strings is refused: ``1`` and ``"1"`` would
otherwise silently become one class. Lists, dicts and bytes are refused in a text or label
column (their ``str()`` is a numpy or Python repr, not the user's text).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from .examples import TEXT, Examples

# What a label cell may say to mean "no label" (compared case-insensitively, spaces stripped).
MISSING_LABELS = frozenset({"", "na", "n/a", "#n/a", "<na>", "nan", "-nan", "null", "none"})


def is_missing_label(label: str | None) -> bool:
    return label is None or label.strip().lower() in MISSING_LABELS


def shorten(value: object, limit: int = 60) -> str:
    """A value as a message can show it: one line, at most ``limit`` characters."""
    if isinstance(value, np.ndarray):  # a token list may be very long: show its start
        value = value[:limit].tolist()
    elif isinstance(value, (list, tuple)):
        value = list(value[:limit])
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def column_list(columns: Sequence[object], limit: int = 20) -> str:
    """Column names for a message: a header made of one huge line must not flood it."""
    shown = ", ".join(shorten(str(c), 40) for c in columns[:limit])
    return shown + (f" and {len(columns) - limit} more" if len(columns) > limit else "")


def to_examples(
    frame: pd.DataFrame, where: str, rows: Sequence[str], tcol: str, lcol: str | None,
    label_names: list[str] | None = None,
) -> Examples:
    """``rows[i]`` is where the user finds ``frame``'s i-th row (``line 12``, ``row 3``)."""
    texts = [_text(v, where, tcol, row) for v, row in zip(frame[tcol].tolist(), rows, strict=True)]
    labels = None
    if lcol is not None:
        values = [_scalar(v, where, lcol, row, "label")
                  for v, row in zip(frame[lcol].tolist(), rows, strict=True)]
        if label_names is None:
            _refuse_mixed_types(values, where, lcol, rows)
        labels = [_label(v, label_names) for v in values]
    origins = [f"{where} {r}" for r in rows]
    return Examples(inputs=texts, labels=labels, origins=origins, modality=TEXT, source=where)


def _scalar(value: Any, where: str, column: str, row: str, what: str) -> Any:
    """The cell as a scalar (None when absent); a list, dict or bytes is a DataError."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, dict, np.ndarray, bytes, bytearray)):
        kind = ("bytes" if isinstance(value, (bytes, bytearray))
                else "dicts (structs)" if isinstance(value, dict) else "lists")
        if what == "label":
            fix = ("For multi-label data write each row's labels as one string joined by a "
                   "delimiter, e.g. 'a|b', and pass --label-delimiter '|'; or pass "
                   "--label-column with a column of single labels.")
        else:
            fix = ("Join the pieces into one string first, e.g. df[col] = df[col].str.join(' ')"
                   ", or pass --text-column with a column of strings.")
        raise DataError(
            f"{where}: column '{column}' holds {kind}, not one {what} per row ({row}: "
            f"{shorten(value)}). transferkit reads each {what} as one string. {fix}"
        )
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def _text(value: Any, where: str, column: str, row: str) -> str | None:
    value = _scalar(value, where, column, row, "text")
    return None if value is None else str(value)


def _label(value: Any, label_names: list[str] | None) -> str | None:
    if value is None:
        return None
    if label_names is not None and not isinstance(value, str):
        # HF ClassLabel ints -> names; -1 is how ClassLabel marks "no label".
        return label_names[int(value)] if int(value) >= 0 else None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # an int column with a missing value is read as float
    return str(value).strip()


def _type_of(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "booleans"
    if isinstance(value, (int, float, np.number)):
        return "numbers"
    return "strings"


def _refuse_mixed_types(values: list[Any], where: str, column: str, rows: Sequence[str]) -> None:
    first: dict[str, tuple[str, Any]] = {}
    for value, row in zip(values, rows, strict=True):
        if value is not None:
            first.setdefault(_type_of(value), (row, value))
    if len(first) < 2:
        return
    found = " and ".join(f"{kind} ({row}: {json.dumps(value, default=str)})"
                         for kind, (row, value) in first.items())
    raise DataError(
        f"{where}: the label column '{column}' mixes {found}. Labels are compared as text, so "
        "1 and \"1\" would silently become one class. Write every label the same way: all as "
        "strings (\"1\") or all as numbers (1)."
    )
