"""The feature cache: a second run on the same data runs no backbone forward pass."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from transferkit.backbones import load_backbone
from transferkit.train.cache import FeatureCache, extract_features, run_batches


def _count_forwards(backbone) -> list[int]:
    """Forward passes so far; batches may run in several threads at once."""
    calls, lock = [0], threading.Lock()

    def count(*_: object) -> None:
        with lock:
            calls[0] += 1

    backbone.model.register_forward_pre_hook(count)
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


def _texts(n: int) -> list[str]:
    return [f"text {i} " + "word " * (i * 7 % 23) for i in range(n)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batches_side_by_side_equal_one_at_a_time(tiny_bert_dir, precision):
    """Worker threads (one core each) give the features of the one-at-a-time loop, in input
    order, report progress in batch order from the caller's thread, and leave PyTorch's
    thread count as it was."""
    backbone = load_backbone(str(tiny_bert_dir))
    texts = _texts(37)
    prepared = backbone.prepare(texts)
    threads = torch.get_num_threads()
    results, callers = {}, set()
    for workers in (1, 3):
        out = np.zeros((len(texts), backbone.feature_dim), np.float32)
        done: list[int] = []

        def keep(idx, features, out=out):
            callers.add(threading.get_ident())
            out[idx] = features.float().numpy()

        n = run_batches(backbone, prepared, keep, batch_size=4, device=torch.device("cpu"),
                        precision=precision, workers=workers,
                        progress=lambda d, _total, done=done: done.append(d))
        assert n == 10 and done == sorted(done) and done[-1] == len(texts)
        results[workers] = out
        assert torch.get_num_threads() == threads
    assert callers == {threading.get_ident()}
    np.testing.assert_allclose(results[3], results[1], atol=1e-5 if precision == "fp32" else 2e-2)
    assert backbone.training  # restored (load_backbone returns it in train mode)


def test_a_failing_batch_stops_the_workers_and_raises(tiny_bert_dir):
    backbone = load_backbone(str(tiny_bert_dir))
    threads, ran = torch.get_num_threads(), _count_forwards(backbone)

    def forward(batch):
        if batch["input_ids"].shape[1] > 20:  # the longest batches run first
            raise RuntimeError("broken batch")
        return backbone(**batch)

    with pytest.raises(RuntimeError, match="broken batch"):
        run_batches(backbone, backbone.prepare(_texts(200)), lambda *_: None, batch_size=2,
                    device=torch.device("cpu"), precision="fp32", forward=forward, workers=2)
    assert torch.get_num_threads() == threads
    assert ran[0] < 20, "queued batches are cancelled, not all run"
