"""What a newcomer trips over (issue 17's papercuts): each is now a visible behaviour."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import run_cli

from transferkit import Classifier, __version__
from transferkit.adapt import STRATEGIES, get_strategy
from transferkit.cli import STRATEGY_NAMES
from transferkit.config import build_config
from transferkit.errors import ArtifactError, ConfigError
from transferkit.workflows import fit_run


def _csv(path: Path, n: int = 24, extra: str = "") -> Path:
    rows = [f"id{i},\"{'cheap offer win' if i % 2 else 'see you at lunch'} {i}\",{'ab'[i % 2]}\n"
            for i in range(n)]
    path.write_text("id,text,label\n" + "".join(rows) + extra)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("newcomer")
    train = _csv(root / "train.csv", extra="x,  ,a\n")  # one empty text, on line 26
    result = fit_run(build_config({}, {"train": str(train), "out": str(root / "run"),
                                       "backbone": str(tiny_bert_dir), "cache": False}))
    return result, root


def test_skipped_rows_name_the_file_and_the_editor_line(run):
    result, _ = run
    assert any("train.csv line 26" in line and "empty" in line for line in result.data_lines)


def test_run_records_the_version_and_commit(run):
    result, _ = run
    recorded = json.loads((result.out / "run.json").read_text())["run"]
    assert recorded["version"] == __version__ and "commit" in recorded
    assert __version__ != "0+unknown"  # read from the installed package's metadata


def test_predict_keeps_the_inputs_other_columns(run, tmp_path):
    result, root = run
    new = tmp_path / "new.csv"
    new.write_text("id,text,error\nx1,cheap offer win now,n/a\nx2,lunch at noon?,n/a\n")
    out = tmp_path / "p.csv"
    r = run_cli("predict", result.out, new, "--output", out)
    assert r.returncode == 0, r.stderr
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame["id"]) == ["x1", "x2"]  # predictions can be joined back
    assert list(frame["input_error"]) == ["n/a", "n/a"] and list(frame["error"]) == ["", ""]
    assert list(frame.columns[:2]) == ["row", "id"]


def test_a_second_fit_without_out_gets_its_own_folder(tmp_path, tiny_bert_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = _csv(tmp_path / "train.csv")
    config = build_config({}, {"train": str(train), "backbone": str(tiny_bert_dir),
                               "cache": False})
    first, second = fit_run(config).out, fit_run(config).out
    assert first != second and first.parent == second.parent == Path("runs")
    assert first.name.startswith("train-probe-") and (second / "config.json").is_file()


def test_options_a_strategy_would_ignore_are_errors():
    with pytest.raises(ConfigError, match="epochs.*--head linear"):
        get_strategy("probe", {"epochs": 3})
    with pytest.raises(ConfigError, match="Cs"):
        get_strategy("probe", {"head": "linear", "Cs": 3})
    assert get_strategy("probe", {"head": "linear", "epochs": 3}).options()["epochs"] == 3


def test_resume_with_nothing_to_resume_says_so(tmp_path, tiny_bert_dir, caplog):
    train = _csv(tmp_path / "train.csv")
    config = build_config({}, {"train": str(train), "out": str(tmp_path / "r"),
                               "backbone": str(tiny_bert_dir), "cache": False,
                               "resume": True})
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        fit_run(config)
    assert "no checkpoint" in caplog.text and "from the beginning" in caplog.text


def test_a_run_of_an_unknown_strategy_is_refused_not_read_as_a_probe(run, tmp_path):
    import shutil

    result, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(result.out, copy)
    config = json.loads((copy / "config.json").read_text())
    config["strategy"]["name"] = "mystery"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="mystery"):
        Classifier.load(copy)


def test_help_lists_every_registered_strategy():
    assert sorted(STRATEGY_NAMES) == sorted(STRATEGIES)
    r = run_cli("fit", "--help")
    assert r.returncode == 0 and "contrastive, full" in r.stdout and "--k-shot" in r.stdout
    text = " ".join(r.stdout.split())  # as read, whatever the wrapping
    assert "<bool>" not in text and "[default: minilm]" in text
