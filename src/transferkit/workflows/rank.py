"""``transferkit rank``: which backbone to start from, scored on your data in seconds.

Scores every candidate's frozen features (``select.rank``), and with ``verify`` also fits a
linear probe on each and measures it on the test split, so the report shows how well each
score predicted what the candidates really reach on this task."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .._io import write_json
from .._outputs import staged_output
from ..classifier import Classifier
from ..data import Dataset, load_data
from ..evaluate.rank_report import write_rank_report
from ..select.rank import DEFAULT_SCORE, MAX_EXAMPLES, Ranking, agreement, rank
from .fit import Progress


@dataclass
class RankResult:
    ranking: Ranking
    out: Path | None
    truth: dict[str, float] = field(default_factory=dict)  # probe test accuracy (--verify)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = self.ranking.to_dict()
        out["transferkit_version"] = __version__
        if self.truth:
            out["verified"] = {"ground_truth": "linear-probe test accuracy",
                               "accuracy": self.truth, "fit_seconds": self.fit_seconds,
                               "agreement": self.agreement}
        return out


def rank_run(
    train: str | Path | Dataset, *, test: str | Path | None = None,
    valid: str | Path | None = None, candidates: list[str] | str | None = None,
    score: str = DEFAULT_SCORE, out: str | Path | None = None,
    max_examples: int | None = MAX_EXAMPLES, verify: bool = False,
    text_column: str | None = None, label_column: str | None = None,
    image_size: int | None = None, max_length: int | None = None, batch_size: int = 32,
    precision: str = "auto", seed: int = 0, cache: bool = True, overwrite: bool = False,
    progress: Progress | None = None, clip_seconds: float | None = None,
) -> RankResult:
    """Rank backbones for a labelled task; write ``rank.json`` and a report to ``out``."""
    if isinstance(candidates, str):
        candidates = [c.strip() for c in candidates.split(",") if c.strip()]
    inputs = [] if isinstance(train, Dataset) else [train, valid, test]
    # the folder is validated before any work, and appears only once it is whole
    folder = staged_output(out, overwrite, kind="rank", inputs=inputs) if out else nullcontext()
    with folder as stage:
        data = train if isinstance(train, Dataset) else load_data(
            train, valid, test, text_column=text_column, label_column=label_column, seed=seed)
        ranking = rank(data, candidates, score=score, max_examples=max_examples, seed=seed,
                       batch_size=batch_size, precision=precision, image_size=image_size,
                       clip_seconds=clip_seconds, max_length=max_length, cache=cache,
                       progress=progress)
        result = RankResult(ranking, Path(out) if out else None)
        if verify:
            _verify(result, data, image_size=image_size, max_length=max_length,
                    clip_seconds=clip_seconds,
                    batch_size=batch_size, precision=precision, seed=seed, cache=cache,
                    progress=progress)
        if stage is not None:
            write_json(stage / "rank.json", result.to_dict())
            write_rank_report(stage, result.to_dict())
    return result


def _verify(result: RankResult, data: Dataset, *, progress: Progress | None, **options: Any
            ) -> None:
    """Ground truth: a linear probe per candidate, fitted on all of the training split and
    scored on the test split (a fresh extraction context, so its time is the time to fit)."""
    ok = [c for c in result.ranking.candidates if c.error is None]
    for i, cand in enumerate(ok):
        if progress is not None:
            progress("verify", i, len(ok), detail=cand.name)
        start = time.perf_counter()
        clf = Classifier(cand.name, "probe", image_size=options["image_size"],
                         clip_seconds=options["clip_seconds"],
                         max_length=options["max_length"], seed=options["seed"],
                         batch_size=options["batch_size"], precision=options["precision"],
                         cache=options["cache"]).fit(data)
        result.truth[cand.name] = float(clf.evaluate(data)["accuracy"])
        result.fit_seconds[cand.name] = time.perf_counter() - start
    result.agreement = agreement(result.ranking, result.truth)
