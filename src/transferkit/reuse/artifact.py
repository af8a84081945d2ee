"""The artifact directory (DESIGN.md): safetensors + JSON, self-contained, never unpickled.

    config.json          what this is: version, labels, backbone (source, fingerprint,
                         preprocessing), strategy, head shape
    head.safetensors     the classification head
    backbone/            backbone weights (safetensors) + tokenizer / preprocessing files
    metrics.json, README.md (model card), run.yaml, report.*: written by the run
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..adapt.model import TransferModel
from ..backbones.registry import load_from_folder
from ..errors import ArtifactError, BackboneNotFoundError

FORMAT = "transferkit-artifact"
FORMAT_VERSION = 1
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"


class BackboneInfo(BaseModel):
    source: str
    resolved: str
    modality: str
    feature_dim: int
    fingerprint: str
    preprocessing: dict[str, Any]


class HeadInfo(BaseModel):
    type: str = "linear"
    in_features: int
    out_features: int


class ArtifactConfig(BaseModel):
    """Schema of ``config.json``; loading validates against it before touching any weights."""

    format: str
    format_version: int
    transferkit_version: str
    modality: str
    labels: list[str]
    backbone: BackboneInfo
    strategy: dict[str, Any]
    head: HeadInfo
    multilabel: bool = False
    thresholds: list[float] | None = None
    label_delimiter: str | None = None


def save_model(model: TransferModel, directory: Path, strategy: dict[str, Any]) -> Path:
    """Write weights and ``config.json`` into ``directory`` (which the caller made)."""
    head = model.head
    if not isinstance(head, nn.Linear):
        raise TypeError("only linear heads are saved by this version")
    config = ArtifactConfig(
        format=FORMAT, format_version=FORMAT_VERSION, transferkit_version=__version__,
        modality=model.backbone.modality, labels=model.classes,
        backbone=BackboneInfo(**model.backbone.describe()), strategy=strategy,
        head=HeadInfo(in_features=head.in_features, out_features=head.out_features),
        multilabel=model.multilabel, thresholds=model.thresholds,
        label_delimiter=model.delimiter,
    )
    # Write the backbone to a sibling temp folder first: a crash never leaves half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".backbone.", dir=directory))
    try:
        model.backbone.save(tmp)
        target = directory / BACKBONE_DIR
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(directory / HEAD_FILE), metadata={"format": FORMAT})
    (directory / "config.json").write_text(config.model_dump_json(indent=2), encoding="utf-8")
    return directory


def read_config(directory: Path) -> ArtifactConfig:
    path = directory / "config.json"
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such run folder. Pass the --out folder of a fit.")
    if not path.is_file():
        raise ArtifactError(
            f"{directory} is not a transferkit model: config.json is missing. Pass the --out "
            "folder written by `transferkit fit`."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        config = ArtifactConfig.model_validate(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is corrupt (not valid JSON: {e}). Re-run the fit.") from e
    except ValidationError as e:
        raise ArtifactError(
            f"{path} is not a transferkit artifact config ({e.error_count()} problems, first: "
            f"{e.errors()[0]['loc']}: {e.errors()[0]['msg']}). Is this folder from another tool?"
        ) from e
    if config.format != FORMAT:
        raise ArtifactError(f"{path}: format '{config.format}' is not '{FORMAT}'.")
    if config.format_version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} was written by a newer transferkit ({config.transferkit_version}); "
            "upgrade transferkit to load it."
        )
    return config


def load_model(directory: str | Path) -> tuple[TransferModel, ArtifactConfig]:
    directory = Path(directory)
    config = read_config(directory)
    try:
        backbone = load_from_folder(directory / BACKBONE_DIR, config.backbone.source,
                             f"artifact {directory}", {}, None)
    except (BackboneNotFoundError, OSError, SafetensorError, RuntimeError) as e:
        raise ArtifactError(f"{directory}/{BACKBONE_DIR}: cannot load the backbone ({e}).") from e
    if backbone.fingerprint != config.backbone.fingerprint:
        raise ArtifactError(
            f"{directory}: the backbone weights do not match config.json (fingerprint "
            f"{backbone.fingerprint} != {config.backbone.fingerprint}); the folder was changed "
            "or damaged. Re-run the fit."
        )
    try:
        state = load_file(str(directory / HEAD_FILE))
    except (OSError, SafetensorError) as e:
        raise ArtifactError(f"{directory}/{HEAD_FILE} is missing or corrupt ({e}).") from e
    head = nn.Linear(config.head.in_features, config.head.out_features)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{directory}/{HEAD_FILE} does not fit config.json ({e}).") from e
    model = TransferModel(backbone, config.labels, head, multilabel=config.multilabel,
                          thresholds=config.thresholds, delimiter=config.label_delimiter)
    return model.eval(), config
