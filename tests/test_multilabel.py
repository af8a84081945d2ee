"""Multi-label classification: label sets, sigmoid heads, tuned thresholds, micro/macro F1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from transferkit import Classifier, load_data
from transferkit.adapt import label_indices
from transferkit.metrics import compute_multilabel_metrics, tune_thresholds


@pytest.fixture(scope="module")
def genres(data_dir, tmp_path_factory):
    """MovieLens titles -> genres (19 labels, '|'-separated): real multi-label data."""
    items = pd.read_csv(data_dir / "movielens100k.items.csv", keep_default_na=False)
    items = items[items.genres != ""][["title", "genres"]]
    path = tmp_path_factory.mktemp("ml") / "titles.csv"
    items.rename(columns={"title": "text", "genres": "label"}).to_csv(path, index=False)
    return path, load_data(path, label_delimiter="|", seed=0)


def test_label_sets_are_read_and_canonical(genres):
    _, data = genres
    assert data.multilabel and len(data.classes) == 19
    assert all(lab == "|".join(sorted(set(lab.split("|")))) for lab in data.train.labels)
    y = label_indices(data.train, data.classes)
    assert y.shape == (len(data.train), 19) and (y.sum(1) >= 1).all()


def test_probe_beats_the_label_prior_and_reloads(genres, minilm, tmp_path):
    _, data = genres
    clf = Classifier(minilm, "probe").fit(data)
    metrics = clf.evaluate(data)
    y_train = label_indices(data.train, data.classes)
    y_test = label_indices(data.test, data.classes)
    prior_train = np.tile(y_train.mean(0), (len(y_train), 1))
    prior = compute_multilabel_metrics(y_test, np.tile(y_train.mean(0), (len(y_test), 1)),
                                       data.classes, tune_thresholds(y_train, prior_train))
    assert metrics["multilabel"] and metrics["micro_f1"] > prior["micro_f1"] + 0.1
    assert 0 <= metrics["hamming_loss"] < 0.3
    assert len(clf.model.thresholds) == 19
    clf.save(tmp_path / "m")
    loaded = Classifier.load(tmp_path / "m")
    titles = ["Toy Story 3 (2010)", "Scream 4 (2011)", "The Godfather Part IV (2030)"]
    assert loaded.predict(titles) == clf.predict(titles)
    assert loaded.model.thresholds == clf.model.thresholds
    assert all(set(p.split("|")) <= set(data.classes) for p in loaded.predict(titles) if p)


def test_fine_tuning_multilabel_trains_with_bce(tiny_bert_dir):
    from transferkit.data.examples import Dataset, Examples

    rng = np.random.default_rng(0)
    vocab = {"a": ["apple", "apricot"], "b": ["banana", "berry"], "c": ["cherry", "coconut"]}
    texts, labels = [], []
    for _ in range(200):
        on = [k for k in "abc" if rng.random() < 0.5] or ["a"]
        words = [rng.choice(vocab[k]) for k in on] + ["fruit"] * int(rng.integers(1, 4))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append("|".join(on))
    ex = Examples(texts, labels, [f"r{i}" for i in range(200)], "text", delimiter="|")
    data = Dataset(train=ex.subset(range(160)), test=ex.subset(range(160, 200)),
                   classes=["a", "b", "c"])
    clf = Classifier(str(tiny_bert_dir), "full", batch_size=16, strategy_options={
        "epochs": 3, "lr": 1e-3}).fit(data)
    assert clf.fit_info["metric"] == "micro_f1"
    metrics = clf.evaluate(data)
    assert metrics["micro_f1"] > 0.8
    assert all(set(p.split("|")) <= {"a", "b", "c"} for p in clf.predict(texts[:20]) if p)


def test_cli_multilabel_fit_and_predict(genres, tmp_path):
    import subprocess
    import sys

    path, _ = genres
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "transferkit", "fit", str(path),
                        "--label-delimiter", "|", "-o", "Cs=3", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 1
    new = tmp_path / "new.csv"
    pd.DataFrame({"text": ["Star Wars: Episode X (2030)", "A Quiet Romance (1999)"]}).to_csv(
        new, index=False)
    r = subprocess.run([sys.executable, "-m", "transferkit", "predict", str(out), str(new),
                        "--output", str(tmp_path / "p.csv")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert len(pred) == 2 and "prob_Action" in pred.columns
