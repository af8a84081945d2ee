"""Run configuration: one pydantic model, settable from CLI flags and/or a YAML file.

YAML keys are the CLI option names (``per_class`` or ``per-class``); flags given on the
command line win over the file. The resolved config is saved as ``run.yaml`` in every run,
so ``transferkit fit --config RUN/run.yaml`` repeats a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

# Numeric precisions of the torch paths (the ONNX engine checks against this too, torch-free).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class FitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: str = Field(description="training data: file, folder, or hf:NAME")
    valid: str | None = None
    test: str | None = None
    out: str | None = None  # None: a new runs/<data>-<strategy>-<time> folder per run
    text_column: str | None = None
    label_column: str | None = None
    label_delimiter: str | None = None  # multi-label: "a|b" label cells
    per_class: int | None = Field(default=None, ge=1)
    test_size: float = Field(default=0.2, gt=0, lt=1)
    strict: bool = False
    max_bad_fraction: float = Field(default=0.2, ge=0, le=1)
    max_text_chars: int = Field(default=100_000, ge=1)  # longer texts are reported bad rows
    backbone: str = "minilm"  # "auto": rank the candidates and fit the best
    candidates: list[str] | None = None  # with backbone "auto" (default: every installed one)
    trust_remote_code: bool = False  # run code shipped with the backbone (explicit only)
    pooling: Literal["mean", "cls", "max", "last"] | None = None
    max_length: int | None = Field(default=None, ge=1)
    image_size: int | None = Field(default=None, ge=16)
    # audio: every clip cut or padded to this many seconds (None: DEFAULT_CLIP_SECONDS, 1.0)
    clip_seconds: float | None = Field(default=None, gt=0, le=60)
    strategy: str = "probe"
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    batch_size: int = Field(default=32, ge=1)
    precision: Precision = "auto"
    device: str = "auto"
    cache: bool = True
    compare_baseline: bool = False
    compare_budgets: list[int] = Field(default_factory=list)
    overwrite: bool = False
    resume: bool = False


class PretrainConfig(BaseModel):
    """One self-supervised pretraining run (``transferkit pretrain``); saved as
    ``pretrain.yaml`` in the output backbone folder."""

    model_config = ConfigDict(extra="forbid")

    corpus: list[str] = Field(description="unlabelled data: files or folders")
    out: str = "runs/pretrained"
    modality: Literal["text", "image"] = "text"
    source: str | None = None  # --from: backbone to continue (text) or architecture (image)
    scratch: bool = False  # random initial weights
    trust_remote_code: bool = False  # run code shipped with --from (explicit only)
    size: Literal["tiny", "mini", "small"] = "tiny"  # text --scratch: BERT size
    text_column: str | None = None
    tokenizer: str | None = None  # text --scratch: reuse this tokenizer instead of training one
    vocab_size: int = Field(default=8000, ge=100)  # text --scratch: WordPiece vocabulary
    lowercase: bool = True  # text --scratch tokenizer
    max_length: int = Field(default=128, ge=8)
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    whole_word: bool = False
    image_size: int | None = Field(default=None, ge=16)
    temperature: float = Field(default=0.2, gt=0)  # NT-Xent
    epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0)  # None: the objective's default
    batch_size: int | None = Field(default=None, ge=2)  # None: the objective's default
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    eval_every: int | None = Field(default=None, ge=1)  # None: about 10 evaluations a run
    patience: int | None = Field(default=3, ge=1)
    valid_fraction: float = Field(default=0.05, ge=0, lt=1)
    valid_max: int = Field(default=2000, ge=1)  # held-out examples at most (evaluation cost)
    checkpoint_every: int | None = Field(default=None, ge=1)
    seed: int = 0
    precision: Precision = "auto"
    device: str = "auto"
    overwrite: bool = False
    resume: bool = False


# Settings a file never carries: each changes what a command may destroy or run, so it must
# be said on the command line (or in Python) each time, never inherited from a saved run.
COMMAND_LINE_ONLY = ("overwrite", "resume", "trust_remote_code")


def _normalise_keys(raw: dict[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or nothing when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def load_yaml(path: str | Path, model: type[BaseModel] | None = None) -> dict[str, Any]:
    """A YAML config's values, checked against ``model``'s fields (default ``FitConfig``).

    An unknown key names the file and lists the valid ones; ``trust_remote_code: true`` is
    refused; ``overwrite`` and ``resume`` are dropped (run.yaml files saved by older
    versions carry them), so replaying a saved run never deletes anything."""
    model = model or FitConfig
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file {p} does not exist.")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{p}: not valid YAML ({e}).") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of option: value at the top level.")
    values = _normalise_keys(raw)
    if values.get("trust_remote_code"):
        raise ConfigError(f"{p} sets trust_remote_code, which a config file may not do: "
                          "running a model's own code must be asked for each time. Remove "
                          "the line and pass --trust-remote-code on the command line.")
    valid = [k for k in model.model_fields if k not in COMMAND_LINE_ONLY]
    unknown = [k for k in values if k not in valid and k not in COMMAND_LINE_ONLY]
    if unknown:
        raise ConfigError(f"{p}: unknown key '{unknown[0]}'{did_you_mean(unknown[0], valid)}."
                          f" Valid keys: {', '.join(valid)}.")
    return {k: v for k, v in values.items() if k not in COMMAND_LINE_ONLY}


def build_config(file_values: dict[str, Any], cli_values: dict[str, Any]) -> FitConfig:
    """Defaults < YAML file < command-line flags (flags left unset are ``None``)."""
    merged = dict(file_values)
    merged.update({k: v for k, v in cli_values.items() if v is not None})
    try:
        return FitConfig.model_validate(merged)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"Invalid configuration: {problems}.") from e


def dump_yaml(config: BaseModel) -> str:
    """The config to save with a run: everything but the command-line-only settings."""
    return yaml.safe_dump(config.model_dump(exclude=set(COMMAND_LINE_ONLY)), sort_keys=False,
                          allow_unicode=True)
