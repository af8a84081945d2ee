"""The feature cache: a second run on the same data runs no backbone forward pass."""

from __future__ import annotations

import numpy as np

from transferkit.backbones import load_backbone
from transferkit.train.cache import FeatureCache, extract_features


def _count_forwards(backbone) -> list[int]:
    calls = [0]
    backbone.model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_second_extraction_is_served_from_cache(tmp_path, tiny_bert_dir):
    backbone = load_backbone(str(tiny_bert_dir))
    calls = _count_forwards(backbone)
    cache = FeatureCache(tmp_path)
    texts = [f"example number {i} " * (i % 5 + 1) for i in range(40)]
    first, s1 = extract_features(backbone, texts, batch_size=8, cache=cache, precision="fp32")
    assert calls[0] == 5 and not s1.from_cache
    second, s2 = extract_features(backbone, texts, batch_size=8, cache=cache, precision="fp32")
    assert calls[0] == 5, "cached run must not call the backbone"
    assert s2.from_cache
    np.testing.assert_array_equal(first, second)
    # other data, other precision, other preprocessing: all misses
    extract_features(backbone, texts[:-1] + ["changed"], batch_size=8, cache=cache,
                     precision="fp32")
    assert calls[0] == 10
    extract_features(backbone, texts, batch_size=8, cache=cache, precision="bf16")
    assert calls[0] == 15
    other = load_backbone(str(tiny_bert_dir), pooling="cls")
    assert FeatureCache.key(other, "d", "fp32") != FeatureCache.key(backbone, "d", "fp32")


def test_features_keep_input_order_despite_length_sorting(tiny_bert_dir):
    backbone = load_backbone(str(tiny_bert_dir))
    texts = ["one", "two three four five six seven", "eight nine"]
    together, _ = extract_features(backbone, texts, batch_size=3, precision="fp32")
    for i, t in enumerate(texts):
        alone, _ = extract_features(backbone, [t], batch_size=1, precision="fp32")
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5)


def test_damaged_cache_entry_is_a_miss(tmp_path, tiny_bert_dir):
    backbone = load_backbone(str(tiny_bert_dir))
    cache = FeatureCache(tmp_path)
    texts = ["a", "b c"]
    feats, _ = extract_features(backbone, texts, cache=cache, precision="fp32")
    for f in (tmp_path / "features").rglob("*.npy"):
        f.write_bytes(b"garbage")
    again, stats = extract_features(backbone, texts, cache=cache, precision="fp32")
    assert not stats.from_cache
    np.testing.assert_allclose(again, feats, atol=1e-6)


def test_fp16_is_accepted_but_needs_a_gpu(tiny_bert_dir):
    import pytest
    import torch

    from transferkit.errors import ConfigError
    from transferkit.train.device import resolve_precision

    assert resolve_precision("fp16", torch.device("cuda")) == "fp16"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    backbone = load_backbone(str(tiny_bert_dir))
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        extract_features(backbone, ["a"], precision="fp16", device=torch.device("cpu"))
