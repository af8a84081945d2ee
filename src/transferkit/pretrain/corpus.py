"""Unlabelled corpora: the texts, images or audio clips of any source ``fit`` reads, labels
ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import AUDIO, IMAGE, TEXT, DataReport, read_source, validate_examples
from ..errors import DataError

KIND_NAMES = {TEXT: "texts", IMAGE: "images", AUDIO: "audio clips"}


def read_corpus(sources: list[str], modality: str, text_column: str | None = None
                ) -> tuple[list[Any], dict[str, Any]]:
    """All inputs of every split of every source, in order, and what was read and dropped.

    A labelled dataset is read like an unlabelled one (its labels are ignored); rows ``fit``
    would skip (empty or over-long texts, unreadable images, bad, silent or over-long audio)
    are dropped and counted. A source of the wrong kind (images for a text run) is an error
    that names it, never a silent empty corpus."""
    if not sources:
        raise DataError("No corpus given: pass one or more files or folders to pretrain on.")
    items: list[Any] = []
    report: dict[str, Any] = {"sources": [], "dropped_empty": 0}
    for source in sources:
        if not Path(source).exists() and not str(source).startswith("hf:"):
            raise DataError(f"{source}: no such file or folder. Check the corpus path.")
        splits = read_source(source, text_column=text_column, require_labels=False)
        n = 0
        for examples in splits.values():
            if examples.modality != modality:
                fix = f"--modality {examples.modality}"
                raise DataError(f"{source} holds {examples.modality} data but this is a "
                                f"{modality} pretraining run. Pass {fix}, or another corpus.")
            usable = validate_examples(examples, DataReport(), require_labels=False)
            report["dropped_empty"] += len(examples) - len(usable)  # empty, too long, broken
            items += usable.inputs
            n += len(usable)
        report["sources"].append({"source": str(source), "examples": n})
    if not items:
        raise DataError(f"The corpus ({', '.join(map(str, sources))}) has no usable "
                        f"{KIND_NAMES.get(modality, modality)}.")
    report["examples"] = len(items)
    return items, report
