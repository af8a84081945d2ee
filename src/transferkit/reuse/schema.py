"""The artifact's ``config.json`` schema, importable without torch.

It lives apart from :mod:`.artifact` (which needs torch to rebuild the model) so the ONNX
engine and the HTTP server can validate a run folder in a process that never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ArtifactError

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


def read_config(directory: str | Path) -> ArtifactConfig:
    """The validated ``config.json`` of a run folder, or an :class:`ArtifactError` that says
    whether the folder is missing, damaged or from another tool."""
    directory = Path(directory)
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
    if len(config.labels) != config.head.out_features:
        raise ArtifactError(
            f"{path}: {len(config.labels)} labels but the head has {config.head.out_features} "
            "outputs; the file was edited or damaged. Re-run the fit."
        )
    return config


def labels_from_proba(config: ArtifactConfig, proba: Any) -> list[str]:
    """Label names from probabilities, by the one rule in :mod:`transferkit.labels`."""
    from ..labels import label_names

    return label_names(proba, config.labels, multilabel=config.multilabel,
                       thresholds=config.thresholds, delimiter=config.label_delimiter)
