"""The command line as a user runs it: real subprocesses, real files, exit codes."""

from __future__ import annotations

import pandas as pd
import pytest
from cli_helpers import run_cli


@pytest.fixture(scope="module")
def small_csvs(tmp_path_factory, data_dir):
    """300 train / 150 test SMS rows, so the CLI path runs in seconds."""
    root = tmp_path_factory.mktemp("cli-data")
    train = pd.read_csv(data_dir / "sms_spam.train.csv", keep_default_na=False)
    test = pd.read_csv(data_dir / "sms_spam.test.csv", keep_default_na=False)
    train = pd.concat([train[train.label == "spam"].head(60),
                       train[train.label == "ham"].head(240)])
    train.rename(columns={"text": "message", "label": "kind"}).to_csv(root / "train.csv",
                                                                       index=False)
    test.head(150).rename(columns={"text": "message", "label": "kind"}).to_csv(
        root / "test.csv", index=False)
    test.head(20)[["text"]].rename(columns={"text": "message"}).to_csv(root / "new.csv",
                                                                        index=False)
    return root


@pytest.fixture(scope="module")
def fitted_run(small_csvs, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "spam"
    config = small_csvs / "run.yaml"
    config.write_text(f"train: {small_csvs / 'train.csv'}\ntext-column: message\n"
                      "label_column: kind\nseed: 3\n")
    r = run_cli("fit", "--config", config, "--test", small_csvs / "test.csv", "--backbone",
                "minilm", "--out", out, "--baseline", "--option", "Cs=5")
    assert r.returncode == 0, r.stderr
    assert "report:" in r.stdout and "TF-IDF" in r.stdout
    return out


def test_fit_writes_a_complete_run_folder(fitted_run):
    names = {p.name for p in fitted_run.iterdir()}
    assert {"config.json", "head.safetensors", "backbone", "metrics.json", "README.md",
            "run.yaml", "report.html", "report.md", "confusion_matrix.png"} <= names
    import json

    metrics = json.loads((fitted_run / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.9 and metrics["n"] == 150
    run_yaml = (fitted_run / "run.yaml").read_text()
    assert "text_column: message" in run_yaml and "seed: 3" in run_yaml  # resolved config
    assert "Cs: 5" in run_yaml  # --option reached the strategy
    html = (fitted_run / "report.html").read_text()
    assert "data:image/png;base64," in html  # self-contained
    assert "accuracy" in (fitted_run / "README.md").read_text()


def test_predict_writes_label_and_probabilities(fitted_run, small_csvs, tmp_path):
    out = tmp_path / "pred.csv"
    r = run_cli("predict", fitted_run, small_csvs / "new.csv", "--output", out,
                "--text-column", "message")
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(out, keep_default_na=False)
    assert len(pred) == 20
    assert set(pred["label"]) <= {"ham", "spam"}
    probs = pred[["prob_ham", "prob_spam"]].to_numpy()
    assert abs(probs.sum(axis=1) - 1).max() < 1e-5
    # the same prediction from Python
    from transferkit import Classifier

    clf = Classifier.load(fitted_run)
    texts = pd.read_csv(small_csvs / "new.csv", keep_default_na=False)["message"].tolist()
    assert clf.predict(texts) == pred["label"].tolist()
    # refuses to overwrite without --overwrite
    again = run_cli("predict", fitted_run, small_csvs / "new.csv", "--output", out,
                    "--text-column", "message")
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_evaluate_command(fitted_run, small_csvs, tmp_path):
    r = run_cli("evaluate", fitted_run, small_csvs / "test.csv", "--text-column", "message",
                "--label-column", "kind", "--output", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    import json

    assert json.loads((tmp_path / "m.json").read_text())["n"] == 150


def test_existing_output_is_not_overwritten(fitted_run, small_csvs):
    before = (fitted_run / "metrics.json").read_bytes()
    r = run_cli("fit", small_csvs / "train.csv", "--text-column", "message", "--label-column",
                "kind", "--out", fitted_run)
    assert r.returncode == 2
    assert "already exists" in r.stderr and "--overwrite" in r.stderr
    assert (fitted_run / "metrics.json").read_bytes() == before


def test_user_errors_exit_2_without_traceback(small_csvs, tmp_path):
    r = run_cli("fit", small_csvs / "train.csv", "--out", tmp_path / "x")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "message" in r.stderr and "--text-column" in r.stderr  # names the columns + fix
    missing = run_cli("fit", tmp_path / "nope.csv", "--out", tmp_path / "y")
    assert missing.returncode == 2 and "nope.csv" in missing.stderr
    bad_backbone = run_cli("fit", small_csvs / "train.csv", "--text-column", "message",
                           "--label-column", "kind", "--backbone", "not-a-real/model-id",
                           "--out", tmp_path / "z")
    assert bad_backbone.returncode == 2 and "Tried" in bad_backbone.stderr
    assert not (tmp_path / "z").exists()  # a failed run leaves nothing behind
    # option errors are user errors too (exit 2 as above), checked in-process for speed
    from transferkit.adapt import get_strategy
    from transferkit.cli import parse_options
    from transferkit.errors import TransferkitError

    with pytest.raises(TransferkitError, match="KEY=VALUE"):
        parse_options(["Cs5"])
    with pytest.raises(TransferkitError, match="bogus.*Known: .*Cs"):
        get_strategy("probe", parse_options(["bogus=1"]))


def test_models_lists_aliases_and_where_they_resolve():
    r = run_cli("models")
    assert r.returncode == 0
    assert "minilm" in r.stdout and "efficientnet_lite0" in r.stdout
    assert "bundled" in r.stdout


def test_help_is_there_for_newcomers():
    r = run_cli("fit", "--help")
    assert r.returncode == 0 and "--per-class" in r.stdout and "--config" in r.stdout
