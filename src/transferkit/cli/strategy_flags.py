"""Command-line flags generated from the strategies' typed options.

The options live in ``adapt/`` (each strategy's ``__init__`` signature); ``make options``
writes them to ``strategy_options.json`` beside this file so that ``--help`` and every
command start without importing torch. A test keeps the snapshot equal to the registry.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from ..errors import TransferkitError

CATALOGUE: dict[str, Any] = json.loads(
    (Path(__file__).with_name("strategy_options.json")).read_text())
STRATEGY_NAMES = tuple(CATALOGUE)
_TYPES: dict[str, Any] = {"int": int, "float": float, "bool": bool, "str": str,
                          "list[str]": str, "list[float]": str}  # a list is given as a,b,c
_PREFIX = "strategy_option__"  # keeps generated parameter names apart from the command's own


def _default_text(value: Any) -> str:
    return "unset" if value is None else str(value).lower() if isinstance(value, bool) \
        else str(value)


def flag_table() -> dict[str, dict[str, Any]]:
    """One entry per option name across the strategies: its flag, type, choices, help and
    the default each strategy that takes it gives it."""
    table: dict[str, dict[str, Any]] = {}
    for strategy, entry in CATALOGUE.items():
        for spec in entry["options"]:
            row = table.setdefault(spec["name"], {
                "flag": entry["flags"].get(spec["name"], spec["name"].replace("_", "-")),
                "type": spec["type"], "choices": spec["choices"], "help": spec["help"],
                "defaults": {}})
            row["defaults"][strategy] = spec["default"]
    return table


def _help(row: dict[str, Any]) -> str:
    """The option's help, then which strategies take it and their defaults, said briefly:
    ``[all but probe; default 0.01]`` or ``[lora; default 8]``."""
    takers = list(row["defaults"])
    others = [s for s in STRATEGY_NAMES if s not in takers]
    who = ", ".join(takers) if len(others) >= len(takers) else \
        "all strategies" if not others else f"all but {', '.join(others)}"
    by_default: dict[str, list[str]] = {}
    for strategy, value in row["defaults"].items():
        by_default.setdefault(_default_text(value), []).append(strategy)
    common = max(by_default, key=lambda d: len(by_default[d]))
    exceptions = "".join(f"; {', '.join(ss)} {d}" for d, ss in by_default.items() if d != common)
    return f"{row['help']} [{who}; default {common}{exceptions}]".strip()


def _parameter(name: str, row: dict[str, Any]) -> inspect.Parameter:
    kind = Literal[tuple(row["choices"])] if row["choices"] else _TYPES[row["type"]]
    flag = row["flag"]
    decl = f"--{flag}/--no-{flag}" if row["type"] == "bool" else f"--{flag}"
    option = typer.Option(decl, help=_help(row), show_default=False)
    return inspect.Parameter(_PREFIX + name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[kind | None, option])


def with_strategy_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with one flag per strategy option added; it receives the ones given as
    ``strategy_flags={option: value}`` (its own signature's last parameter)."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.name != "strategy_flags"]
    generated = [_parameter(name, row) for name, row in sorted(flag_table().items())]

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        flags = {k[len(_PREFIX):]: values.pop(k) for k in list(values) if k.startswith(_PREFIX)}
        given = {k: v for k, v in flags.items() if v is not None}
        return command(**values, strategy_flags=given)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["loss=batch_hard", "lr=1e-4"]`` -> ``{"loss": "batch_hard", "lr": 0.0001}``.

    Values are read as YAML scalars (numbers, true/false, null), with one fix: YAML 1.1
    reads ``1e-4`` (no dot) as a string, and learning rates are written that way."""
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise TransferkitError(f"--option '{pair}' is not KEY=VALUE; write e.g. "
                                   "--option loss=batch_hard.")
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        options[key.strip().replace("-", "_")] = value
    return options
