"""Vision backbones: any timm model (names, ``hf-hub:`` ids, local folders), globally pooled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.examples import IMAGE
from ..data.images import to_pil  # noqa: F401  (re-exported: torch-free, shared with ONNX)
from ..errors import ArtifactError, BackboneNotFoundError
from .base import ADAPTER_DIR, Backbone, attach_adapter, split_adapter
from .text import BACKBONE_FILE

WEIGHTS_FILE = "model.safetensors"


class VisionBackbone(Backbone):
    modality = IMAGE

    def __init__(
        self, model: nn.Module, architecture: str, data_config: dict[str, Any], *,
        source: str, resolved: str,
    ) -> None:
        import timm.data

        super().__init__(source, resolved)
        # The pretrained classifier (ImageNet's, for most timm weights) is kept aside for
        # source_logits (LEEP, NCE) before it is dropped: features, not logits, come out.
        head = _detached_classifier(model)
        model.reset_classifier(0)
        self.model = model.eval()
        # A plain attribute, not a submodule: it stays out of state_dict (hence the
        # fingerprint and save()), parameters() (training, parameter_count) and .to().
        object.__setattr__(self, "_source_head", head)
        self.architecture = architecture
        self.data_config = {
            "input_size": tuple(int(v) for v in data_config["input_size"]),
            "interpolation": str(data_config.get("interpolation", "bicubic")),
            "mean": tuple(float(v) for v in data_config["mean"]),
            "std": tuple(float(v) for v in data_config["std"]),
            "crop_pct": float(data_config.get("crop_pct", 0.875)),
            "crop_mode": str(data_config.get("crop_mode", "center")),
        }
        self.transform = timm.data.create_transform(**self.data_config, is_training=False)
        # timm's own training pipeline (random resized crop, flip, colour jitter) for the
        # model's resolution and normalisation; used only when fine-tuning asks to augment.
        # Crops keep at least half the image: timm's default (8%) suits training from
        # scratch on ImageNet, not fine-tuning on a few small images.
        self.train_transform = timm.data.create_transform(
            input_size=self.data_config["input_size"], is_training=True, scale=(0.5, 1.0),
            mean=self.data_config["mean"], std=self.data_config["std"],
            interpolation=self.data_config["interpolation"])
        # what model(x) returns once the classifier is reset: for most families num_features;
        # for those with a layer after pooling (MobileNetV3, ...) that layer's width
        self.feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        if head is not None and not _head_fits(head, self.feature_dim):
            object.__setattr__(self, "_source_head", None)

    def preprocess(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([self.transform(to_pil(x)) for x in examples])}

    def collate(self, prepared: list[Any], augment: bool = False) -> dict[str, torch.Tensor]:
        transform = self.train_transform if augment else self.transform
        return {"pixel_values": torch.stack([transform(to_pil(x)) for x in prepared])}

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs["pixel_values"]).float()

    def source_logits(self, features: torch.Tensor) -> torch.Tensor | None:
        """The pretrained classifier applied to pooled ``features`` (for timm models exactly
        the full model's logits), or None when the model came without one (a folder saved
        after fine-tuning, random weights). Its weights are frozen and never trained."""
        head = self.__dict__.get("_source_head")
        if head is None:
            return None
        weight = next(head.parameters(), None)
        if weight is not None and (weight.device, weight.dtype) != (features.device,
                                                                    features.dtype):
            head.to(device=features.device, dtype=features.dtype)
        return head(features).flatten(1)

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "timm", "architecture": self.architecture,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()}}

    def layer_groups(self) -> list[nn.Module]:
        """timm's own coarse grouping (stem, stages/blocks, head): it knows every family."""
        from timm.models import group_modules

        try:
            grouped = group_modules(self.model, self.model.group_matcher(coarse=True))
        except (AttributeError, NotImplementedError):
            return [nn.ModuleList(list(self.model.children()))]
        groups: list[nn.Module] = []
        for _, names in sorted(grouped.items()):
            modules = [self.model.get_submodule(n) for n in names if n]
            if modules:
                groups.append(nn.ModuleList(modules))
        return groups

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        base, adapter = split_adapter(self.model)
        state = {k: v.contiguous() for k, v in base.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        if adapter is not None:
            adapter.save_pretrained(str(directory / ADAPTER_DIR), safe_serialization=True)
        (directory / BACKBONE_FILE).write_text(json.dumps(self.preprocessing(), indent=2))


def _detached_classifier(model: nn.Module) -> nn.Module | None:
    """A frozen copy of the model's classifier, or None when it has none."""
    import copy

    if not getattr(model, "num_classes", 0):
        return None
    try:
        head = model.get_classifier()
    except (AttributeError, NotImplementedError):
        return None
    if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
        return None
    head = copy.deepcopy(head).eval()
    head.requires_grad_(False)
    return head


def _head_fits(head: nn.Module, feature_dim: int) -> bool:
    """The classifier takes the pooled features as they come (families whose classifier sees
    something else -- features before a pooling-side layer -- get no source logits)."""
    try:
        weight = next(head.parameters())
        with torch.no_grad():
            out = head(torch.zeros(1, feature_dim, device=weight.device, dtype=weight.dtype))
    except (RuntimeError, StopIteration, TypeError, ValueError):
        return False
    return out.flatten(1).shape[1] > 0


def data_config_for(model: nn.Module, image_size: int | None = None,
                    overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    import timm.data

    cfg = dict(timm.data.resolve_data_config({}, model=model))
    cfg.update(overrides or {})
    if image_size:
        cfg["input_size"] = (3, image_size, image_size)
    return cfg


def create_timm_backbone(
    name: str, *, source: str, resolved: str, pretrained: bool = True,
    image_size: int | None = None,
) -> VisionBackbone:
    import timm

    # pretrained: keep the checkpoint's own classifier (VisionBackbone keeps it aside for
    # source_logits, then resets it); random weights have no meaningful one
    head = {} if pretrained else {"num_classes": 0}
    try:
        model = timm.create_model(name, pretrained=pretrained, **head)
    except (RuntimeError, OSError, ValueError) as e:
        raise BackboneNotFoundError(f"timm could not create '{name}': {e}") from e
    # timm records the architecture it built (names may be tags, hub ids or folders)
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or \
        name.split("/")[-1].split(".")[0]
    return VisionBackbone(model, arch, data_config_for(model, image_size),
                          source=source, resolved=resolved)


def load_vision_dir(directory: Path, *, source: str, resolved: str,
                    image_size: int | None = None) -> VisionBackbone:
    """A folder written by :meth:`VisionBackbone.save` (safetensors + JSON, no pickles)."""
    import timm
    from safetensors.torch import load_file

    file = directory / BACKBONE_FILE
    cfg = json.loads(file.read_text())
    arch = cfg.get("architecture")
    if not (isinstance(arch, str) and timm.is_model(arch)):  # not "local-dir:/elsewhere"
        raise ArtifactError(
            f"{file}: architecture is {arch!r}, which is not a timm model name; a saved "
            "backbone names its architecture, and loads its weights from its own folder only. "
            "The folder was edited or damaged: re-run the fit.")
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    overrides = {k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct",
                                     "crop_mode") if k in cfg}
    backbone = VisionBackbone(model, arch,
                              data_config_for(model, image_size, overrides),
                              source=source, resolved=resolved)
    backbone.model = attach_adapter(backbone.model, directory)
    return backbone
