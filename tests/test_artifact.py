"""Artifacts: safetensors + JSON only; damaged or foreign folders fail clearly at load."""

from __future__ import annotations

import json
import shutil

import pytest

from transferkit import Classifier
from transferkit.data.examples import Dataset, Examples
from transferkit.errors import ArtifactError


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_bert_dir):
    texts = [f"good movie number {i}" for i in range(20)] + \
            [f"terrible film, scene {i}" for i in range(20)]
    labels = ["pos"] * 20 + ["neg"] * 20
    ex = Examples(texts, labels, [f"row {i}" for i in range(40)], "text", "mem")
    data = Dataset(train=ex, test=ex, classes=["neg", "pos"])
    clf = Classifier(str(tiny_bert_dir), "probe", cache=False).fit(data)
    path = tmp_path_factory.mktemp("art") / "model"
    clf.save(path)
    return clf, path, texts


def copy(path, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(path, target)
    return target


def test_roundtrip_is_identical(saved):
    clf, path, texts = saved
    loaded = Classifier.load(path)
    assert loaded.predict(texts) == clf.predict(texts)
    config = json.loads((path / "config.json").read_text())
    assert config["labels"] == ["neg", "pos"] and config["format"] == "transferkit-artifact"


def test_save_refuses_to_overwrite(saved):
    clf, path, _ = saved
    with pytest.raises(ArtifactError, match="--overwrite"):
        clf.save(path)
    clf.save(path, overwrite=True)
    assert (path / "config.json").is_file()


def test_missing_config(saved, tmp_path):
    target = copy(saved[1], tmp_path)
    (target / "config.json").unlink()
    with pytest.raises(ArtifactError, match="config.json is missing"):
        Classifier.load(target)


def test_corrupt_and_foreign_config(saved, tmp_path):
    target = copy(saved[1], tmp_path)
    (target / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Classifier.load(target)
    (target / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ArtifactError, match="another tool"):
        Classifier.load(target)


def test_truncated_weights(saved, tmp_path):
    target = copy(saved[1], tmp_path)
    head = target / "head.safetensors"
    head.write_bytes(head.read_bytes()[:40])
    with pytest.raises(ArtifactError, match="head.safetensors"):
        Classifier.load(target)
    target2 = copy(saved[1], tmp_path / "b")
    weights = target2 / "backbone" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="backbone"):
        Classifier.load(target2)


def test_changed_weights_fail_the_fingerprint_check(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    target = copy(saved[1], tmp_path)
    weights = target / "backbone" / "model.safetensors"
    state = load_file(str(weights))
    name = next(iter(state))
    state[name] = state[name] + 1.0
    save_file(state, str(weights))
    with pytest.raises(ArtifactError, match="fingerprint"):
        Classifier.load(target)
