"""End to end on real data with the bundled models: fit, evaluate, save, reload, predict."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit import Classifier, load_data
from transferkit.evaluate.baselines import classic_baseline


@pytest.fixture(scope="module")
def sms(data_dir):
    return load_data(data_dir / "sms_spam.train.csv", test=data_dir / "sms_spam.test.csv")


@pytest.fixture(scope="module")
def sms_probe(sms, minilm):
    return Classifier(minilm, strategy="probe").fit(sms)


def test_minilm_probe_on_sms_spam_reaches_098(sms, sms_probe):
    metrics = sms_probe.evaluate(sms)
    assert metrics["n"] == 1032
    assert metrics["accuracy"] >= 0.98
    assert set(metrics["per_class"]) == {"ham", "spam"}
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 1032


def test_probe_beats_tfidf_with_few_labels(sms, minilm):
    from dataclasses import replace

    from transferkit.data.examples import DataReport
    from transferkit.data.split import per_class_budget

    small = replace(sms, train=per_class_budget(sms.train, 8, 0, DataReport()))
    probe = Classifier(minilm, strategy="probe").fit(small).evaluate(small)
    scratch = classic_baseline(small)["metrics"]
    assert probe["accuracy"] > scratch["accuracy"] + 0.05


def test_saved_artifact_reloads_and_predicts_identically(tmp_path, sms, sms_probe):
    sms_probe.save(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert "head.safetensors" in files and "model.safetensors" in files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))}
    loaded = Classifier.load(tmp_path / "model")
    texts = sms.test.inputs[:64]
    np.testing.assert_allclose(loaded.predict_proba(texts), sms_probe.predict_proba(texts),
                               atol=1e-6)
    assert loaded.predict(texts) == sms_probe.predict(texts)
    assert loaded.classes == ["ham", "spam"]


def test_torch_linear_head_option(sms, minilm):
    clf = Classifier(minilm, strategy="probe", strategy_options={"head": "linear"}).fit(sms)
    assert clf.fit_info["epochs"] >= 1
    assert clf.evaluate(sms)["accuracy"] >= 0.97


def test_efficientnet_probe_beats_raw_pixels_on_fashion_mnist(data_dir):
    from transferkit.data import Examples
    from transferkit.data.examples import Dataset
    from transferkit.data.split import stratified_split

    arrays = np.load(data_dir / "fashion_mnist.test.npz")
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(arrays["labels"]), 2000, replace=False))
    classes = [str(c) for c in arrays["classes"]]
    ex = Examples(inputs=list(arrays["images"][idx]),
                  labels=[classes[i] for i in arrays["labels"][idx]],
                  origins=[f"fmnist {i}" for i in idx], modality="image", source="fmnist")
    from transferkit.data.examples import DataReport

    train, test = stratified_split(ex, 0.25, 0, DataReport())
    data = Dataset(train=train, test=test, classes=sorted(set(ex.labels)))
    # 128 px, not the 224 of ImageNet: 28 px images gain nothing from more, and it is 3x cheaper
    probe = Classifier("efficientnet_lite0", strategy="probe", batch_size=64, image_size=128
                       ).fit(data)
    ours = probe.evaluate(data)["accuracy"]
    pixels = classic_baseline(data)["metrics"]["accuracy"]
    assert ours > pixels + 0.01, (ours, pixels)
