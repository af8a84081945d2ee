"""A command changes only what the user named, after validating, atomically (issue 16, items
1-6, 8, 10, 11): each test reproduces a way a user's files were lost, code ran unasked or a
mistake got a traceback, and checks it no longer happens."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from PIL import Image

from transferkit import Classifier
from transferkit._outputs import MARKER, staged_output
from transferkit.config import build_config, dump_yaml, load_yaml
from transferkit.errors import ArtifactError, ConfigError, TransferkitError
from transferkit.workflows import fit_run, study


def _csv(path: Path, labels: tuple[str, str] = ("ham", "spam"), n: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"\"{'cheap offer win' if i % 2 else 'see you at lunch'} {i}\",{labels[i % 2]}\n"
            for i in range(n)]
    path.write_text("text,label\n" + "".join(rows))
    return path


def _victim(folder: Path) -> dict[str, str]:
    """A user's folder with files transferkit never wrote; returns what they hold."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"notes.txt": "my notes", "report.html": "<p>my own report</p>"}
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


def _intact(folder: Path, files: dict[str, str]) -> bool:
    return all((folder / name).read_text() == text for name, text in files.items())


def _config(tiny_bert_dir: Path, train: Path, out: Path, **extra):
    return build_config({}, {"train": str(train), "out": str(out), "backbone": str(tiny_bert_dir),
                             "cache": False, **extra})


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("safety")
    train = _csv(root / "data" / "train.csv")
    result = fit_run(_config(tiny_bert_dir, train, root / "run"))
    return result.out, train


def test_saved_run_yaml_never_carries_overwrite_or_trust(text_run, tmp_path, tiny_bert_dir):
    run, train = text_run
    saved = (run / "run.yaml").read_text()
    for key in ("overwrite", "trust_remote_code", "resume"):
        assert key not in saved
    # A run.yaml written by an older version did carry `overwrite: true`; replaying it
    # into a user's folder must not delete it.
    old = tmp_path / "old-run.yaml"
    old.write_text(saved + "overwrite: true\nresume: false\n")
    victim = tmp_path / "victim"
    files = _victim(victim)
    with pytest.raises(ArtifactError, match="already exists"):
        fit_run(build_config(load_yaml(old), {"out": str(victim), "cache": False}))
    assert _intact(victim, files)
    assert dump_yaml(_config(tiny_bert_dir, train, victim, overwrite=True)).count("overwrite") == 0


def test_overwrite_never_deletes_a_folder_transferkit_did_not_write(tmp_path, tiny_bert_dir):
    victim = tmp_path / "victim"
    files = _victim(victim)
    train = _csv(victim / "train.csv")  # the command's own input lives there too
    with pytest.raises(ArtifactError, match="input of this command"):
        fit_run(_config(tiny_bert_dir, train, victim, overwrite=True))
    assert _intact(victim, files) and train.is_file()
    other = tmp_path / "other"
    files = _victim(other)
    with pytest.raises(ArtifactError, match="not written by transferkit"):
        fit_run(_config(tiny_bert_dir, _csv(tmp_path / "t.csv"), other, overwrite=True))
    assert _intact(other, files)


def test_overwrite_replaces_an_earlier_run(text_run, tmp_path, tiny_bert_dir):
    run, train = text_run
    again = tmp_path / "again"
    fit_run(_config(tiny_bert_dir, train, again))
    (again / "stale.txt").write_text("from the first run")
    fit_run(_config(tiny_bert_dir, train, again, overwrite=True))
    assert (again / MARKER).is_file() and not (again / "stale.txt").exists()


def test_study_validates_before_it_touches_its_folder(tmp_path, tiny_bert_dir):
    train = _csv(tmp_path / "train.csv")
    victim = tmp_path / "victim"
    files = _victim(victim)
    for overwrite in (False, True):  # an unrelated folder: never written into or deleted
        with pytest.raises(TransferkitError):
            study(train, backbone=str(tiny_bert_dir), budgets="4", strategies="probe", seeds=1,
                  out=victim, overwrite=overwrite)
        assert _intact(victim, files) and sorted(p.name for p in victim.iterdir()) == sorted(
            files)
    earlier = tmp_path / "study"
    study(train, backbone=str(tiny_bert_dir), budgets="4", strategies="probe", seeds=1,
          out=earlier)
    before = sorted(p.name for p in earlier.rglob("*"))
    with pytest.raises(ConfigError, match="bogus"):  # a typo with --overwrite deletes nothing
        study(train, backbone=str(tiny_bert_dir), budgets="4", strategies="bogus", seeds=1,
              out=earlier, overwrite=True)
    with pytest.raises(TransferkitError):  # nor does a backbone that does not load
        study(train, backbone=str(tmp_path / "nope"), budgets="4", strategies="probe", seeds=1,
              out=earlier, overwrite=True)
    assert sorted(p.name for p in earlier.rglob("*")) == before


def test_file_outputs_need_overwrite_and_are_never_an_input(text_run, tmp_path):
    run, train = text_run
    kept = tmp_path / "metrics.json"
    kept.write_text("mine")
    r = run_cli("evaluate", run, train, "--output", kept)
    assert r.returncode == 2 and "already exists" in r.stderr and kept.read_text() == "mine"
    before = train.read_text()
    for args in (("evaluate", run, train, "--output", train, "--overwrite"),
                 ("predict", run, train, "--output", train, "--overwrite"),
                 ("meta-eval", run, train, "--output", train, "--overwrite"),
                 ("evaluate", run, train, "--output", run / "config.json", "--overwrite")):
        r = run_cli(*args)
        assert r.returncode == 2 and "input of this command" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert train.read_text() == before
    r = run_cli("evaluate", run, train, "--output", kept, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert json.loads(kept.read_text())["n"] == 24


def test_stale_partial_folders_are_removed_and_said(tmp_path, caplog):
    target = tmp_path / "run"
    dead = tmp_path / ".run.partial-999999999-abc"  # no such process
    older = tmp_path / ".run.partial-k2j3h4"  # left by a version without pids in the name
    live = tmp_path / f".run.partial-{os.getpid()}-xyz"  # a run in progress: kept
    for d in (dead, older, live):
        d.mkdir()
        (d / "weights.bin").write_bytes(b"0" * 1000)
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        with staged_output(target, overwrite=False) as stage:
            (stage / "a.txt").write_text("whole")
    assert not dead.exists() and not older.exists() and live.exists()
    assert (target / "a.txt").read_text() == "whole" and (target / MARKER).is_file()
    assert str(dead) in caplog.text and "interrupted" in caplog.text


def test_trust_is_never_read_from_a_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"train: {tmp_path / 'x.csv'}\ntrust_remote_code: true\n")
    with pytest.raises(ConfigError, match="--trust-remote-code"):
        load_yaml(config)
    r = run_cli("fit", "--config", config, "--out", tmp_path / "run")
    assert r.returncode == 2 and "--trust-remote-code" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_report_html_escapes_labels_and_file_names(tmp_path, tiny_bert_dir):
    evil = "<script>alert(1)</script>"
    train = _csv(tmp_path / "<b>data</b>" / "train.csv", labels=("ham", evil))
    result = fit_run(_config(tiny_bert_dir, train, tmp_path / "run"))
    html = result.report.read_text()
    assert evil not in html and "<b>data</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_text_file_given_to_an_image_model_is_a_clear_error(tmp_path, text_run):
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    Classifier("efficientnet_lite0", cache=False).fit(root, test_size=0.34).save(
        tmp_path / "image-run")
    _, texts = text_run
    r = run_cli("predict", tmp_path / "image-run", texts, "--output", tmp_path / "p.csv")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "holds text inputs" in r.stderr and "reads image" in r.stderr
    r = run_cli("evaluate", tmp_path / "image-run", texts)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "reads image" in r.stderr


def test_output_paths_that_cannot_be_written_safely(text_run, tmp_path, tiny_bert_dir,
                                                    monkeypatch):
    run, train = text_run
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="current folder"):
        fit_run(_config(tiny_bert_dir, train, Path("."), overwrite=True))
    with pytest.raises(ArtifactError, match="current folder"):
        fit_run(_config(tiny_bert_dir, train, tmp_path.parent, overwrite=True))
    real = tmp_path / "real"
    files = _victim(real)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ArtifactError, match="symbolic link"):
        fit_run(_config(tiny_bert_dir, train, tmp_path / "link", overwrite=True))
    assert _intact(real, files) and (tmp_path / "link").is_symlink()
    folder = tmp_path / "preds"
    folder.mkdir()
    r = run_cli("predict", run, train, "--output", folder, "--overwrite")
    assert r.returncode == 2 and "is a folder" in r.stderr and "Traceback" not in r.stderr
