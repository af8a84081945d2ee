"""Reading, validating and splitting labelled data.

``load_data`` is the one entry point every command uses: it reads any supported source,
drops and counts bad rows, makes the test split when the user gave none, and applies a
per-class label budget.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .audio import Clip
from .examples import AUDIO, IMAGE, TEXT, DataIssue, DataReport, Dataset, Examples
from .folders import is_class_folder, read_folder
from .images import read_npz
from .split import per_class_budget, stratified_split
from .tables import TABLE_SUFFIXES, is_hf_disk_dataset, read_hf_dataset, read_table
from .validate import (
    MAX_TEXT_CHARS,
    canonical_multilabels,
    clean_rows,
    drop_leakage,
    drop_unseen_labels,
    enforce_policy,
    issue_summary,
)

__all__ = [
    "AUDIO", "IMAGE", "MAX_TEXT_CHARS", "TEXT", "Clip", "DataIssue", "DataReport", "Dataset",
    "Examples", "issue_summary", "load_data", "load_examples", "pick_split", "read_examples",
    "read_source", "validate_examples",
]


def read_source(
    source: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
) -> dict[str, Examples]:
    """Read one source into named splits (``all`` for a single file, or train/valid/test)."""
    spec = str(source)
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return {"all": read_npz(path, require_labels)}
        if path.suffix.lower() in TABLE_SUFFIXES:
            return {"all": read_table(path, text_column, label_column, require_labels)}
        raise DataError(
            f"{path}: unsupported file type '{path.suffix}'. Use .csv, .tsv, .jsonl, .parquet, "
            ".txt (one text a line), .npz (images + labels), a folder of images or audio "
            "clips, or a Hugging Face dataset (hf:NAME or a save_to_disk folder)."
        )
    if path.is_dir():
        if is_hf_disk_dataset(path):
            return read_hf_dataset(spec, text_column, label_column, require_labels)
        if is_class_folder(path) or not require_labels:
            return read_folder(path, require_labels)
        raise DataError(
            f"{path}: an empty folder or one without class sub-folders. Images go in "
            f"{path}/<class>/<image>.jpg, audio clips in {path}/<class>/<clip>.wav (or .flac, "
            ".ogg); a Hugging Face dataset folder needs dataset_info.json."
        )
    if spec.startswith("hf:") or _looks_like_hub_name(spec):
        return read_hf_dataset(spec, text_column, label_column, require_labels)
    raise DataError(
        f"{spec}: no such file or folder. Check the path; for a Hugging Face hub dataset "
        f"write hf:{spec}."
    )


def _looks_like_hub_name(spec: str) -> bool:
    """``owner/name`` with no file extension and no local meaning: a hub dataset id."""
    import re

    return (re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec) is not None
            and Path(spec).suffix.lower() not in TABLE_SUFFIXES | {".npz"}
            and not Path(spec.split("/")[0]).exists())


def pick_split(source: str | Path, splits: dict[str, Examples], prefer: str) -> Examples:
    """The split named ``prefer``, else the only one; several without it is an error."""
    if prefer in splits:
        return splits[prefer]
    if "all" in splits:
        return splits["all"]
    if len(splits) == 1:
        return next(iter(splits.values()))
    raise DataError(
        f"{source} holds the splits {', '.join(splits)}; none is '{prefer}'. Pass the split "
        "you want explicitly."
    )


def read_examples(
    source: str | Path, *, split: str = "all", text_column: str | None = None,
    label_column: str | None = None, require_labels: bool = True,
    label_delimiter: str | None = None,
) -> Examples:
    """Every row of one source's ``split`` (or all of it), multi-label cells made canonical,
    nothing dropped yet: for a reader that must keep each row's place (``predict`` writes
    the reason beside an unusable row). Pass the rows through ``validate_examples``."""
    examples = pick_split(source, read_source(source, text_column, label_column,
                                              require_labels=require_labels), split)
    if label_delimiter:
        examples = canonical_multilabels(examples, label_delimiter)
    return examples


def validate_examples(
    examples: Examples, report: DataReport, *, require_labels: bool = True,
    max_text_chars: int = MAX_TEXT_CHARS, classes: list[str] | None = None,
) -> Examples:
    """The one row validation: bad rows (empty or over-long texts, unreadable images,
    unreadable, silent or over-long audio, missing labels when ``require_labels``) dropped
    and counted in ``report``, and with ``classes`` given, rows of other labels dropped and
    counted too."""
    examples = clean_rows(examples, report, require_labels, max_text_chars)
    if classes is not None:
        examples = drop_unseen_labels(examples, classes, report)
    return examples


def load_examples(
    source: str | Path, *, split: str = "all", text_column: str | None = None,
    label_column: str | None = None, require_labels: bool = True,
    label_delimiter: str | None = None, classes: list[str] | None = None,
    max_text_chars: int = MAX_TEXT_CHARS, report: DataReport | None = None,
) -> Examples:
    """One source's examples, read (``read_examples``) and validated (``validate_examples``)
    the way ``load_data`` does it, what was dropped counted in ``report``. Every reader of
    labelled or unlabelled data outside training goes through here, or through those two
    steps when it must keep the dropped rows' places (predict, pretraining corpora)."""
    examples = read_examples(source, split=split, text_column=text_column,
                             label_column=label_column, require_labels=require_labels,
                             label_delimiter=label_delimiter)
    return validate_examples(examples, report if report is not None else DataReport(),
                             require_labels=require_labels, max_text_chars=max_text_chars,
                             classes=classes)


def load_data(
    train: str | Path,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    per_class: int | None = None,
    seed: int = 0,
    test_size: float = 0.2,
    strict: bool = False,
    max_bad_fraction: float = 0.2,
    label_delimiter: str | None = None,
    max_text_chars: int = MAX_TEXT_CHARS,
) -> Dataset:
    """Read, validate and split labelled data for training and evaluation.

    Labels are the file's text (see ``cells``): a cell reading empty, NA, N/A, NaN, null or
    None is a missing label (a reported bad row, never a class); a JSON label column mixing
    numbers and strings is refused. Texts longer than ``max_text_chars`` are bad rows."""
    report = DataReport()
    train_splits = read_source(train, text_column, label_column)
    train_ex = pick_split(train, train_splits, "train")
    valid_ex = pick_split(valid, read_source(valid, text_column, label_column), "valid") \
        if valid is not None else train_splits.get("valid")
    test_ex = pick_split(test, read_source(test, text_column, label_column), "test") \
        if test is not None else train_splits.get("test")

    if label_delimiter:  # multi-label: "a|b" cells become canonical label sets
        train_ex, valid_ex, test_ex = (
            canonical_multilabels(ex, label_delimiter) if ex is not None else None
            for ex in (train_ex, valid_ex, test_ex))
    sizes = {ex.source: len(ex) for ex in (train_ex, valid_ex, test_ex) if ex is not None}
    train_ex, valid_ex, test_ex = (
        validate_examples(ex, report, max_text_chars=max_text_chars) if ex is not None else None
        for ex in (train_ex, valid_ex, test_ex))
    # Too many bad rows is the finding to report, not the "fewer than two classes" they cause.
    enforce_policy(report, sizes, False, max_bad_fraction)
    for ex in (valid_ex, test_ex):
        if ex is not None and ex.modality != train_ex.modality:
            raise DataError(
                f"{ex.source} holds {ex.modality} data but {train_ex.source} holds "
                f"{train_ex.modality}; all splits must be of one kind."
            )

    classes = sorted({x for labels in train_ex.label_sets() for x in labels})
    if len(classes) < 2:
        found = f"only '{classes[0]}'" if classes else "none"
        raise DataError(
            f"{train_ex.source}: training data needs at least two classes; found {found}. "
            "Check --label-column, or add examples of the other classes."
        )

    if test_ex is None:
        train_ex, test_ex = stratified_split(train_ex, test_size, seed, report)
        report.notes.append(
            f"no test set given: held out a stratified {test_size:.0%} of "
            f"{train_ex.source} (seed {seed})"
        )
    else:
        test_ex = drop_unseen_labels(test_ex, classes, report)
    if valid_ex is not None:
        valid_ex = drop_unseen_labels(valid_ex, classes, report)
        valid_ex = drop_leakage(train_ex, valid_ex, report)
    test_ex = drop_leakage(train_ex, test_ex, report)

    enforce_policy(report, sizes, strict, max_bad_fraction)
    if len(test_ex) == 0:
        raise DataError(
            f"{test_ex.source}: no usable test examples remain after validation "
            f"({issue_summary(report)}). Check the test file."
        )
    if per_class is not None:
        if per_class < 1:
            raise DataError(f"--per-class must be at least 1 (got {per_class}).")
        train_ex = per_class_budget(train_ex, per_class, seed, report)
    return Dataset(train=train_ex, valid=valid_ex, test=test_ex, classes=classes, report=report)
