"""Predictions for a file or folder, written as CSV (label + one probability per class)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .._io import write_with
from .._outputs import check_output_file
from ..data import MAX_TEXT_CHARS, DataReport, read_examples, validate_examples
from ..data.examples import ISSUE_NAMES, TEXT
from ..data.tables import other_columns
from ..errors import DataError

if TYPE_CHECKING:
    from .engine_base import Engine


_WHAT_TO_GIVE = {
    TEXT: "a CSV/JSONL/Parquet/TXT file of texts",
    "audio": "a folder of audio clips (.wav/.flac/.ogg) or a CSV/JSONL/Parquet with a column "
             "of audio file paths",
}


def predict_file(
    engine: Engine, source: str | Path, output: str | Path, *, text_column: str | None = None,
    overwrite: bool = False, inputs: tuple[Any, ...] = (), max_text_chars: int = MAX_TEXT_CHARS,
) -> tuple[Path, int, int]:
    """Predict every row of ``source``; rows that cannot be read keep their place in the output
    with an empty label and the reason, so the output lines up with the input, and a table's
    other columns (an ``id``) are kept beside the predictions. Rows are validated as
    ``load_examples`` validates them (texts longer than ``max_text_chars`` are unusable).

    ``engine`` comes from :func:`transferkit.reuse.engines.load_engine` (torch or ONNX)."""
    output = check_output_file(output, overwrite, inputs=(source, *inputs))
    examples = read_examples(source, split="test", text_column=text_column,
                             require_labels=False)
    if examples.modality != engine.modality:
        raise DataError(
            f"{source} holds {examples.modality} inputs, but the model reads "
            f"{engine.modality}: give it {engine.modality} inputs ("
            + _WHAT_TO_GIVE.get(engine.modality, "a folder of images or an .npz file") + ").")
    report = DataReport()
    usable = validate_examples(examples, report, require_labels=False,
                               max_text_chars=max_text_chars)
    reasons = {i.origin: ISSUE_NAMES.get(i.kind, i.kind) + (f" ({i.detail})" if i.detail else "")
               for i in report.issues}
    good = {o: i for i, o in enumerate(usable.origins)}
    proba = engine.predict_proba(list(usable.inputs))
    labels = engine.labels_from_proba(proba)
    rows = []
    for i, origin in enumerate(examples.origins):
        x = examples.inputs[i]
        row: dict[str, object] = {"row": origin}
        row["input"] = x if examples.modality == TEXT else (
            str(x) if isinstance(x, Path) else origin)
        if examples.labels is not None:
            row["true_label"] = examples.labels[i]
        j = good.get(origin)
        if j is None:
            row["label"] = ""
            row["error"] = reasons.get(origin, "unusable input")
        else:
            row["label"] = labels[j]
            row["error"] = ""
            for c, p in zip(engine.classes, proba[j], strict=True):
                row[f"prob_{c}"] = float(p)
        rows.append(row)
    frame = pd.DataFrame(rows)
    kept = other_columns(Path(source), text_column, None)  # e.g. an id to join back on
    if kept is not None and len(kept) == len(frame):
        kept.columns = [f"input_{c}" if c in frame.columns else c for c in kept.columns]
        frame = pd.concat([frame[["row"]], kept, frame.drop(columns="row")], axis=1)
    write_with(output, lambda p: frame.to_csv(p, index=False))
    return output, len(usable), len(examples) - len(usable)
