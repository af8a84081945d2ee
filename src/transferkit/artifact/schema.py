"""The artifact's ``config.json`` schema and the checks a run folder passes before anything in
it is loaded, importable without torch.

It lives apart from :mod:`.artifact` (which needs torch to rebuild the model) so the ONNX
engine and the HTTP server can validate a run folder in a process that never imports torch.
A run folder is untrusted input (it is copied between machines and people): every number
that sizes an allocation is checked against the others before anything is allocated, JSON is
read with a size bound, nothing is unpickled, and nothing outside the folder is read.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from ..errors import ArtifactError

FORMAT = "transferkit-artifact"
FORMAT_VERSION = 1
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"
# = transferkit.backbones.text.BACKBONE_FILE (that module needs torch)
BACKBONE_SETTINGS_FILE = "transferkit_backbone.json"
# Big enough for the largest tokenizer.json (a 256k vocabulary is ~35 MB), small enough that a
# bloated file is refused before it is parsed.
MAX_JSON_BYTES = 64 * 2**20
# Longer than any position table transferkit caps a text model to; a larger number in a run
# folder is an edit, and would size attention matrices of (length x length).
MAX_TEXT_TOKENS = 2**15
MAX_IMAGE_SIDE = 4096
# Weight formats that are pickles: unpickling runs code, so a run folder may not hold them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
_REFIT = "The run folder was edited or damaged: re-run the fit."


class BackboneInfo(BaseModel):
    source: str
    resolved: str
    modality: str
    feature_dim: int = Field(ge=1)
    fingerprint: str
    preprocessing: dict[str, Any]


class HeadInfo(BaseModel):
    type: Literal["linear"] = "linear"
    in_features: int = Field(ge=1)
    out_features: int = Field(ge=1)


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

    @model_validator(mode="after")
    def _consistent(self) -> ArtifactConfig:
        """The sizes must agree with each other, so none of them can ask for a huge head."""
        repeated = sorted(x for x, n in Counter(self.labels).items() if n > 1)
        if repeated:
            raise ValueError(
                f"labels name {', '.join(repr(x) for x in repeated)} more than once; each "
                "class needs its own name, or two probability columns would share one")
        if len(self.labels) != self.head.out_features:
            raise ValueError(f"{len(self.labels)} labels but the head has "
                             f"{self.head.out_features} outputs")
        if self.head.in_features != self.backbone.feature_dim:
            raise ValueError(f"head.in_features is {self.head.in_features} but the backbone "
                             f"gives {self.backbone.feature_dim} features")
        if self.thresholds is not None and len(self.thresholds) != len(self.labels):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(self.labels)} labels")
        if not isinstance(self.strategy.get("name"), str) or not all(
                isinstance(self.strategy.get(k, {}), dict) for k in ("options", "fit_info")):
            raise ValueError("strategy needs a name (text), and options and fit_info objects")
        if self.modality != self.backbone.modality:
            raise ValueError(f"modality '{self.modality}' but the backbone reads "
                             f"'{self.backbone.modality}'")
        problem = preprocessing_problem(self.backbone.preprocessing)
        if problem:
            raise ValueError(f"backbone.preprocessing: {problem}")
        return self


def preprocessing_problem(pre: Any) -> str | None:
    """What is out of bounds in a backbone's preprocessing settings (``None``: nothing)."""
    if not isinstance(pre, dict):
        return "not an object"
    length = pre.get("max_length")
    if length is not None and not int_in(length, 1, MAX_TEXT_TOKENS):
        return f"max_length {length!r} is not a whole number from 1 to {MAX_TEXT_TOKENS}"
    size = pre.get("input_size")
    if size is None:
        return None
    if not (isinstance(size, list) and len(size) == 3 and
            all(int_in(v, 1, MAX_IMAGE_SIDE) for v in size)):
        return (f"input_size {size!r} is not [channels, height, width] with each from 1 to "
                f"{MAX_IMAGE_SIDE}")
    for key in ("mean", "std"):
        values = pre.get(key)
        if not (isinstance(values, list) and len(values) == size[0] and
                all(isinstance(v, int | float) for v in values)):
            return f"{key} {values!r} is not {size[0]} numbers, one per channel"
    crop = pre.get("crop_pct", 0.875)  # images are resized to input_size / crop_pct first
    if not (isinstance(crop, int | float) and crop > 0 and
            1 <= max(size[1:]) / crop <= MAX_IMAGE_SIDE):
        return f"crop_pct {crop!r} would resize images past {MAX_IMAGE_SIDE} pixels"
    return None


def int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def validate_config(data: Any, source: str, fix: str = _REFIT) -> ArtifactConfig:
    """``data`` as an :class:`ArtifactConfig`, or an :class:`ArtifactError` naming ``source``
    and the first problem. Saving and loading both come here, so neither can accept what
    the other refuses."""
    try:
        return ArtifactConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "value_error":  # ours: the message names the fields itself
            raise ArtifactError(f"{source}: {first['ctx']['error']}. {fix}") from e
        if isinstance(data, dict) and data.get("format") == FORMAT:
            raise ArtifactError(f"{source}: {where}: {first['msg']}. {fix}") from e
        raise ArtifactError(
            f"{source} is not a transferkit artifact config ({e.error_count()} problems, first: "
            f"{where}: {first['msg']}). Is this folder from another tool?"
        ) from e


def read_json(path: Path, fix: str = _REFIT) -> Any:
    """A JSON file of a run folder, bounded in size and nesting: a bloated or pathologically
    nested file is an :class:`ArtifactError`, never a MemoryError or RecursionError."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ArtifactError(f"{path} is {size:,} bytes, more than the {MAX_JSON_BYTES:,} "
                                f"a run folder's JSON file may have. {fix}")
        return json.loads(path.read_bytes())
    except RecursionError as e:
        raise ArtifactError(f"{path} is nested too deeply to be a transferkit file. {fix}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is corrupt (not valid JSON: {e}). {fix}") from e
    except OSError as e:
        raise ArtifactError(f"{path} cannot be read ({e}). {fix}") from e


def check_run_folder(directory: Path) -> None:
    """Refuse a run folder that would make loading read outside it or unpickle.

    Every symlink must resolve inside the folder, no file may be a pickle, and every JSON
    file the backbone loaders read is parsed here first (bounded, so no library meets a
    bloated or deeply nested one later). The paths that backbone files name (a
    sentence-transformers ``modules.json``, a timm architecture) are checked where they are
    read, in :mod:`transferkit.backbones`."""
    root = directory.resolve()
    backbone = root / BACKBONE_DIR
    for here, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(here) / name
            if path.is_symlink():
                _check_link(path, root)
            if name not in files:
                continue
            if path.suffix.lower() in PICKLE_SUFFIXES:
                raise ArtifactError(
                    f"{path} is a pickle file ({path.suffix}); transferkit never unpickles (it "
                    "can run code), and a run folder holds weights as *.safetensors only. "
                    "Delete the file if it is not needed, otherwise re-run the fit.")
            if path.suffix == ".json" and path.is_relative_to(backbone):
                data = read_json(path)
                problem = (preprocessing_problem(data) if name == BACKBONE_SETTINGS_FILE
                           else None)
                if problem:
                    raise ArtifactError(f"{path}: {problem}. {_REFIT}")


def _check_link(path: Path, root: Path) -> None:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError) as e:  # dangling, or a loop
        raise ArtifactError(f"{path} is a broken symlink ({e}). {_REFIT}") from e
    if not target.is_relative_to(root):
        raise ArtifactError(
            f"{path} is a symlink to {target}, outside the run folder {root}; a loaded run "
            "reads only its own files. Replace the link with a copy of the file, or re-run "
            "the fit.")


def read_config(directory: str | Path) -> ArtifactConfig:
    """The validated ``config.json`` of a run folder, or an :class:`ArtifactError` that says
    whether the folder is missing, damaged or from another tool. The folder as a whole is
    checked too (:func:`check_run_folder`): every loader starts here."""
    directory = Path(directory)
    path = directory / "config.json"
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such run folder. Pass the --out folder of a fit.")
    if not path.is_file():
        raise ArtifactError(
            f"{directory} is not a transferkit model: config.json is missing. Pass the --out "
            "folder written by `transferkit fit`."
        )
    config = validate_config(read_json(path), str(path))
    if config.format != FORMAT:
        raise ArtifactError(f"{path}: format '{config.format}' is not '{FORMAT}'.")
    if config.format_version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} was written by a newer transferkit ({config.transferkit_version}); "
            "upgrade transferkit to load it."
        )
    check_run_folder(directory)
    return config


def labels_from_proba(config: ArtifactConfig, proba: Any) -> list[str]:
    """Label names from probabilities, by the one rule in :mod:`transferkit.labels`."""
    from ..labels import label_names

    return label_names(proba, config.labels, multilabel=config.multilabel,
                       thresholds=config.thresholds, delimiter=config.label_delimiter)
