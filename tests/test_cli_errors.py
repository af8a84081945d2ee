"""Every command-line mistake gets a short message and exit 2, never a traceback.

Each case runs the installed command in a real subprocess, on the typer/click versions the
project installs (typer bundles its own click: catching the standalone click's exceptions
missed every one of these)."""

from __future__ import annotations

import pytest
from cli_helpers import run_cli

# (arguments, a piece of the message the user must see)
MISTAKES = [
    ((), "Usage"),  # bare `transferkit`: the help, not a traceback
    (("fitt",), "Did you mean 'fit'"),
    (("fit", "data.csv", "--per-clas", "8"), "--per-class"),
    (("fit", "data.csv", "--per-class", "eight"), "--per-class"),
    (("fit", "data.csv", "--seed"), "--seed"),
    (("study",), "Missing argument"),
    (("study", "data.csv", "--seeds", "three"), "--seeds"),
    (("study", "data.csv", "--budget", "8"), "--budgets"),
    (("evaluate",), "Missing argument"),
    (("evaluate", "run", "data.csv", "--outptu", "m.json"), "--output"),
    (("predict", "run", "file.csv"), "Missing option '--output'"),
    (("predict", "run", "file.csv", "--output", "p.csv", "--batch-size", "many"),
     "--batch-size"),
    (("predict", "run", "file.csv", "--output", "p.csv", "--engin", "onnx"), "--engine"),
    (("export",), "Missing argument"),
    (("export", "run", "--onxx"), "--onnx"),
    (("serve",), "Missing argument"),
    (("serve", "run", "--port", "http"), "--port"),
    (("meta-train", "data.csv"), "Missing option '--out'"),
    (("meta-train", "data.csv", "--out", "r", "--n-way", "five"), "--n-way"),
    (("meta-eval", "run"), "Missing argument"),
    (("meta-eval", "run", "data.csv", "--episodes", "1.5"), "--episodes"),
    (("models", "--all"), "No such option"),
    (("pretrain",), "Missing argument"),
    (("pretrain", "corpus.txt", "--epochs", "x"), "--epochs"),
    (("pretrain", "corpus.txt", "--modalty", "image"), "--modality"),
    (("demo", "extra-argument"), "unexpected extra argument"),
    (("demo", "--outt", "x"), "--out"),
    (("examples", "--out"), "--out"),
]


@pytest.mark.parametrize("args, shown", MISTAKES, ids=[" ".join(a) or "bare" for a, _ in
                                                         MISTAKES])
def test_usage_mistakes_exit_2_with_a_message(args, shown, tmp_path):
    r = run_cli(*args, cwd=tmp_path)
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text
    assert shown in text
    assert len(text.splitlines()) < 60  # one short paragraph (plus the usage line), or help
    assert list(tmp_path.iterdir()) == []  # a mistake writes nothing


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("errors") / "train.csv"
    path.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(20)))
    return path


@pytest.mark.parametrize("args, shown", [
    (("--strategy", "prob"), "did you mean 'probe'"),
    (("--strategy", "full", "-o", "epoch=2"), "did you mean 'epochs'"),
    (("--backbone", "/no/such/folder"), "/no/such/folder"),
    (("--precision", "fp8"), "precision"),
])
def test_bad_values_name_the_fix(args, shown, small_csv, tmp_path):
    r = run_cli("fit", small_csv, "--out", tmp_path / "run", *args, cwd=tmp_path)
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text and shown in text
    assert not (tmp_path / "run").exists()


def test_unknown_yaml_key_names_the_file_and_the_valid_keys(small_csv, tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text(f"train: {small_csv}\nper_clas: 8\n")
    r = run_cli("fit", "--config", config, "--out", tmp_path / "run", cwd=tmp_path)
    text = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in text
    assert "my.yaml" in text and "per_clas" in text and "did you mean 'per_class'" in text
    assert "Valid keys" in text


def test_study_strategy_typo_is_refused_before_any_work(small_csv, tmp_path):
    r = run_cli("study", small_csv, "--strategies", "probe,scrach", "--out", tmp_path / "s",
                cwd=tmp_path)
    text = r.stdout + r.stderr
    assert r.returncode == 2 and "did you mean 'scratch'" in text and "Traceback" not in text
    assert not (tmp_path / "s").exists()
