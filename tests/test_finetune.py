"""Fine-tuning strategies on the one loop, with the bundled MiniLM on real data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from transferkit import Classifier, load_data
from transferkit.adapt import get_strategy
from transferkit.data.examples import DataReport, Dataset, Examples
from transferkit.data.split import per_class_budget
from transferkit.errors import ConfigError
from transferkit.evaluate.baselines import classic_baseline


@pytest.fixture(scope="module")
def rt_small(data_dir):
    data = load_data(data_dir / "rotten_tomatoes.train.csv",
                     test=data_dir / "rotten_tomatoes.test.csv")
    return replace(data, train=per_class_budget(data.train, 64, 0, DataReport()),
                   test=data.test.subset(range(0, len(data.test), 4)))


@pytest.fixture(scope="module")
def floors(rt_small, minilm):
    probe = Classifier(minilm, "probe").fit(rt_small).evaluate(rt_small)["accuracy"]
    scratch = classic_baseline(rt_small)["metrics"]["accuracy"]
    return probe, scratch


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


@pytest.mark.parametrize("strategy,options", [
    ("full", {"epochs": 2, "lr": 5e-5, "lr_decay": 0.9, "restore_best": False}),
    ("partial", {"epochs": 2, "lr": 1e-4, "train_layers": 2, "restore_best": False}),
    ("gradual", {"epochs": 3, "lr": 1e-4, "restore_best": False}),
    ("bitfit", {"epochs": 2, "restore_best": False}),
    ("lora", {"epochs": 2, "restore_best": False}),
])
def test_strategy_trains_and_beats_the_scratch_floor(strategy, options, rt_small, floors):
    from transferkit.backbones import load_backbone

    backbone = load_backbone("minilm")  # a fresh copy: strategies change the weights
    before = _weights(type("M", (), {"backbone": backbone})())
    clf = Classifier(backbone, strategy, strategy_options=options).fit(rt_small)
    acc = clf.evaluate(rt_small)["accuracy"]
    probe, scratch = floors
    assert acc > scratch, (strategy, acc, scratch)
    assert acc > probe - 0.03, (strategy, acc, probe)  # never much worse than where it started
    info = clf.fit_info
    assert info["steps"] > 0 and info["n_valid"] > 0
    if strategy == "lora":
        assert info["trainable_fraction"] < 0.02
    after = clf.model.backbone.state_dict()
    if strategy == "lora":  # lora_B starts at zero: trained adapters are non-zero
        lora_b = [v for k, v in after.items() if "lora_B" in k]
        assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
        return
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert changed, "training must change some backbone weights"
    if strategy == "partial":
        assert all(".layer.4." in k or ".layer.5." in k for k in changed), changed[:5]


def test_layerwise_lr_decay_plan(minilm):
    strategy = get_strategy("full", {"lr": 1e-4, "lr_decay": 0.5})
    from transferkit.adapt import TransferModel

    groups, frozen = strategy.plan(TransferModel(minilm, ["a", "b"]))
    lrs = [g.lr for g in groups[1:]]  # groups[0] is the head
    assert lrs[-1] == pytest.approx(1e-4) and lrs[-2] == pytest.approx(5e-5)
    assert lrs[0] == pytest.approx(1e-4 * 0.5 ** (len(lrs) - 1))
    assert not frozen


def test_gradual_unfreezes_one_group_per_epoch(minilm):
    from transferkit.adapt import TransferModel

    groups, frozen = get_strategy("gradual", {"epochs": 3}).plan(TransferModel(minilm, ["a"]))
    assert [g.start_epoch for g in groups] == [0, 2, 1]  # head, then top, then next
    assert len(frozen) == len(minilm.layer_groups()) - 2


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="Unknown option"):
        get_strategy("full", {"epoch": 3})
    with pytest.raises(ConfigError, match="lr_decay"):
        get_strategy("full", {"lr_decay": 1.5})


@pytest.mark.parametrize("merge", [False, True])
def test_lora_artifact_reloads_and_predicts_identically(merge, tmp_path, tiny_bert_dir):
    texts = [f"good movie number {i}" for i in range(24)] + \
            [f"terrible film, scene {i}" for i in range(24)]
    ex = Examples(texts, ["pos"] * 24 + ["neg"] * 24, [f"row {i}" for i in range(48)], "text")
    data = Dataset(train=ex, test=ex, classes=["neg", "pos"])
    clf = Classifier(str(tiny_bert_dir), "lora", cache=False,
                     strategy_options={"epochs": 1, "merge": merge, "lr": 1e-2}).fit(data)
    clf.save(tmp_path / "m")
    adapter = (tmp_path / "m" / "backbone" / "adapter" / "adapter_model.safetensors").exists()
    assert adapter is not merge
    loaded = Classifier.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict_proba(texts), clf.predict_proba(texts), atol=1e-5)


def test_early_stopping_restores_the_best_weights(tiny_bert_dir):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta"]
    texts = [" ".join(rng.choice(words, 6)) for _ in range(160)]
    labels = [str(rng.integers(0, 2)) for _ in texts]  # noise: validation cannot improve long
    ex = Examples(texts, labels, [f"r{i}" for i in range(160)], "text")
    data = Dataset(train=ex, test=ex, classes=["0", "1"])
    clf = Classifier(str(tiny_bert_dir), "full", cache=False, batch_size=8, strategy_options={
        "epochs": 20, "lr": 1e-3, "eval_every": 2, "patience": 2, "metric": "loss",
        "init_head": "random"}).fit(data)
    info = clf.fit_info
    assert info["stopped_early"] and info["steps"] < 20 * 18
    assert info["best_step"] < info["steps"]


def test_restoring_the_best_never_ends_below_the_probe_start(tiny_bert_dir):
    """The starting point (a probe-initialised head) is evaluated too, so a fine-tuning run
    that only makes things worse restores it."""
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "gamma", "delta"]
    texts = [" ".join(rng.choice(words, 5)) + (" good" if i % 2 else " bad") for i in range(120)]
    labels = ["pos" if i % 2 else "neg" for i in range(120)]
    ex = Examples(texts, labels, [f"r{i}" for i in range(120)], "text")
    data = Dataset(train=ex, test=ex, classes=["neg", "pos"])
    clf = Classifier(str(tiny_bert_dir), "full", cache=False, batch_size=8, strategy_options={
        "epochs": 2, "lr": 0.5, "patience": None}).fit(data)  # an LR that wrecks the model
    info = clf.fit_info
    assert info["best_step"] == 0  # the start was best, and it was restored
    assert clf.evaluate(data)["accuracy"] > 0.9
