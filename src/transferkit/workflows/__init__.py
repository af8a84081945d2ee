"""Whole reported runs, one per command-line verb: the layer the CLI and the server call."""

from __future__ import annotations

from .demo import run_demo, write_examples
from .fit import RunResult, compare_with_baseline, fit_run
from .pretrain import pretrain, pretrain_run
from .study import study

__all__ = ["RunResult", "compare_with_baseline", "fit_run", "pretrain", "pretrain_run",
           "run_demo", "study", "write_examples"]
