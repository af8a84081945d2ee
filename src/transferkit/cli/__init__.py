"""The ``transferkit`` command line: one sub-command per verb, no logic of its own (each
calls a workflow or the Classifier)."""

from __future__ import annotations

from . import fewshot, fit, more, rank, reuse, study  # noqa: F401  (each registers its commands)
from .app import app, main, parse_options
from .strategy_flags import STRATEGY_NAMES

# --help lists the commands in the order a newcomer meets them
ORDER = ("fit", "rank", "study", "evaluate", "predict", "export", "serve", "meta-train",
         "meta-eval", "models", "strategies", "pretrain", "demo", "examples")
app.registered_commands.sort(
    key=lambda c: ORDER.index(c.name or c.callback.__name__.replace("_", "-")))

__all__ = ["STRATEGY_NAMES", "app", "main", "parse_options"]
