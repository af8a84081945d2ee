"""Seeded, stratified splits and per-class label budgets."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from ..errors import DataError
from .examples import DataReport, Examples


def stratified_split(
    ex: Examples, test_size: float | int, seed: int, report: DataReport, what: str = "test"
) -> tuple[Examples, Examples]:
    """Hold out ``test_size`` of ``ex``, stratified by label; classes too small to split stay
    in the training part (and the report says so) rather than failing the run."""
    labels = np.asarray(ex.strata())
    classes, counts = np.unique(labels, return_counts=True)
    small = set(classes[counts < 2])
    idx = np.arange(len(ex))
    splittable = idx[~np.isin(labels, list(small))] if small else idx
    if small:
        report.notes.append(
            f"classes with fewer than 2 examples kept out of the {what} split: "
            f"{', '.join(sorted(map(str, small)))}"
        )
    try:
        train_idx, held_idx = train_test_split(
            splittable, test_size=test_size, random_state=seed, stratify=labels[splittable]
        )
    except ValueError as e:  # too few examples for a stratified split of this size
        raise DataError(
            f"{ex.source}: cannot hold out a stratified "
            f"{f'{test_size:.0%}' if test_size < 1 else f'{test_size}-example'} {what} split from "
            f"{len(ex)} examples of {len(classes)} classes ({e}). Give a separate {what} "
            "file, or add examples so that every class has several."
        ) from e
    train_idx = np.sort(np.concatenate([train_idx, idx[np.isin(labels, list(small))]]))
    return ex.subset(train_idx), ex.subset(np.sort(held_idx))


def per_class_budget(ex: Examples, per_class: int, seed: int, report: DataReport) -> Examples:
    """Keep at most ``per_class`` examples of each class, drawn with ``seed``.

    Drawing is nested: with the same seed, the examples of budget N are a subset of those of
    budget M > N, so learning curves compare like with like.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(ex.strata())
    keep: list[int] = []
    short: list[str] = []
    for cls in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        if len(members) < per_class:
            short.append(f"{cls} ({len(members)})")
        keep.extend(members[:per_class].tolist())
    if short:
        report.notes.append(
            f"--per-class {per_class}: these classes have fewer examples and use all they "
            f"have: {', '.join(short)}"
        )
    return ex.subset(sorted(keep))
