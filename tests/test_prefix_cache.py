"""Frozen-prefix cache: same losses as recomputing the frozen layers, and fewer forward calls."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transferkit import Classifier
from transferkit.data.examples import Dataset, Examples


@pytest.fixture(scope="module")
def toy() -> Dataset:
    rng = np.random.default_rng(3)
    good, bad = ["great", "lovely", "superb"], ["awful", "dull", "boring"]
    texts, labels = [], []
    for i in range(96):
        words = rng.choice(good if i % 2 else bad, 2).tolist() + rng.choice(
            ["the", "film", "plot", "was"], int(rng.integers(1, 9))).tolist()
        texts.append(" ".join(words))
        labels.append("pos" if i % 2 else "neg")
    ex = Examples(texts, labels, [f"r{i}" for i in range(96)], "text")
    return Dataset(train=ex, valid=ex.subset(range(0, 96, 6)), test=ex, classes=["neg", "pos"])


def _losses(tmp_path, tiny_bert_dir, toy, cache_prefix: bool) -> tuple[list[float], dict]:
    from transferkit.adapt import FitContext  # noqa: F401  (context fields used below)

    clf = Classifier(str(tiny_bert_dir), "partial", precision="fp32", batch_size=8,
                     strategy_options={"epochs": 2, "train_layers": 1, "lr": 1e-3,
                                       "cache_prefix": cache_prefix, "log_every": 1})
    run = tmp_path / ("cached" if cache_prefix else "plain")
    run.mkdir()
    clf.context.run_dir = run
    clf.fit(toy)
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return [e["loss"] for e in log if "loss" in e], clf.fit_info


def test_cached_prefix_gives_the_same_losses(tmp_path, tiny_bert_dir, toy):
    cached, info_cached = _losses(tmp_path, tiny_bert_dir, toy, True)
    plain, info_plain = _losses(tmp_path, tiny_bert_dir, toy, False)
    assert info_cached["prefix_cached_layers"] == 1  # tiny BERT: 2 layers, top 1 trains
    assert info_plain["prefix_cached_layers"] == 0
    assert len(cached) == len(plain) > 10
    np.testing.assert_allclose(cached, plain, atol=1e-5, rtol=0)


def test_frozen_layer_runs_once_per_example_not_per_epoch(tiny_bert_dir, toy):
    from transferkit.backbones import load_backbone

    backbone = load_backbone(str(tiny_bert_dir))
    seen = [0]
    frozen_layer = backbone.model.encoder.layer[0].attention  # runs only when recomputed
    frozen_layer.register_forward_pre_hook(
        lambda _m, args, kwargs=None: seen.__setitem__(0, seen[0] + args[0].shape[0])
        if args else None)
    Classifier(backbone, "partial", precision="fp32", batch_size=8, strategy_options={
        "epochs": 3, "train_layers": 1, "patience": None}).fit(toy)
    # the probe-initialisation pass and the prefix pass see each training text once; the
    # 3 training epochs and the validation passes do not add to it beyond the valid set
    assert seen[0] < 2 * len(toy.train) + 4 * len(toy.valid)
