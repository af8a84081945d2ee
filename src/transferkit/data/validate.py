"""Row-level validation: drop bad rows, count them, name where they are.

Policy (DESIGN.md): bad rows are skipped and counted; the run fails only when they exceed
``max_bad_fraction`` of a split, or on any issue at all under ``strict``.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from ..errors import DataError
from .audio import audio_problem
from .cells import is_missing_label
from .examples import AUDIO, IMAGE, ISSUE_NAMES, TEXT, DataReport, Examples, _content_bytes

ROW_ISSUES = ("empty_text", "long_text", "missing_label", "bad_image", "bad_audio",
              "silent_audio", "long_audio")
# Longer texts are skipped (and reported): a model reads a few hundred tokens of a text, and
# tokenizing one 50 MB text took 8-9 GB of memory before it was truncated.
MAX_TEXT_CHARS = 100_000


def clean_rows(
    ex: Examples, report: DataReport, require_labels: bool, max_text_chars: int = MAX_TEXT_CHARS,
) -> Examples:
    """Drop rows with no usable input or (when labels are required) no label.

    Audio files are opened here (``audio.audio_problem``): unreadable, truncated or empty
    (``bad_audio``), silent (``silent_audio``) or over ``MAX_CLIP_SECONDS`` (``long_audio``).

    A label cell that reads empty, NA, N/A, NaN, null or None (any case) is a missing label:
    pandas would have made those NaN, and a class named "NA" is almost always a hole in the
    data. The report names the row and what the cell said, so a real class of that name
    can be renamed."""
    keep: list[int] = []
    for i, x in enumerate(ex.inputs):
        origin = ex.origins[i]
        if ex.modality == TEXT and (x is None or not str(x).strip()):
            report.add("empty_text", origin)
            continue
        if ex.modality == TEXT and len(str(x)) > max_text_chars:
            report.add("long_text", origin,
                       f"{len(str(x)):,} characters, max_text_chars is {max_text_chars:,}")
            continue
        if ex.modality == IMAGE:
            problem = image_problem(x)
            if problem:
                report.add("bad_image", origin, problem)
                continue
        if ex.modality == AUDIO:
            found = audio_problem(x)
            if found:
                kind, detail = found
                # a folder's origin is the file; a table row's is "file line N": add the path
                report.add(kind, origin, detail.removeprefix(f"{origin}: "))
                continue
        label = None if ex.labels is None else ex.labels[i]
        if require_labels and is_missing_label(label):
            shown = "" if label is None or not label.strip() else \
                f"'{label.strip()}' is read as no label"
            report.add("missing_label", origin, shown)
            continue
        keep.append(i)
    return ex.subset(keep)


def image_problem(x: object) -> str | None:
    """Why an image cannot be used, or None. Decodes fully so truncation is caught here."""
    if isinstance(x, np.ndarray):
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] not in (1, 3, 4)):
            return f"array of shape {x.shape}; expected HxW or HxWxC with C in 1, 3, 4"
        if x.size == 0:
            return "empty array"
        return None
    try:
        with Image.open(x) as im:
            im.load()
    except Exception as e:  # PIL raises many types for corrupt files
        return f"{type(e).__name__}: {e}"
    return None


def drop_unseen_labels(ex: Examples, classes: list[str], report: DataReport) -> Examples:
    known = set(classes)
    keep = []
    for i, labels in enumerate(ex.label_sets()):
        unseen = [x for x in labels if x not in known]
        if not unseen:
            keep.append(i)
        else:
            report.add("unseen_label", ex.origins[i], f"label '{', '.join(unseen)}'")
    return ex.subset(keep)


def canonical_multilabels(ex: Examples, delimiter: str) -> Examples:
    """Split ``"b|a|a"`` into a label set and store it canonically as ``"a|b"``."""
    labels = None
    if ex.labels is not None:
        labels = []
        for label in ex.labels:
            if label is None:
                labels.append(None)
                continue
            parts = sorted({p.strip() for p in str(label).split(delimiter)
                            if not is_missing_label(p)})
            labels.append(delimiter.join(parts) if parts else None)
    return Examples(ex.inputs, labels, ex.origins, ex.modality, ex.source, delimiter)


def drop_leakage(train: Examples, other: Examples, report: DataReport) -> Examples:
    """Remove exact copies of training inputs from an evaluation split (they inflate scores)."""
    seen = {_digest(x) for x in train.inputs}
    keep = []
    for i, x in enumerate(other.inputs):
        if _digest(x) in seen:
            report.add("leakage", other.origins[i], "same input is in the training data")
        else:
            keep.append(i)
    return other.subset(keep)


def _digest(x: object) -> bytes:
    if isinstance(x, str):
        return hashlib.sha1(x.strip().encode("utf-8")).digest()
    return hashlib.sha1(_content_bytes(x)).digest()


def enforce_policy(
    report: DataReport, sizes: dict[str, int], strict: bool, max_bad_fraction: float
) -> None:
    if strict and report.issues:
        details = "\n  ".join(report.lines())
        raise DataError(
            f"Data validation found problems (--strict is on):\n  {details}\n"
            "Fix these rows, or run without --strict to skip them."
        )
    for source, n_rows in sizes.items():
        bad = [i for i in report.issues if i.kind in ROW_ISSUES and i.origin.startswith(source)]
        if n_rows and len(bad) / n_rows > max_bad_fraction:
            kinds = sorted({i.kind for i in bad})
            details = "\n  ".join(report.describe(k) for k in kinds)
            raise DataError(
                f"{source}: {len(bad)} of {n_rows} rows are unusable "
                f"(more than {max_bad_fraction:.0%}):\n  {details}\n"
                "This usually means a wrong --text-column/--label-column or a broken file."
            )


def issue_summary(report: DataReport) -> str:
    counts = report.counts()
    if not counts:
        return "no problems found"
    return ", ".join(f"{n} {ISSUE_NAMES.get(k, k)}" for k, n in counts.items())
