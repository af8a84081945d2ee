"""The artifact directory (DESIGN.md): safetensors + JSON, self-contained, never unpickled.

    config.json          what this is: version, labels, backbone (source, fingerprint,
                         preprocessing), strategy, head shape
    head.safetensors     the classification head
    backbone/            backbone weights (safetensors) + tokenizer / preprocessing files
    metrics.json, README.md (model card), run.yaml, report.*: written by the run
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from .._io import make_temp_dir, ordinary_permissions
from ..adapt.model import TransferModel
from ..backbones.registry import load_from_folder
from ..errors import ArtifactError, ConfigError, TransferkitError
from ..train.cache import cache_root
from .schema import (
    BACKBONE_DIR,
    FORMAT,
    FORMAT_VERSION,
    HEAD_FILE,
    ArtifactConfig,
    read_config,
    validate_config,
)

__all__ = ["ArtifactConfig", "load_model", "read_config", "save_model"]


def save_model(model: TransferModel, directory: Path, strategy: dict[str, Any]) -> Path:
    """Write weights and ``config.json`` into ``directory`` (which the caller made)."""
    head = model.head
    if not isinstance(head, nn.Linear):
        raise TypeError("only linear heads are saved by this version")
    # The schema that loading applies, applied before anything is written: a model that
    # could not be loaded back (two classes with one name) is never saved.
    config = validate_config({
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "transferkit_version": __version__, "modality": model.backbone.modality,
        "labels": model.classes, "backbone": model.backbone.describe(), "strategy": strategy,
        "head": {"in_features": head.in_features, "out_features": head.out_features},
        "multilabel": model.multilabel, "thresholds": model.thresholds,
        "label_delimiter": model.delimiter,
    }, "Cannot save the model", "A model that could not be loaded back is not saved: fix "
        "the training data or options and fit again.")
    # Write the backbone to a sibling temp folder first: a crash never leaves half a model.
    tmp = make_temp_dir(".backbone.", directory)
    try:
        model.backbone.save(tmp)
        if _keeps_pretrained_weights(strategy):
            share_weights(tmp)
        target = directory / BACKBONE_DIR
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(directory / HEAD_FILE), metadata={"format": FORMAT})
    (directory / "config.json").write_text(config.model_dump_json(indent=2), encoding="utf-8")
    ordinary_permissions(directory)
    return directory


def _keeps_pretrained_weights(strategy: dict[str, Any]) -> bool:
    from ..adapt import STRATEGIES

    return bool(getattr(STRATEGIES.get(strategy.get("name")), "frozen_backbone", False))


def share_weights(folder: Path, store: Path | None = None) -> int:
    """Hard-link the weight files of an unchanged pretrained backbone to one copy kept in
    the cache (``$TRANSFERKIT_CACHE/weights/<sha256>``): ten probe runs on MiniLM hold its
    87 MB once, not ten times, and each run folder stays whole on its own (a hard link is
    the file; deleting the cache or another run leaves it in place). Where the cache is on
    another file system the run keeps its own copy. Returns the bytes shared."""
    import hashlib
    import os

    store = store or cache_root() / "weights"
    shared = 0
    for path in sorted(folder.rglob("*.safetensors")):
        if path.stat().st_size < 1 << 20:
            continue
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        kept = store / f"{digest.hexdigest()}.safetensors"
        try:
            store.mkdir(parents=True, exist_ok=True)
            if not kept.is_file():
                os.link(path, kept)  # the first run's copy becomes the shared one
            else:
                linked = path.with_name(f".{path.name}.link")
                os.link(kept, linked)
                os.replace(linked, path)
            shared += path.stat().st_size
        except OSError:  # another file system, or links not allowed: keep the copy
            continue
    return shared


def load_model(directory: str | Path, *, trust_remote_code: bool = False
               ) -> tuple[TransferModel, ArtifactConfig]:
    """Rebuild the model: config validated first, then safetensors only; a backbone that
    ships its own code is refused unless ``trust_remote_code``."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        backbone = load_from_folder(directory / BACKBONE_DIR, config.backbone.source,
                                    f"artifact {directory}",
                                    {"trust_remote_code": trust_remote_code}, None)
    except (ArtifactError, ConfigError):
        raise  # they name the file and what is wrong with it (a path outside, shipped code)
    except TransferkitError as e:  # says what is wrong and what to do
        raise ArtifactError(f"{directory}/{BACKBONE_DIR}: cannot load the backbone. {e}") from e
    except Exception as e:  # noqa: BLE001 - the libraries that parse an edited backbone/ raise
        # anything (TypeError from a config field, AttributeError, ...): all mean "damaged"
        raise ArtifactError(f"{directory}/{BACKBONE_DIR}: cannot load the backbone "
                            f"({type(e).__name__}: {e}). Re-run the fit.") from e
    if backbone.fingerprint != config.backbone.fingerprint:
        raise ArtifactError(
            f"{directory}: the backbone weights do not match config.json (fingerprint "
            f"{backbone.fingerprint} != {config.backbone.fingerprint}); the folder was changed "
            "or damaged. Re-run the fit."
        )
    head = nn.Linear(*_head_shape(directory, config, backbone.feature_dim))
    try:
        head.load_state_dict(load_file(str(directory / HEAD_FILE)), strict=True)
    except (OSError, SafetensorError, RuntimeError) as e:
        raise ArtifactError(f"{directory}/{HEAD_FILE} is missing or corrupt, or does not fit "
                            f"config.json ({e}).") from e
    model = TransferModel(backbone, config.labels, head, multilabel=config.multilabel,
                          thresholds=config.thresholds, delimiter=config.label_delimiter)
    return model.eval(), config


def _head_shape(directory: Path, config: ArtifactConfig, feature_dim: int) -> tuple[int, int]:
    """(in, out) of the head, once config.json, the loaded backbone and the tensor shapes
    in head.safetensors (read from its header, no weights) all agree: an edited size can
    then never ask for a huge allocation."""
    path = directory / HEAD_FILE
    if config.head.in_features != feature_dim:
        raise ArtifactError(
            f"{directory}/config.json: head.in_features is {config.head.in_features} but the "
            f"backbone gives {feature_dim} features; the file was edited or damaged. Re-run "
            "the fit.")
    shape = {"weight": [config.head.out_features, feature_dim],
             "bias": [config.head.out_features]}
    try:
        with safe_open(str(path), "pt") as f:
            found = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as e:
        raise ArtifactError(f"{path} is missing or corrupt ({e}).") from e
    if found != shape:
        raise ArtifactError(
            f"{path} holds tensors {found} but config.json describes a linear head of "
            f"{shape}; the folder was edited or damaged. Re-run the fit.")
    return feature_dim, config.head.out_features
