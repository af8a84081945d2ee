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


def _with_shipped_code(folder, marker):
    """Make ``folder`` look like a model with its own code (auto_map -> evil.py) that would
    leave ``marker`` behind if it were ever imported."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")


def test_models_shipping_code_are_refused_and_never_run(tiny_bert_dir, saved, tmp_path):
    from transferkit.backbones import load_backbone
    from transferkit.errors import TransferkitError

    marker = tmp_path / "code-ran"
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    _with_shipped_code(folder, marker)
    with pytest.raises(TransferkitError, match="--trust-remote-code"):
        load_backbone(str(folder))
    ex = Examples(["good", "bad"] * 4, ["pos", "neg"] * 4, [str(i) for i in range(8)], "text",
                  "mem")
    with pytest.raises(TransferkitError, match="auto_map in config.json, evil.py"):
        Classifier(str(folder), cache=False).fit(Dataset(train=ex, test=ex,
                                                         classes=["neg", "pos"]))
    run = copy(saved[1], tmp_path / "run")
    _with_shipped_code(run / "backbone", marker)
    with pytest.raises(TransferkitError, match="trust_remote_code=True"):
        Classifier.load(run)
    assert not marker.exists()


def test_missing_backbone_config(saved, tmp_path):
    target = copy(saved[1], tmp_path)
    (target / "backbone" / "config.json").unlink()
    with pytest.raises(ArtifactError, match="cannot load the backbone"):
        Classifier.load(target)


def test_texts_longer_than_the_position_table_are_truncated(saved):
    clf, path, _ = saved  # the tiny BERT has 128 positions, its tokenizer allows 512
    assert clf.model.backbone.max_length == 128
    assert Classifier.load(path).predict(["word " * 600]) in (["neg"], ["pos"])


def test_saved_files_get_ordinary_permissions(saved):
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    path = saved[1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((path / "backbone").stat().st_mode) == 0o777 & ~mask
    for name in ("config.json", "head.safetensors", "backbone/model.safetensors"):
        assert stat.S_IMODE((path / name).stat().st_mode) == 0o666 & ~mask, name


def test_schema_and_onnx_engine_import_without_torch():
    import subprocess
    import sys

    code = ("import sys, transferkit, transferkit.reuse.engines, transferkit.reuse.onnx_runtime,"
            " transferkit.reuse.predict; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_probe_runs_share_one_copy_of_the_pretrained_weights(saved, tmp_path):
    """A frozen backbone's weights are hard links to one cached copy, not a copy per run;
    each run still loads on its own when the cache is gone."""
    import os

    clf, path, texts = saved
    clf.save(tmp_path / "again")
    first = path / "backbone" / "model.safetensors"
    second = tmp_path / "again" / "backbone" / "model.safetensors"
    assert os.stat(first).st_ino == os.stat(second).st_ino
    assert os.stat(second).st_nlink >= 3  # both runs and the cache
    shutil.rmtree(os.environ["TRANSFERKIT_CACHE"] + "/weights")
    assert Classifier.load(tmp_path / "again").predict(texts) == clf.predict(texts)
