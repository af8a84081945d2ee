"""Typed strategy options: each strategy's options, read from its own signature.

A strategy declares its options once, as typed keyword arguments of ``__init__`` (choices as
``Literal``, "unset" as ``| None``) plus, for strategies on the training loop, the
``TrainConfig`` fields it passes on (``Strategy.train_options``). Everything else is derived
from that one declaration: the checks on options from a YAML file or ``-o KEY=VALUE``
(:func:`check_options`), ``transferkit strategies`` and the ``fit`` flags (through the
snapshot :func:`catalogue` writes), and the JSON schema of a run's YAML (:func:`config_schema`).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ..config import did_you_mean
from ..errors import ConfigError
from ..train.config import TrainConfig
from .base import STRATEGIES, Strategy

# Written by ``make options`` (write_snapshot); the CLI reads it so that ``--help``
# needs no torch import. A test keeps it equal to what the registry says.
SNAPSHOT = Path(__file__).resolve().parents[1] / "cli" / "strategy_options.json"


@dataclass(frozen=True)
class OptionSpec:
    name: str
    type: str  # "int", "float", "bool", "str", "list[str]" or "list[float]"
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    nullable: bool = False


def _kind(hint: Any) -> tuple[str, tuple[Any, ...] | None, bool]:
    """(type name, choices, nullable) of a type hint such as ``Literal['a', 'b'] | None``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        name, choices, _ = _kind(inner[0] if len(inner) == 1 else Any)
        return name, choices, type(None) in args
    if typing.get_origin(hint) is Literal:
        return type(args[0]).__name__, tuple(args), False
    if typing.get_origin(hint) is list and args[0] in (str, float):
        return f"list[{args[0].__name__}]", None, False
    if hint in (int, float, bool, str):
        return hint.__name__, None, False
    raise TypeError(f"option type {hint!r} is not one a config file can hold")


def option_specs(cls: type[Strategy]) -> list[OptionSpec]:
    """Every option ``cls`` accepts, with its type, effective default, choices and help: its
    own ``__init__`` parameters (subclass first), then the training-loop fields it passes on."""
    helps, defaults = cls.declared("option_help"), cls.declared("option_defaults")
    specs: dict[str, OptionSpec] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or not issubclass(klass, Strategy):
            continue
        hints = typing.get_type_hints(klass.__init__)
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) \
                    or p.name in specs:
                continue
            name, choices, nullable = _kind(hints[p.name])
            specs[p.name] = OptionSpec(p.name, name, defaults.get(p.name, p.default),
                                       helps.get(p.name, ""), choices, nullable)
    train_hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name in cls.train_options and f.name not in specs:
            name, choices, nullable = _kind(train_hints[f.name])
            default = f.default if f.default is not MISSING else None
            specs[f.name] = OptionSpec(f.name, name, defaults.get(f.name, default),
                                       helps.get(f.name, f.metadata.get("help", "")),
                                       choices, nullable)
    return list(specs.values())


def _number(text: str, wrong: Any, expected: str) -> float:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: numbers written that way are numbers."""
    try:
        return float(text)
    except ValueError:
        raise wrong(expected) from None


def _coerce(strategy: str, spec: OptionSpec, value: Any) -> Any:
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"Option '{spec.name}' of strategy '{strategy}' must be {expected}; "
                           f"got {value!r}.")

    if value is None:
        if spec.nullable:
            return None
        raise wrong(f"set (it has no 'unset' value; its default is {spec.default!r})")
    if spec.type == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif isinstance(value, str) and spec.type in ("int", "float"):
        value = _number(value, wrong, "a whole number" if spec.type == "int" else "a number")
    if spec.type == "bool":
        pass
    elif spec.type == "int":
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or float(value) != int(value):
            raise wrong("a whole number")
        value = int(value)
    elif spec.type == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        value = float(value)
    elif spec.type.startswith("list["):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise wrong("a list (a YAML list, or a,b,c)")
        if spec.type == "list[float]":
            value = [_number(v, wrong, "a list of numbers") if isinstance(v, str) else v
                     for v in value]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                raise wrong("a list of numbers")
            value = [float(v) for v in value]
        elif not all(isinstance(v, str) for v in value):
            raise wrong("a list of names")
    elif not isinstance(value, str):
        raise wrong("a string")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"Option '{spec.name}' of strategy '{strategy}' must be one of "
                          f"{', '.join(map(str, spec.choices))}; got {value!r}"
                          f"{did_you_mean(str(value), [str(c) for c in spec.choices])}.")
    return value


def check_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked against strategy ``name``'s typed options: unknown keys, wrong types
    and values outside the choices are a ``ConfigError`` naming the option and the fix."""
    specs = {s.name: s for s in option_specs(STRATEGIES[name])}
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise ConfigError(f"Unknown option(s) for strategy '{name}': {', '.join(unknown)}"
                          f"{did_you_mean(unknown[0], specs)}. Known: {', '.join(specs)} "
                          f"(`transferkit strategies {name}` describes them).")
    return {k: _coerce(name, specs[k], v) for k, v in given.items()}


def get_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """The registered strategy ``name`` with ``options``, checked against its typed options."""
    if name not in STRATEGIES:
        raise ConfigError(
            f"Unknown strategy '{name}'{did_you_mean(name, STRATEGIES)}. Available: "
            f"{', '.join(sorted(STRATEGIES))}.")
    return STRATEGIES[name](**check_options(name, options or {}))


def catalogue() -> dict[str, Any]:
    """Every strategy and its options, as the CLI's snapshot holds them."""
    out: dict[str, Any] = {}
    for name in sorted(STRATEGIES):
        cls = STRATEGIES[name]
        doc = inspect.getdoc(cls) or ""
        out[name] = {
            "summary": " ".join(doc.split("\n\n")[0].split()),
            "frozen_backbone": cls.frozen_backbone, "flags": cls.declared("option_flags"),
            "options": [{**asdict(s), "choices": list(s.choices) if s.choices else None}
                        for s in option_specs(cls)]}
    return out


_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string",
               "list[str]": "array", "list[float]": "array"}


def _option_schema(spec: OptionSpec) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _JSON_TYPES[spec.type], "description": spec.help}
    if spec.type.startswith("list["):
        schema["items"] = {"type": "string" if spec.type == "list[str]" else "number"}
    if spec.choices is not None:
        schema["enum"] = list(spec.choices)
    if spec.nullable:
        schema = {"anyOf": [schema, {"type": "null"}], "description": spec.help}
    if spec.default is not None or spec.nullable:
        schema["default"] = spec.default
    return schema


def config_schema() -> dict[str, Any]:
    """JSON schema of a ``fit`` YAML file (``--config``): the run's keys, and
    ``strategy_options`` checked against the chosen strategy's typed options."""
    from ..config import COMMAND_LINE_ONLY, FitConfig

    schema = FitConfig.model_json_schema()
    for key in COMMAND_LINE_ONLY:
        schema["properties"].pop(key, None)
    schema["properties"]["strategy"] = {"enum": sorted(STRATEGIES), "default": "probe"}
    schema["allOf"] = [
        {"if": {"properties": {"strategy": {"const": name}}},
         "then": {"properties": {"strategy_options": {
             "type": "object", "additionalProperties": False,
             "properties": {s.name: _option_schema(s) for s in option_specs(cls)}}}}}
        for name, cls in sorted(STRATEGIES.items())]
    return schema


def write_snapshot(path: Path = SNAPSHOT) -> None:
    path.write_text(json.dumps(catalogue(), indent=1, sort_keys=True) + "\n")
