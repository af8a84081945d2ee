"""Feature extraction through ONNX Runtime: the same features as PyTorch, one cached export,
damaged exports healed, and PyTorch wherever ORT cannot (or should not) run the backbone."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from transferkit.backbones import load_backbone
from transferkit.backbones.base import Backbone
from transferkit.errors import ConfigError
from transferkit.train import onnx_features
from transferkit.train.cache import FeatureCache, extract_features

# very different lengths in one batch: one word next to ~100 and ~300 tokens (truncated)
TEXTS = ["ok", "a short one", "transfer " * 100, "a medium sentence about movies and actors",
         "x", "features " * 300, "the plot was thin but the acting made up for it " * 3,
         "fine", "why", "a somewhat longer text that needs a few more tokens than most"]


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A private cache root and a fresh per-process table of sessions."""
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(onnx_features, "_BOUND", weakref.WeakKeyDictionary())
    monkeypatch.setattr(onnx_features, "_LOGGED", set())
    return tmp_path


def _export_file(root, backbone):
    return root / "onnx" / f"{backbone.fingerprint}.onnx"


def _new_process():
    """What a fresh process knows: nothing in memory, only the files."""
    onnx_features._BOUND.clear()
    onnx_features._LOGGED.clear()


def _both(backbone, texts, batch_size=4):
    ours, s_onnx = extract_features(backbone, texts, batch_size=batch_size, precision="fp32",
                                    engine="onnx")
    ref, s_torch = extract_features(backbone, texts, batch_size=batch_size, precision="fp32",
                                    engine="torch")
    return ours, s_onnx, ref, s_torch


def test_tiny_bert_onnx_features_equal_torch_with_padding(root, tiny_bert_dir):
    backbone = load_backbone(str(tiny_bert_dir))
    ours, s_onnx, ref, s_torch = _both(backbone, TEXTS)
    assert (s_onnx.engine, s_torch.engine) == ("onnx", "torch")
    assert ours.shape == ref.shape == (len(TEXTS), backbone.feature_dim)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # one text alone (batch 1, no padding) equals its row of the padded batch
    alone, _ = extract_features(backbone, [TEXTS[2]], precision="fp32", engine="onnx")
    np.testing.assert_allclose(alone[0], ours[2], atol=1e-4, rtol=0)
    assert _export_file(root, backbone).is_file()


def test_minilm_onnx_features_equal_torch(root, minilm):
    ours, s_onnx, ref, s_torch = _both(minilm, TEXTS, batch_size=5)
    assert (s_onnx.engine, s_torch.engine) == ("onnx", "torch")
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # auto keeps text encoders on PyTorch (ORT was not faster for them), export or not
    auto, stats = extract_features(minilm, TEXTS[:3], precision="fp32", device=torch.device("cpu"))
    assert stats.engine == "torch"
    np.testing.assert_allclose(auto, ref[:3], atol=1e-5, rtol=0)


def test_export_is_made_once_and_reused(root, tiny_bert_dir):
    backbone = load_backbone(str(tiny_bert_dir))
    before = onnx_features.EXPORTS["count"]
    first, _ = extract_features(backbone, TEXTS, precision="fp32", engine="onnx")
    path = _export_file(root, backbone)
    mtime = path.stat().st_mtime_ns
    assert onnx_features.EXPORTS["count"] == before + 1
    extract_features(backbone, TEXTS, precision="fp32", engine="onnx")  # same process
    _new_process()
    again = load_backbone(str(tiny_bert_dir))  # another object, same fingerprint
    second, stats = extract_features(again, TEXTS, precision="fp32", engine="onnx")
    assert stats.engine == "onnx"
    assert onnx_features.EXPORTS["count"] == before + 1, "a cached export must not be redone"
    assert path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(first, second)
    # only the whole file is there: no temporary files left beside it
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other model"])
def test_damaged_export_is_made_again(root, tiny_bert_dir, damage):
    backbone = load_backbone(str(tiny_bert_dir))
    ref, _ = extract_features(backbone, TEXTS, precision="fp32", engine="torch")
    extract_features(backbone, TEXTS, precision="fp32", engine="onnx")
    path = _export_file(root, backbone)
    if damage == "garbage":
        path.write_bytes(b"not an onnx model")
    elif damage == "truncated":  # what a killed writer without temp + rename would leave
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # a valid ONNX file of other weights (cls pooling) under this fingerprint
        other = load_backbone(str(tiny_bert_dir), pooling="cls")
        extract_features(other, TEXTS, precision="fp32", engine="onnx")
        path.write_bytes(_export_file(root, other).read_bytes())
    _new_process()
    before = onnx_features.EXPORTS["count"]
    feats, stats = extract_features(backbone, TEXTS, precision="fp32", engine="onnx")
    assert stats.engine == "onnx"
    assert onnx_features.EXPORTS["count"] == before + 1
    np.testing.assert_allclose(feats, ref, atol=1e-4, rtol=0)


def test_failed_export_falls_back_to_torch_and_is_not_retried(root, tiny_bert_dir,
                                                               monkeypatch, caplog):
    backbone = load_backbone(str(tiny_bert_dir))
    calls = []

    def broken(graph, sample, path, **kw):
        calls.append(path)
        path.write_bytes(b"half a model")  # then the process "dies" mid-export
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(onnx_features, "export_graph", broken)
    ref, _ = extract_features(backbone, TEXTS, precision="fp32", engine="torch")
    with caplog.at_level("WARNING"):
        feats, stats = extract_features(backbone, TEXTS, precision="fp32", engine="onnx")
    assert stats.engine == "torch"
    np.testing.assert_array_equal(feats, ref)
    assert "exporter crashed" in caplog.text
    path = _export_file(root, backbone)
    assert not path.exists(), "a failed export never leaves a file that would be loaded"
    assert not list(path.parent.glob("*.tmp"))
    _new_process()
    extract_features(backbone, TEXTS, precision="fp32", engine="onnx")
    assert len(calls) == 1, "a recorded failure is not retried on every run"


class _NumpyBackbone(Backbone):
    """A frozen-only backbone whose work is not a torch graph."""

    modality = "text"
    feature_dim = 3
    frozen_only = True

    def __init__(self) -> None:
        super().__init__("numpy-test", "test")

    def preprocess(self, examples):
        return {"x": torch.tensor([[float(len(str(e)))] for e in examples])}

    def forward(self, **inputs):
        return inputs["x"].repeat(1, 3)

    def preprocessing(self):
        return {"kind": "numpy-test"}


def test_not_exportable_backbones_fall_back_to_torch(root, tiny_bert_dir):
    feats, stats = extract_features(_NumpyBackbone(), ["a", "bcd"], precision="fp32",
                                    engine="onnx")
    assert stats.engine == "torch"
    np.testing.assert_array_equal(feats[:, 0], [1.0, 3.0])

    from peft import LoraConfig, get_peft_model

    lora = load_backbone(str(tiny_bert_dir))
    lora.model = get_peft_model(lora.model, LoraConfig(r=2, target_modules=["query", "value"]))
    _, stats = extract_features(lora, TEXTS, precision="fp32", engine="onnx")
    assert stats.engine == "torch"
    assert not (root / "onnx").exists()
    with pytest.raises(ConfigError, match="Unknown engine"):
        extract_features(lora, TEXTS, engine="tensorrt")


def test_bf16_keeps_torch(root, tiny_bert_dir):
    backbone = load_backbone(str(tiny_bert_dir))
    extract_features(backbone, TEXTS, precision="fp32", engine="onnx")  # the export exists
    # bf16 (what "auto" precision is on CPUs with fast bf16) stays on torch, even if asked
    for engine in ("auto", "onnx"):
        _, stats = extract_features(backbone, TEXTS, precision="bf16", engine=engine)
        assert (stats.engine, stats.precision) == ("torch", "bf16")


def test_cache_key_does_not_depend_on_the_engine(root, tiny_bert_dir):
    backbone = load_backbone(str(tiny_bert_dir))
    cache = FeatureCache(root / "features-test")
    feats, stats = extract_features(backbone, TEXTS, precision="fp32", cache=cache,
                                    engine="onnx")
    assert stats.engine == "onnx" and not stats.from_cache
    hit, stats = extract_features(backbone, TEXTS, precision="fp32", cache=cache,
                                  engine="torch")
    assert stats.from_cache and stats.engine == ""
    np.testing.assert_array_equal(hit, feats)
    assert len(list(cache.root.rglob("*.npy"))) == 1


def test_weights_changed_in_place_run_on_torch_until_refingerprinted(root, tiny_bert_dir):
    """A training loop's evaluation: weights moved, fingerprint not yet refreshed."""
    backbone = load_backbone(str(tiny_bert_dir))
    extract_features(backbone, TEXTS, precision="fp32", engine="onnx")
    old = _export_file(root, backbone)
    torch.manual_seed(1)
    with torch.no_grad():  # one optimizer step's worth of change, in place
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref, _ = extract_features(backbone, TEXTS, precision="fp32", engine="torch")
    feats, stats = extract_features(backbone, TEXTS, precision="fp32", engine="onnx")
    assert stats.engine == "torch", "the export of the old weights must not be used"
    np.testing.assert_array_equal(feats, ref)
    # a fresh process that trusts the stale fingerprint: the file is checked, not believed
    _new_process()
    feats, stats = extract_features(backbone, TEXTS, precision="fp32", engine="onnx")
    assert stats.engine == "torch"
    np.testing.assert_array_equal(feats, ref)
    assert old.is_file(), "the old weights' export is still right for them"
    backbone.invalidate_fingerprint()  # what training code does when it finishes
    feats, stats = extract_features(backbone, TEXTS, precision="fp32", engine="onnx")
    assert stats.engine == "onnx"
    np.testing.assert_allclose(feats, ref, atol=1e-4, rtol=0)


def _images(n):
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(40, 90), (64, 64), (200, 120)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8))
            for i in range(n)]


def _timm(name, **kw):
    from transferkit.backbones.vision import create_timm_backbone

    torch.manual_seed(0)
    return create_timm_backbone(name, source=name, resolved="test", pretrained=False, **kw)


def test_image_backbones_convolutional_on_onnx_attention_on_torch(root):
    cnn, vit = _timm("test_efficientnet", image_size=64), _timm("test_vit")
    assert onnx_features.prefers_onnx(cnn) and not onnx_features.prefers_onnx(vit)
    ours, s_onnx, ref, _ = _both(cnn, _images(5), batch_size=2)
    assert s_onnx.engine == "onnx"
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    _, stats = extract_features(vit, _images(2), precision="fp32")
    assert stats.engine == "torch"


def test_auto_exports_for_large_extractions_of_weights_not_trained_here(root, monkeypatch):
    cnn, images = _timm("test_efficientnet", image_size=64), _images(6)
    path = _export_file(root, cnn)
    # auto spends no export on a few images ...
    _, stats = extract_features(cnn, images, precision="fp32")
    assert stats.engine == "torch" and not path.exists()
    # ... but does on a larger extraction, and uses the export for small ones afterwards
    monkeypatch.setattr(onnx_features, "AUTO_EXPORT_MIN", len(images))
    ref, stats = extract_features(cnn, images, precision="fp32")
    assert stats.engine == "onnx" and path.is_file()
    _, stats = extract_features(cnn, images[:1], precision="fp32")
    assert stats.engine == "onnx"
    for engine in ("auto", "onnx"):  # bf16 keeps torch
        _, stats = extract_features(cnn, images, precision="bf16", engine=engine)
        assert stats.engine == "torch"
    # weights trained here (moved in place, then re-fingerprinted): auto makes no export ...
    with torch.no_grad():
        for p in cnn.parameters():
            p.mul_(1.05)
    _, stats = extract_features(cnn, images, precision="fp32")
    assert stats.engine == "torch"
    cnn.invalidate_fingerprint()
    tuned, stats = extract_features(cnn, images, precision="fp32")
    assert stats.engine == "torch" and not _export_file(root, cnn).exists()
    # ... but does when asked
    feats, stats = extract_features(cnn, images, precision="fp32", engine="onnx")
    assert stats.engine == "onnx"
    np.testing.assert_allclose(feats, tuned, atol=1e-4, rtol=0)
    assert np.abs(tuned - ref).max() > 1e-3


def test_logmel_audio_backbones_take_onnx_like_their_image_model(root, monkeypatch, data_dir):
    """``logmel-NAME`` is an image model on spectrograms: ``auto`` runs a convolutional one on
    ORT (measured 3.4-4.4x faster), with PyTorch's features, and keeps an attention one on
    PyTorch; resemblyzer's LSTM (1.01x) stays on PyTorch."""
    from transferkit.backbones.audio_logmel import create_logmel

    torch.manual_seed(0)
    cnn = create_logmel("test_efficientnet", image_size=32, clip_seconds=0.5)
    vit = create_logmel("test_vit", image_size=32, clip_seconds=0.5)
    assert onnx_features.prefers_onnx(cnn) and not onnx_features.prefers_onnx(vit)
    assert not onnx_features.prefers_onnx(load_backbone("resemblyzer"))
    clips = sorted((data_dir / "keywords_espeak" / "train").glob("*/*.flac"))[::97][:6]
    monkeypatch.setattr(onnx_features, "AUTO_EXPORT_MIN", len(clips))
    ours, stats = extract_features(cnn, clips, batch_size=4, precision="fp32")
    ref, torch_stats = extract_features(cnn, clips, batch_size=4, precision="fp32",
                                        engine="torch")
    assert (stats.engine, torch_stats.engine) == ("onnx", "torch")
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_export_deleted_while_in_use_is_made_again_or_left_to_torch(root, tiny_bert_dir):
    """A session for another thread count reopens the file checked at first; deleted since (a
    cleared cache), it is exported again (``onnx``) or PyTorch runs (``auto``, a few inputs):
    never an error."""
    backbone = load_backbone(str(tiny_bert_dir))
    assert onnx_features.feature_session(backbone, root, auto=False, n=4, threads=1)
    path = _export_file(root, backbone)
    path.unlink()
    assert onnx_features.feature_session(backbone, root, auto=True, n=4, threads=2) is None
    _, stats = extract_features(backbone, TEXTS, precision="fp32")
    assert stats.engine == "torch"
    ours, stats = extract_features(backbone, TEXTS, precision="fp32", engine="onnx")
    assert stats.engine == "onnx" and path.is_file()
    ref, _ = extract_features(backbone, TEXTS, precision="fp32", engine="torch")
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
