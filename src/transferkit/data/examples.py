"""The in-memory shape of a dataset: inputs, string labels, and where each row came from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TEXT = "text"
IMAGE = "image"
AUDIO = "audio"


@dataclass
class Examples:
    """One split. ``inputs`` are texts, image arrays (uint8 HxW or HxWxC), image file paths,
    or audio file paths / decoded ``audio.Clip``s.

    ``origins`` keeps "file row N" for every example so that any message about an example can
    name the place the user has to look at.
    """

    inputs: list[Any]
    labels: list[str] | None
    origins: list[str]
    modality: str
    source: str = ""
    delimiter: str | None = None  # multi-label: each label is a canonical "a|b" set

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def multilabel(self) -> bool:
        return self.delimiter is not None

    def label_sets(self) -> list[list[str]]:
        """Every example's labels as a list (one element unless multi-label)."""
        if self.labels is None:
            return []
        if self.delimiter is None:
            return [[label] for label in self.labels]
        return [[x for x in label.split(self.delimiter) if x] for label in self.labels]

    def strata(self) -> list[str]:
        """What splits and label budgets stratify on: the label, or a multi-label example's
        first label (label *sets* are too many and too rare to stratify on)."""
        if self.delimiter is None:
            return list(self.labels or [])
        return [s[0] if s else "" for s in self.label_sets()]

    def subset(self, indices: Any) -> Examples:
        idx = [int(i) for i in indices]
        return Examples(
            inputs=[self.inputs[i] for i in idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
            origins=[self.origins[i] for i in idx],
            modality=self.modality,
            source=self.source,
            delimiter=self.delimiter,
        )

    def fingerprint(self) -> str:
        """Content hash of the inputs (not the labels): the feature cache key's data part."""
        h = hashlib.sha256(self.modality.encode())
        for x in self.inputs:
            h.update(_content_bytes(x))
            h.update(b"\x00")
        return h.hexdigest()


def _content_bytes(x: Any) -> bytes:
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, np.ndarray):
        return str(x.shape).encode() + str(x.dtype).encode() + np.ascontiguousarray(x).tobytes()
    if isinstance(x, Path):
        return Path(x).read_bytes()
    if hasattr(x, "content_bytes"):  # audio.Clip
        return x.content_bytes()
    raise TypeError(f"unsupported input type {type(x).__name__}")


@dataclass
class DataIssue:
    kind: str
    origin: str
    detail: str = ""


# Human names of issue kinds, used in reports and in --strict errors.
ISSUE_NAMES = {
    "empty_text": "empty or missing text",
    "long_text": "text longer than max_text_chars (split it, or raise max_text_chars)",
    "missing_label": "missing label",
    "unseen_label": "label not present in the training data",
    "bad_image": "unreadable or truncated image",
    "bad_audio": "unreadable, truncated, empty or missing audio file (re-export it as WAV, "
                 "FLAC or OGG, fix the path, or drop it)",
    "silent_audio": "silent audio clip (record it again, or drop it)",
    "long_audio": "audio clip over the length limit (split long recordings into clips)",
    "leakage": "exact duplicate of a training example (train/test leakage)",
}


@dataclass
class DataReport:
    """What validation found: counts by kind and a few places of each, for the run report."""

    issues: list[DataIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, origin: str, detail: str = "") -> None:
        self.issues.append(DataIssue(kind, origin, detail))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for issue in self.issues:
            out[issue.kind] = out.get(issue.kind, 0) + 1
        return out

    def describe(self, kind: str, limit: int = 5) -> str:
        found = [i for i in self.issues if i.kind == kind]
        shown = "; ".join(f"{i.origin}{' (' + i.detail + ')' if i.detail else ''}"
                          for i in found[:limit])
        more = f" and {len(found) - limit} more" if len(found) > limit else ""
        return f"{len(found)} x {ISSUE_NAMES.get(kind, kind)}: {shown}{more}"

    def lines(self) -> list[str]:
        return [self.describe(k) for k in self.counts()] + list(self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "examples": {
                k: [f"{i.origin} {i.detail}".strip() for i in self.issues if i.kind == k][:20]
                for k in self.counts()
            },
            "notes": list(self.notes),
        }


@dataclass
class Dataset:
    """Train / optional valid / test splits over one label set, plus what validation found."""

    train: Examples
    test: Examples
    classes: list[str]
    valid: Examples | None = None
    report: DataReport = field(default_factory=DataReport)

    @property
    def modality(self) -> str:
        return self.train.modality

    @property
    def multilabel(self) -> bool:
        return self.train.multilabel

    def summary(self) -> dict[str, Any]:
        def counts(ex: Examples | None) -> dict[str, int] | None:
            if ex is None or ex.labels is None:
                return None
            sets = ex.label_sets()
            return {c: sum(c in s for s in sets) for c in self.classes}

        return {
            "modality": self.modality,
            "classes": self.classes,
            "train": {"source": self.train.source, "n": len(self.train),
                      "per_class": counts(self.train)},
            "valid": None if self.valid is None else {
                "source": self.valid.source, "n": len(self.valid), "per_class": counts(self.valid)},
            "test": {"source": self.test.source, "n": len(self.test),
                     "per_class": counts(self.test)},
            "issues": self.report.to_dict(),
        }
