"""Rank candidate backbones for a labelled task from their frozen features, before training.

Each candidate is loaded, its features for (a stratified sample of) the training examples go
through the one extraction path (``FitContext.features``: the feature cache on disk and, within
a process, the per-example memo that a later fit reuses), and every transferability score of
``scores.SCORES`` is computed on them. The ranking orders candidates by one score (the default
is the one ``benchmarks/rank.py`` measured best); the others are kept for the report.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..adapt.base import FitContext
from ..adapt.model import TransferModel
from ..backbones.registry import list_backbones, load_backbone
from ..data.examples import Dataset, Examples
from ..errors import ConfigError
from ..train.cache import FeatureCache
from ..train.device import resolve_device
from .scores import SCORES, score_all

log = logging.getLogger("transferkit")

#: the score that orders a ranking unless the caller picks another: the best measured by
#: benchmarks/rank.py (highest mean weighted tau with the probe's accuracy over 4 text, 2
#: image and 1 audio task among the scores within 1 point of top-1 regret: LogME 0.525;
#: k-NN 0.478, H-score 0.411 with 1.8 points of regret, bigger-model-first 0.273). H-score
#: led on text and images alone (0.450 against LogME's 0.445) but put the 1280-d log-mel
#: features above the speech embedding on spoken keywords (0.82 against 0.94 accuracy).
DEFAULT_SCORE = "logme"
#: target-blind reference: "bigger model first" (log10 of the parameter count)
SIZE = "size"
#: labelled examples scored per candidate by default: enough for stable scores, few enough that
#: ranking costs a fraction of fitting
MAX_EXAMPLES = 2000


@dataclass
class Candidate:
    """One backbone's scores and what scoring it cost."""

    name: str
    modality: str = ""
    resolved: str = ""
    params: int = 0
    feature_dim: int = 0
    frozen_only: bool = False
    scores: dict[str, float | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # load, extract, score, total
    from_cache: bool = False
    error: str | None = None


@dataclass
class Ranking:
    """Candidates best first by ``score``; a candidate that failed to load sorts last."""

    score: str
    candidates: list[Candidate]
    examples: int
    classes: list[str]
    scored_on: str  # "all N training examples" or "a stratified sample of N of M"

    @property
    def best(self) -> Candidate:
        ok = [c for c in self.candidates if c.error is None]
        if not ok:
            raise ConfigError(
                "No candidate backbone could be scored:\n  - " + "\n  - ".join(
                    f"{c.name}: {c.error}" for c in self.candidates)
                + "\nFix: install a backbone (`transferkit models` lists them) or name others "
                "with --candidates.")
        return ok[0]

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "score_description": describe_score(self.score),
                "examples": self.examples, "classes": self.classes,
                "scored_on": self.scored_on,
                "candidates": [asdict(c) for c in self.candidates]}


def describe_score(name: str) -> str:
    if name == SIZE:
        return "bigger model first (log10 of the parameter count; ignores the task)"
    return SCORES[name].description


def score_names() -> list[str]:
    return [*SCORES, SIZE]


def default_candidates(modality: str) -> list[str]:
    """Every installed backbone of a modality (`transferkit models` shows them)."""
    return [row["name"] for row in list_backbones(modality) if row["installed"]]


def sample_for_ranking(examples: Examples, max_examples: int | None, seed: int) -> Examples:
    """A stratified sample of at most ``max_examples`` (every class keeps at least 2 where it
    has them, so scores that compare classes see each class)."""
    if not max_examples or len(examples) <= max_examples:
        return examples
    labels = np.asarray(examples.strata())
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(np.minimum(counts, 2), np.floor(counts * max_examples / len(labels)))
    keep: list[int] = []
    for cls, n in zip(classes, quota.astype(int), strict=True):
        members = np.flatnonzero(labels == cls)
        keep.extend(rng.choice(members, size=min(n, len(members)), replace=False).tolist())
    return examples.subset(sorted(keep))


def rank(
    data: Dataset, candidates: list[str] | None = None, *, score: str = DEFAULT_SCORE,
    scores: list[str] | None = None, max_examples: int | None = MAX_EXAMPLES, seed: int = 0,
    batch_size: int = 32, precision: str = "auto", device: str | None = "auto",
    image_size: int | None = None, max_length: int | None = None, cache: bool = True,
    context: FitContext | None = None, progress: Any = None,
    clip_seconds: float | None = None,
) -> Ranking:
    """Score every candidate backbone on ``data.train`` and order them by ``score``.

    ``context``: a :class:`FitContext` to extract through (its memo then holds the features, so
    a fit in the same process reuses them); by default a new one with the disk cache."""
    if data.multilabel:
        raise ConfigError("rank scores single-label tasks; this data is multi-label "
                          "(--label-delimiter). Fit each candidate instead, or rank on one "
                          "label column.")
    wanted = list(scores or score_names())
    for name in [*wanted, score]:
        if name not in score_names():
            raise ConfigError(f"Unknown score '{name}'. Choose from: {', '.join(score_names())}.")
    if score not in wanted:
        wanted.append(score)
    names = list(candidates or default_candidates(data.modality))
    if not names:
        raise ConfigError(f"No {data.modality} backbone is installed to rank. "
                          "`transferkit models` lists them with the command that installs each.")
    if len(set(names)) != len(names):
        raise ConfigError(f"A candidate is named twice in {', '.join(names)}.")
    sample = sample_for_ranking(data.train, max_examples, seed)
    label_index = {c: i for i, c in enumerate(data.classes)}
    labels = np.array([label_index[y] for y in sample.strata()])
    if len(np.unique(labels)) < 2:
        raise ConfigError(f"{data.train.source}: ranking needs at least 2 classes with examples.")
    ctx = context or FitContext(seed=seed, batch_size=batch_size, precision=precision,
                                device=resolve_device(device),
                                cache=FeatureCache() if cache else None, memo={})
    results = []
    for i, name in enumerate(names):
        if progress is not None:
            progress("rank", i, len(names), detail=name)
        results.append(_score_candidate(name, data, sample, labels, wanted, ctx,
                                        image_size=image_size, max_length=max_length,
                                        clip_seconds=clip_seconds))
    if progress is not None:
        progress("rank", len(names), len(names))
    results.sort(key=lambda c: _order_key(c, score))
    scored_on = (f"all {len(sample)} training examples" if len(sample) == len(data.train)
                 else f"a stratified sample of {len(sample)} of {len(data.train)} training "
                 "examples")
    return Ranking(score, results, len(sample), list(data.classes), scored_on)


def _order_key(c: Candidate, score: str) -> tuple[int, float]:
    value = c.scores.get(score)
    if c.error is not None or value is None or not math.isfinite(value):
        return (1, 0.0)
    return (0, -value)


def _score_candidate(name: str, data: Dataset, sample: Examples, labels: np.ndarray,
                     wanted: list[str], ctx: FitContext, *, image_size: int | None,
                     max_length: int | None, clip_seconds: float | None) -> Candidate:
    out = Candidate(name)
    start = time.perf_counter()
    try:
        backbone = load_backbone(name, image_size=image_size, max_length=max_length,
                                 clip_seconds=clip_seconds)
    except Exception as e:  # one missing or broken candidate must not sink the ranking
        out.error = str(e).splitlines()[0]
        log.warning("rank: skipping %s: %s", name, out.error)
        return out
    if backbone.modality != data.modality:
        out.error = f"a backbone for {backbone.modality} data; the data is {data.modality}"
        return out
    out.modality, out.resolved = backbone.modality, backbone.resolved
    out.params, out.feature_dim = backbone.parameter_count(), backbone.feature_dim
    out.frozen_only = backbone.frozen_only
    out.seconds["load"] = time.perf_counter() - start
    n_before = len(ctx.extraction)
    start = time.perf_counter()
    features = ctx.features(TransferModel(backbone, data.classes), sample, "rank")
    out.seconds["extract"] = time.perf_counter() - start
    out.from_cache = all(s.from_cache for s in ctx.extraction[n_before:])
    start = time.perf_counter()
    with torch.inference_mode():
        logits = backbone.source_logits(torch.from_numpy(np.ascontiguousarray(features)))
    source_probs = None if logits is None else torch.softmax(logits.float(), -1).numpy()
    measured = [s for s in wanted if s != SIZE]
    out.scores = score_all(features, labels, source_probs=source_probs, scores=measured)
    if SIZE in wanted:
        out.scores[SIZE] = math.log10(max(out.params, 1))
    out.seconds["score"] = time.perf_counter() - start
    out.seconds["total"] = sum(out.seconds.values())
    del backbone
    return out


def agreement(ranking: Ranking, truth: dict[str, float]) -> dict[str, dict[str, Any]]:
    """How well each score predicted ``truth`` (each candidate's measured accuracy): the
    weighted Kendall tau (``scipy.stats.weightedtau``: swaps among the top candidates count
    most) and the top-1 regret, the accuracy lost by taking the candidate the score puts
    first instead of the best one. Needs two candidates with a truth and that score."""
    from scipy.stats import weightedtau

    scored = [c for c in ranking.candidates if c.error is None and c.name in truth]
    best = max((truth[c.name] for c in scored), default=float("nan"))
    out: dict[str, dict[str, Any]] = {}
    names = {s for c in scored for s, v in c.scores.items() if v is not None}
    for score in [s for s in score_names() if s in names]:
        pairs = [(c.scores[score], truth[c.name], c.name) for c in scored
                 if c.scores.get(score) is not None and math.isfinite(c.scores[score])]
        if len(pairs) < 2:
            continue
        xs, ys, who = zip(*pairs, strict=True)
        tau = float(weightedtau(xs, ys).statistic) if len(set(xs)) > 1 else float("nan")
        pick = who[int(np.argmax(xs))]
        out[score] = {"weighted_tau": tau, "pick": pick, "top1_regret": best - truth[pick],
                      "candidates": len(pairs)}
    return out
