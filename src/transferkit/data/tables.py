"""Text tables: CSV, TSV, JSONL, Parquet, and Hugging Face ``datasets`` (by name or on disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DataError
from .examples import TEXT, Examples

TABLE_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pq", ".txt"}
TEXT_COLUMN_GUESSES = ("text", "sentence", "content", "review", "document", "body", "question")
LABEL_COLUMN_GUESSES = ("label", "labels", "category", "class", "target", "y")


def is_hf_disk_dataset(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists() for name in ("dataset_dict.json", "dataset_info.json", "state.json")
    )


def read_table_frame(path: Path) -> tuple[pd.DataFrame, int]:
    """Read a table file into strings; return it with the offset from index to the user's row."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            # dtype=str + keep_default_na=False: "NA", "null" or "0123" are texts, not NaN/ints.
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False), 1
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False), 1
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path), 1
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            return pd.DataFrame({"text": lines}), 1
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text ({e}). Re-save the file as UTF-8.") from e
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(
            f"{path}: cannot parse as {suffix.lstrip('.').upper()} ({e}). Check the file format, "
            "or rename it with the right extension (.csv, .tsv, .jsonl, .parquet)."
        ) from e
    raise DataError(
        f"{path}: unsupported file type '{suffix}'. Use .csv, .tsv, .jsonl, .parquet or .txt, "
        "an image folder (root/<class>/*.jpg), an .npz with 'images' and 'labels', or a "
        "Hugging Face dataset."
    )


def pick_column(
    columns: list[str], wanted: str | None, guesses: tuple[str, ...], what: str, where: str,
    required: bool = True,
) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(
                f"{where}: no column named '{wanted}' (the {what} column). Columns found: "
                f"{', '.join(map(str, columns))}. Pass --{what}-column with one of them."
            )
        return wanted
    lower = {str(c).lower(): c for c in columns}
    for guess in guesses:
        if guess in lower:
            return lower[guess]
    if required:
        raise DataError(
            f"{where}: cannot tell which column holds the {what}; columns found: "
            f"{', '.join(map(str, columns))}. Pass --{what}-column NAME."
        )
    return None


def _cell(value: Any) -> Any:
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # lists/arrays are not scalars
        pass
    return value


def frame_to_examples(
    frame: pd.DataFrame, where: str, row_offset: int, text_column: str | None,
    label_column: str | None, require_labels: bool, label_names: list[str] | None = None,
) -> Examples:
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    tcol = pick_column(columns, text_column, TEXT_COLUMN_GUESSES, "text", where)
    lcol = pick_column(columns, label_column, LABEL_COLUMN_GUESSES, "label", where,
                       required=require_labels)
    texts = [_cell(v) for v in frame[tcol].tolist()]
    texts = [None if v is None else str(v) for v in texts]
    labels = None
    if lcol is not None:
        labels = []
        for v in frame[lcol].tolist():
            v = _cell(v)
            if v is None or (isinstance(v, str) and not v.strip()):
                labels.append(None)
            elif label_names is not None and not isinstance(v, str):
                # HF ClassLabel ints -> names; -1 is how ClassLabel marks "no label".
                labels.append(label_names[int(v)] if int(v) >= 0 else None)
            elif isinstance(v, float) and v.is_integer():
                # An int column with a missing value is read as float: 1.0 must stay "1".
                labels.append(str(int(v)))
            else:
                labels.append(str(v).strip())
    origins = [f"{where} row {i + row_offset}" for i in range(len(frame))]
    return Examples(inputs=texts, labels=labels, origins=origins, modality=TEXT, source=where)


def read_table(
    path: Path, text_column: str | None, label_column: str | None, require_labels: bool,
) -> Examples:
    frame, offset = read_table_frame(path)
    if frame.empty:
        raise DataError(f"{path}: the file has no rows. Point transferkit at a file with data.")
    return frame_to_examples(frame, path.name, offset, text_column, label_column, require_labels)


def read_hf_dataset(
    spec: str, text_column: str | None, label_column: str | None, require_labels: bool,
) -> dict[str, Examples]:
    """A ``save_to_disk`` folder or a hub dataset name (``hf:NAME`` or ``NAME[:config]``)."""
    import datasets

    path = Path(spec)
    try:
        if is_hf_disk_dataset(path):
            loaded = datasets.load_from_disk(str(path))
        else:
            name = spec.removeprefix("hf:")
            config = None
            if ":" in name:
                name, config = name.split(":", 1)
            loaded = datasets.load_dataset(name, config)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as e:
        raise DataError(
            f"Cannot load the Hugging Face dataset '{spec}': {e}. Check the name (or the "
            "folder written by save_to_disk), and that you are online or have it cached."
        ) from e
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}
    out: dict[str, Examples] = {}
    for split_name, ds in splits.items():
        label_names = None
        lcol = pick_column(list(ds.column_names), label_column, LABEL_COLUMN_GUESSES, "label",
                           spec, required=require_labels)
        feature = ds.features.get(lcol) if lcol else None
        if feature is not None and isinstance(feature, datasets.ClassLabel):
            label_names = list(feature.names)
        frame = ds.to_pandas()
        out[_split_key(split_name)] = frame_to_examples(
            frame, f"{spec}[{split_name}]", 0, text_column, lcol, require_labels, label_names
        )
    return out


def _split_key(name: str) -> str:
    name = name.lower()
    if name in ("validation", "valid", "dev", "val"):
        return "valid"
    return name

