"""Text tables: CSV, TSV, JSONL, Parquet, and Hugging Face ``datasets`` (by name or on disk).

A table whose input column holds audio file paths (``clips/yes_01.wav``, relative to the
table's folder) is audio data: its examples are those paths, opened by validation.

Every reader returns the table and, for each of its rows, the place the user sees: the line an
editor shows for CSV, TSV, JSONL and TXT files (``line 12``), the row for Parquet and JSON
arrays (``row 3``). Parsing is linear
in the file's size: the CSV header is read by us (pandas de-duplicates repeated column names
in quadratic time, which made a 1 MB one-line file take minutes), and JSON lines one by one.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .audio import audio_paths, looks_like_audio_paths
from .cells import column_list, to_examples
from .examples import AUDIO, Examples

TABLE_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pq", ".txt"}
TEXT_COLUMN_GUESSES = ("text", "sentence", "content", "review", "document", "body", "question")
# A table without a text column may name audio files in one of these (paths relative to the
# table's folder); any column given as --text-column that holds audio paths is read as audio.
PATH_COLUMN_GUESSES = ("audio", "path", "file", "filename", "filepath", "audio_path",
                       "file_path", "audio_file", "clip", "wav")
LABEL_COLUMN_GUESSES = ("label", "labels", "category", "class", "target", "y")
# A text table has a handful of columns; a first line with more is not a header (a file of
# one long line, or the wrong separator), and building a frame that wide takes long.
MAX_COLUMNS = 10_000
HEADER_HINT = ("The first line of a CSV names its columns (e.g. text,label): add such a line, "
               "or check the separator (a .tsv file is read with tabs).")


def is_hf_disk_dataset(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists() for name in ("dataset_dict.json", "dataset_info.json", "state.json")
    )


def read_table_frame(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Read a table file; return it with the place (``line 12``) of each of its rows."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return _read_csv(path, "\t" if suffix == ".tsv" else ",")
        elif suffix == ".jsonl":
            return _read_jsonl(path)
        elif suffix == ".json":
            frame = _read_json(path)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix == ".txt":
            texts = path.read_text(encoding="utf-8").splitlines()
            return pd.DataFrame({"text": texts}), [f"line {i}" for i in range(1, len(texts) + 1)]
        else:
            raise DataError(
                f"{path}: unsupported file type '{suffix}'. Use .csv, .tsv, .jsonl, .parquet or "
                ".txt, a folder of images or audio clips (root/<class>/*.jpg, *.wav), an .npz "
                "with 'images' and 'labels', or a Hugging Face dataset."
            )
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text ({e}). Re-save the file as UTF-8.") from e
    except pd.errors.ParserError as e:
        raise DataError(
            f"{path}: cannot parse as {suffix.lstrip('.').upper()} ({str(e).strip()}). A row "
            "with more fields than the header usually holds an unquoted separator: quote such "
            "texts (\"a, b\"), or check the separator."
        ) from e
    except ValueError as e:
        raise DataError(
            f"{path}: cannot parse as {suffix.lstrip('.').upper()} ({e}). Check the file format, "
            "or rename it with the right extension (.csv, .tsv, .jsonl, .parquet)."
        ) from e
    return frame, [f"row {i}" for i in range(1, len(frame) + 1)]


def _read_csv(path: Path, sep: str) -> tuple[pd.DataFrame, list[str]]:
    """All cells as the file's strings ("NA", "null", "0123" stay text), header read by us."""
    _check_header(path, sep)
    frame = pd.read_csv(path, sep=sep, header=None, dtype=str, keep_default_na=False)
    names = unique_names(frame.iloc[0].tolist())
    frame = frame.iloc[1:].reset_index(drop=True)
    frame.columns = names
    lines = _record_lines(path, sep)
    if len(lines) != len(frame):  # the csv module split records otherwise: say "row", not "line"
        return frame, [f"row {i}" for i in range(1, len(frame) + 1)]
    return frame, [f"line {n}" for n in lines]


def _record_lines(path: Path, sep: str) -> list[int]:
    """The line each data record starts on, as an editor numbers lines (a quoted text may
    span several lines, so this is not the record's index plus one)."""
    starts = []
    limit = csv.field_size_limit(sys.maxsize)  # texts are bounded later, with a message
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=sep)
            end = 0
            for record in reader:
                if record:
                    starts.append(end + 1)
                end = reader.line_num
    except csv.Error:
        return []
    finally:
        csv.field_size_limit(limit)
    return starts[1:]  # the first record is the header


def _check_header(path: Path, sep: str) -> None:
    with path.open(encoding="utf-8-sig", newline="") as f:
        try:
            header = next((record for record in csv.reader(f, delimiter=sep) if record), None)
        except csv.Error as e:  # e.g. a first line that is one field of a whole text
            raise DataError(f"{path}: the first line is not a header ({e}). {HEADER_HINT}") from e
    if header is None:
        raise DataError(f"{path}: the file has no rows. Point transferkit at a file with data.")
    if len(header) > MAX_COLUMNS:
        raise DataError(
            f"{path}: the first line has {len(header):,} columns, more than the "
            f"{MAX_COLUMNS:,} a table of texts can have. {HEADER_HINT}"
        )


def unique_names(header: Sequence[object]) -> list[str]:
    """Column names as pandas makes them ("Unnamed: 2", "x", "x.1"), in linear time."""
    seen: set[str] = set()
    counts: dict[str, int] = {}
    names = []
    for i, value in enumerate(header):
        name = str(value) if str(value) else f"Unnamed: {i}"
        k = counts.get(name, 0)
        candidate = name if k == 0 else f"{name}.{k}"
        while candidate in seen:
            k += 1
            candidate = f"{name}.{k}"
        counts[name] = k + 1
        seen.add(candidate)
        names.append(candidate)
    return names


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """One JSON object a line, parsed here so that an error names its line and types stay
    as written (a number is not a string); blank lines are skipped."""
    records, lines = [], []
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            records.append(_json_object(line, f"{path}:{number}"))
            lines.append(f"line {number}")
    return pd.DataFrame(records, dtype=object), lines


def _read_json(path: Path) -> pd.DataFrame:
    """A JSON array of objects, or an object of columns (what ``DataFrame.to_json`` writes)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}). "
                        "Fix the file, or save it as JSON lines (.jsonl).") from e
    if isinstance(data, list):
        return pd.DataFrame([_json_object(r, f"{path} item {i + 1}") for i, r in enumerate(data)],
                            dtype=object)
    if isinstance(data, dict):
        return pd.DataFrame(data, dtype=object)
    raise DataError(f"{path}: holds a JSON {type(data).__name__}; expected an array of objects "
                    "like [{\"text\": \"...\", \"label\": \"...\"}].")


def _json_object(value: object, where: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: not valid JSON ({e.msg}, column {e.colno}). Each line of a .jsonl "
                "file is one JSON object like {\"text\": \"...\", \"label\": \"...\"}: fix or "
                "remove that line."
            ) from e
    if not isinstance(value, dict):
        raise DataError(f"{where}: a JSON {type(value).__name__}, not an object like "
                        "{\"text\": \"...\", \"label\": \"...\"}. Write one object per row.")
    return value


def pick_column(
    columns: list[str], wanted: str | None, guesses: tuple[str, ...], what: str, where: str,
    required: bool = True,
) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(
                f"{where}: no column named '{wanted}' (the {what} column). Columns found: "
                f"{column_list(columns)}. Pass --{what}-column with one of them."
            )
        return wanted
    lower = {str(c).lower(): c for c in columns}
    for guess in guesses:
        if guess in lower:
            return lower[guess]
    if required:
        raise DataError(
            f"{where}: cannot tell which column holds the {what}; columns found: "
            f"{column_list(columns)}. Pass --{what}-column NAME."
        )
    return None


def pick_input_column(frame: pd.DataFrame, wanted: str | None, where: str) -> str:
    """The text column (given or guessed); in a table without one, a column of audio file
    paths guessed by name (``PATH_COLUMN_GUESSES``)."""
    columns = [str(c) for c in frame.columns]
    found = pick_column(columns, wanted, TEXT_COLUMN_GUESSES, "text", where, required=False)
    if found is not None:
        return found
    found = pick_column(columns, None, PATH_COLUMN_GUESSES, "path", where, required=False)
    if found is not None and looks_like_audio_paths(frame[found].tolist()):
        return found
    raise DataError(
        f"{where}: cannot tell which column holds the text (or the audio file paths); columns "
        f"found: {column_list(columns)}. Pass --text-column NAME."
    )


def frame_to_examples(
    frame: pd.DataFrame, where: str, rows: Sequence[str], text_column: str | None,
    label_column: str | None, require_labels: bool, label_names: list[str] | None = None,
    base: Path | None = None,
) -> Examples:
    """A table's examples: texts, or audio file paths (resolved against ``base``, the table's
    folder) when the input column holds them."""
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    tcol = pick_input_column(frame, text_column, where)
    lcol = pick_column(columns, label_column, LABEL_COLUMN_GUESSES, "label", where,
                       required=require_labels)
    examples = to_examples(frame, where, rows, tcol, lcol, label_names)
    if looks_like_audio_paths(examples.inputs):
        examples.inputs, examples.modality = audio_paths(examples.inputs, base), AUDIO
    return examples


def read_table(
    path: Path, text_column: str | None, label_column: str | None, require_labels: bool,
) -> Examples:
    frame, rows = read_table_frame(path)
    if frame.empty:
        raise DataError(f"{path}: the file has no rows. Point transferkit at a file with data.")
    return frame_to_examples(frame, path.name, rows, text_column, label_column, require_labels,
                             base=path.parent)


def other_columns(path: Path, text_column: str | None, label_column: str | None
                  ) -> pd.DataFrame | None:
    """The columns of a table file besides its input (text or audio path) and label, in file
    order (an ``id`` to join predictions back on); None for sources that are not table
    files."""
    if path.suffix.lower() not in TABLE_SUFFIXES or not path.is_file():
        return None
    frame, _ = read_table_frame(path)
    frame.columns = [str(c) for c in frame.columns]
    columns = list(frame.columns)
    used = {pick_input_column(frame, text_column, path.name),
            pick_column(columns, label_column, LABEL_COLUMN_GUESSES, "label", path.name,
                        required=False)}
    return frame[[c for c in columns if c not in used]].reset_index(drop=True)


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
            frame, f"{spec}[{split_name}]", [f"row {i}" for i in range(len(frame))], text_column,
            lcol, require_labels,
            label_names)
    return out


def _split_key(name: str) -> str:
    name = name.lower()
    if name in ("validation", "valid", "dev", "val"):
        return "valid"
    return name

