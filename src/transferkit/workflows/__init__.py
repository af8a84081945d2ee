"""Whole reported runs, one per command-line verb: the layer the CLI and the server call."""

from __future__ import annotations

from .demo import run_demo, write_examples
from .fit import RunResult, compare_with_baseline, fit_run
from .pretrain import pretrain, pretrain_run
from .rank import RankResult, rank_run
from .recommend import RecommendResult, recommend_fit
from .study import study

rank = rank_run  # transferkit.rank(...): the public name of the workflow

__all__ = ["RankResult", "RecommendResult", "RunResult", "compare_with_baseline", "fit_run",
           "pretrain", "pretrain_run", "rank", "rank_run", "recommend_fit", "run_demo", "study",
           "write_examples"]
