"""ONNX export and the torch-free ONNX engine: parity with PyTorch, dynamic axes, int8, safety.

Tiny random models where the point is plumbing; MiniLM and EfficientNet-Lite0 where the point
is real parity. Every check runs the real exporter and the real ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from transferkit import Classifier
from transferkit.data.examples import Dataset, Examples
from transferkit.errors import ArtifactError, ConfigError
from transferkit.reuse import onnx_export
from transferkit.reuse.engines import load_engine
from transferkit.reuse.onnx_export import export_onnx

POS = [f"good movie number {i}, loved it" for i in range(16)]
NEG = [f"terrible film, scene {i} was awful" for i in range(16)]


def _texts_dataset() -> Dataset:
    texts, labels = POS + NEG, ["pos"] * 16 + ["neg"] * 16
    ex = Examples(texts, labels, [f"row {i}" for i in range(32)], "text", "mem")
    return Dataset(train=ex, test=ex, classes=["neg", "pos"])


@pytest.fixture(scope="module")
def labelled_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "eval.csv"
    pd.DataFrame({"text": POS + NEG, "label": ["pos"] * 16 + ["neg"] * 16}).to_csv(
        path, index=False)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert_dir, labelled_csv) -> Path:
    """A probe on the 2-layer random BERT (128 positions), exported fp32 + int8."""
    clf = Classifier(str(tiny_bert_dir), "probe", cache=False).fit(_texts_dataset())
    path = tmp_path_factory.mktemp("tiny") / "run"
    clf.save(path)
    (path / "README.md").write_text("# Tiny model\n\nmy own notes\n")
    export_onnx(path, int8=True, eval_data=labelled_csv)
    return path


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory, data_dir) -> tuple[Path, dict]:
    """A real run (fit_run: run.yaml, model card) of MiniLM on a slice of SMS spam."""
    from transferkit.config import FitConfig
    from transferkit.workflows import fit_run

    root = tmp_path_factory.mktemp("minilm")
    train = pd.read_csv(data_dir / "sms_spam.train.csv", keep_default_na=False)
    test = pd.read_csv(data_dir / "sms_spam.test.csv", keep_default_na=False)
    train.groupby("label").head(40).to_csv(root / "train.csv", index=False)
    test.groupby("label").head(30).to_csv(root / "test.csv", index=False)
    out = root / "run"
    fit_run(FitConfig(train=str(root / "train.csv"), test=str(root / "test.csv"),
                      backbone="minilm", out=str(out)))
    info = export_onnx(out, int8=True)
    return out, info


def test_minilm_parity_and_int8_recorded(minilm_run):
    run, info = minilm_run
    recorded = json.loads((run / "onnx" / "export.json").read_text())
    assert recorded == json.loads(json.dumps(info))
    assert info["fp32"]["parity_max_abs_diff"] <= 1e-4
    assert info["fp32"]["parity_examples"] >= 60  # 60 test texts + edge cases
    q = info["int8"]
    assert q["eval_examples"] == 60 and "run.yaml" in q["eval_source"]
    assert q["accuracy_change"] == pytest.approx(q["accuracy_int8"] - q["accuracy_fp32"])
    assert q["accuracy_fp32"] > 0.9 and q["accuracy_int8"] > 0.85
    assert q["bytes"] < info["fp32"]["bytes"] / 2
    card = (run / "README.md").read_text()
    assert "## Test metrics" in card  # the rest of the card is kept
    assert "## ONNX export" in card and f"{q['accuracy_int8']:.4f}" in card
    engine = load_engine(run, "onnx", int8=True)
    assert engine.predict(["WINNER!! Claim your free prize now, call 0800 now",
                           "see you at lunch?"]) == ["spam", "ham"]


def test_reexport_replaces_the_card_section(tiny_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    assert "model.int8.onnx" in (run / "README.md").read_text()
    export_onnx(run, overwrite=True)
    card = (run / "README.md").read_text()
    assert card.startswith("# Tiny model\n\nmy own notes\n")
    assert card.count("## ONNX export") == 1 and "model.int8.onnx" not in card
    assert not (run / "onnx" / "model.int8.onnx").exists()
    assert not list(run.glob(".onnx.*"))


def test_dynamic_batch_and_sequence_axes(tiny_run):
    """Batches of 1, 5 and 2 and lengths from 1 token to past max_length, as PyTorch gives."""
    onnx = load_engine(tiny_run, "onnx", batch_size=5)
    torch_ = load_engine(tiny_run, "torch", precision="fp32", batch_size=5)
    info = json.loads((tiny_run / "onnx" / "export.json").read_text())
    assert info["text"]["max_length"] == 128  # capped at the model's position table
    words = ["a", "good", "film"] * 100
    texts = [" ".join(words[:n]) for n in (1, 2, 7, 30, 64, 126, 127, 128, 129, 300)]
    for batch in ([texts[0]], texts[1:6], texts[6:8], texts):
        assert np.abs(onnx.predict_proba(batch) - torch_.predict_proba(batch)).max() <= 1e-4
    assert onnx.predict_proba([]).shape == (0, 2)


_NO_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())
from transferkit.cli import main
sys.argv = ["transferkit", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("int8", [False, True])
def test_predict_engine_onnx_without_torch(tiny_run, tmp_path, int8):
    inputs = tmp_path / "in.csv"
    texts = ["a good film", "awful", "x " * 400]
    pd.DataFrame({"text": texts}).to_csv(inputs, index=False)
    out = tmp_path / "out.csv"
    args = ["predict", str(tiny_run), str(inputs), "--output", str(out), "--engine", "onnx"]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, *args, *(["--int8"] * int8)],
                          capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(out)[["prob_neg", "prob_pos"]].to_numpy()
    want = load_engine(tiny_run, "torch", precision="fp32").predict_proba(texts)
    if not int8:
        assert np.abs(got - want).max() <= 1e-4
    else:  # the int8 model is an approximation; it must still be a distribution
        assert np.allclose(got.sum(1), 1, atol=1e-5)


def test_export_refuses_to_overwrite_and_a_failed_export_keeps_the_old(tiny_run, monkeypatch):
    files = {p.name: p.read_bytes() for p in (tiny_run / "onnx").iterdir()}
    with pytest.raises(ArtifactError, match="--overwrite"):
        export_onnx(tiny_run)
    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", -1.0)  # no export can pass
    with pytest.raises(ArtifactError, match="refused"):
        export_onnx(tiny_run, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tiny_run / "onnx").iterdir()} == files
    assert not list(tiny_run.glob(".onnx.*"))


def test_int8_needs_labelled_data(tiny_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "onnx")
    with pytest.raises(ConfigError, match="run.yaml is missing.*--eval-data"):
        export_onnx(run, int8=True)
    assert not (run / "onnx").exists()
    # without labelled data the parity check runs on edge cases only, and says why
    info = export_onnx(run)
    assert info["fp32"]["parity_source"].startswith("3 edge cases only: ")
    assert "run.yaml is missing" in info["fp32"]["parity_source"]


def test_damaged_or_missing_export_is_a_clear_error(tiny_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    model = run / "onnx" / "model.onnx"
    model.write_bytes(model.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="damaged"):
        load_engine(run, "onnx")
    shutil.rmtree(run / "onnx")
    with pytest.raises(ArtifactError, match="transferkit export"):
        load_engine(run, "onnx")
    with pytest.raises(ConfigError, match="--engine onnx"):
        load_engine(run, "torch", int8=True)


def test_cli_export_errors_exit_2(tiny_run, monkeypatch, capsys):
    from transferkit.cli import main

    for args, message in ((["--onnx"], "--overwrite"), ([], "--onnx")):
        monkeypatch.setattr(sys, "argv", ["transferkit", "export", str(tiny_run), *args])
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_unmerged_lora_exports_merged(tmp_path_factory, tiny_bert_dir):
    clf = Classifier(str(tiny_bert_dir), "lora", cache=False,
                     strategy_options={"epochs": 1, "r": 4}).fit(_texts_dataset())
    run = tmp_path_factory.mktemp("lora") / "run"
    clf.save(run)
    assert (run / "backbone" / "adapter" / "adapter_config.json").is_file()  # unmerged
    info = export_onnx(run)
    assert info["fp32"]["parity_max_abs_diff"] <= 1e-4
    import onnx

    names = [i.name for i in onnx.load(str(run / "onnx" / "model.onnx")).graph.initializer]
    assert not any("lora" in n.lower() for n in names)
    assert (run / "backbone" / "adapter" / "adapter_config.json").is_file()  # run untouched


def test_efficientnet_lite0_export_matches_on_odd_sized_images(tmp_path_factory):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24 + 3 * i, 40 - i, 3), dtype=np.uint8) for i in range(12)]
    labels = ["a", "b"] * 6
    ex = Examples(images, labels, [f"row {i}" for i in range(12)], "image", "mem")
    clf = Classifier("efficientnet_lite0", "probe", image_size=32, cache=False).fit(
        Dataset(train=ex, test=ex, classes=["a", "b"]))
    run = tmp_path_factory.mktemp("effnet") / "run"
    clf.save(run)
    info = export_onnx(run)
    assert info["fp32"]["parity_max_abs_diff"] <= 1e-4
    odd = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
           for h, w in ((17, 301), (333, 250), (31, 32), (99, 13))]
    odd.append(Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)))  # greyscale
    path = tmp_path_factory.mktemp("img") / "odd.png"
    odd[0].save(path)
    odd.append(path)  # a file path, as predict_file passes them
    onnx = load_engine(run, "onnx").predict_proba(odd)
    torch_ = load_engine(run, "torch", precision="fp32").predict_proba(odd)
    assert np.abs(onnx - torch_).max() <= 1e-4
    # dynamic int8 has nothing to quantise in a conv net: refused, the fp32 export kept
    npz = path.with_name("eval.npz")
    np.savez(npz, images=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
             labels=np.array([0, 1, 0, 1]), classes=np.array(["a", "b"]))
    before = (run / "onnx" / "model.onnx").read_bytes()
    with pytest.raises(ConfigError, match="convolutional"):
        export_onnx(run, int8=True, overwrite=True, eval_data=npz)
    assert (run / "onnx" / "model.onnx").read_bytes() == before


def test_multilabel_export_ends_in_sigmoids(tmp_path_factory, tiny_bert_dir):
    texts = POS + NEG
    labels = ["fun|pos"] * 8 + ["pos"] * 8 + ["neg"] * 8 + ["fun|neg"] * 8
    ex = Examples(texts, labels, [f"row {i}" for i in range(32)], "text", "mem", delimiter="|")
    clf = Classifier(str(tiny_bert_dir), "probe", cache=False).fit(
        Dataset(train=ex, test=ex, classes=["fun", "neg", "pos"]))
    run = tmp_path_factory.mktemp("multi") / "run"
    clf.save(run)
    info = export_onnx(run)
    assert info["multilabel"] and info["fp32"]["parity_max_abs_diff"] <= 1e-4
    engine = load_engine(run, "onnx")
    proba = engine.predict_proba(texts[:4])
    assert not np.allclose(proba.sum(1), 1)  # independent sigmoids, not a softmax
    assert engine.predict(texts[:4]) == clf.predict(texts[:4])


def test_dynamo_exporter_gives_the_same_dynamic_graph(tiny_run, tmp_path):
    """The fallback exporter works too (batch and sequence axes stay dynamic)."""
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    info = export_onnx(run, overwrite=True, exporter="dynamo")
    assert info["exporter"] == "dynamo" and info["fp32"]["parity_max_abs_diff"] <= 1e-4
    texts = ["a", "a good film " * 20, "x " * 300, "bad", "fine"]
    onnx = load_engine(run, "onnx", batch_size=2).predict_proba(texts)
    torch_ = load_engine(run, "torch", precision="fp32").predict_proba(texts)
    assert np.abs(onnx - torch_).max() <= 1e-4
