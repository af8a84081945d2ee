"""Predictions for a file or folder, written as CSV (label + one probability per class)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .._io import write_with
from ..data import DataReport, pick_split, read_source
from ..data.examples import TEXT
from ..data.validate import clean_rows
from ..errors import ArtifactError

if TYPE_CHECKING:
    from .engines import Engine


def refuse_existing(output: str | Path, overwrite: bool) -> Path:
    """The output path, unless a file is there already and may not be replaced (checked
    before a model is loaded, so the user does not wait for an error)."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise ArtifactError(
            f"{output} already exists. Choose another --output or pass --overwrite."
        )
    return output


def predict_file(
    engine: Engine, source: str | Path, output: str | Path, *, text_column: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, int, int]:
    """Predict every row of ``source``; rows that cannot be read keep their place in the output
    with an empty label and the reason, so the output lines up with the input.

    ``engine`` comes from :func:`transferkit.reuse.engines.load_engine` (torch or ONNX)."""
    output = refuse_existing(output, overwrite)
    examples = pick_split(source, read_source(source, text_column=text_column,
                                              require_labels=False), "test")
    usable = clean_rows(examples, DataReport(), require_labels=False)
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
            row["error"] = "empty text" if examples.modality == TEXT else "unreadable image"
        else:
            row["label"] = labels[j]
            row["error"] = ""
            for c, p in zip(engine.classes, proba[j], strict=True):
                row[f"prob_{c}"] = float(p)
        rows.append(row)
    frame = pd.DataFrame(rows)
    write_with(output, lambda p: frame.to_csv(p, index=False))
    return output, len(usable), len(examples) - len(usable)
