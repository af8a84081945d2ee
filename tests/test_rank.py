"""Choosing a backbone: `rank`, `fit --backbone auto`, and frozen-only backbones refused for
fine-tuning. Two small candidates: the bundled MiniLM and a 2-layer random BERT, which any
score worth its name must put below the pretrained model."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from cli_helpers import run_cli
from scipy.stats import weightedtau

from transferkit import Classifier
from transferkit.data import load_data
from transferkit.errors import ConfigError
from transferkit.select.rank import Candidate, Ranking, agreement, rank, sample_for_ranking
from transferkit.workflows.rank import rank_run


@pytest.fixture(scope="module")
def sms_small(data_dir):
    return load_data(data_dir / "sms_spam.train.csv", test=data_dir / "sms_spam.test.csv",
                     per_class=40, seed=0)


def test_pretrained_model_outranks_a_random_one_on_every_score(sms_small, tiny_bert_dir):
    ranking = rank(sms_small, ["minilm", str(tiny_bert_dir)], cache=False)
    assert [c.name for c in ranking.candidates] == ["minilm", str(tiny_bert_dir)]
    minilm, tiny = ranking.candidates
    for score in ("logme", "hscore", "transrate", "knn", "linear_probe", "size"):
        assert minilm.scores[score] > tiny.scores[score], score
    assert minilm.scores["leep"] is None and minilm.scores["nce"] is None  # no source head
    assert minilm.params > 20_000_000 and tiny.params < 2_000_000
    assert ranking.scored_on == "all 80 training examples"
    assert minilm.seconds["total"] > 0 and not minilm.from_cache


def test_a_missing_candidate_is_reported_not_fatal(sms_small, tiny_bert_dir):
    ranking = rank(sms_small, [str(tiny_bert_dir), "no-such-model"], cache=False,
                   scores=["knn"])
    assert ranking.best.name == str(tiny_bert_dir)
    assert ranking.candidates[-1].name == "no-such-model"
    assert "was not found" in ranking.candidates[-1].error
    with pytest.raises(ConfigError, match="Unknown score 'logmee'"):
        rank(sms_small, ["minilm"], score="logmee")


def test_stratified_sample_keeps_every_class(sms_small):
    sample = sample_for_ranking(sms_small.train, 20, seed=0)
    assert len(sample) == 20
    assert sorted(set(sample.labels)) == sorted(set(sms_small.train.labels))
    assert sample_for_ranking(sms_small.train, None, seed=0) is sms_small.train


def test_agreement_is_weighted_tau_and_top1_regret():
    cands = [Candidate(n, scores={"logme": s, "size": z}) for n, s, z in
             [("a", 3.0, 1.0), ("b", 2.0, 3.0), ("c", 1.0, 2.0)]]
    truth = {"a": 0.90, "b": 0.80, "c": 0.85}
    got = agreement(Ranking("logme", cands, 10, ["x", "y"], "all"), truth)
    assert got["logme"]["pick"] == "a" and got["logme"]["top1_regret"] == 0.0
    # size picks b (0.80): 0.10 below the best candidate
    assert got["size"]["pick"] == "b" and got["size"]["top1_regret"] == pytest.approx(0.10)
    assert got["logme"]["weighted_tau"] == pytest.approx(
        weightedtau([3.0, 2.0, 1.0], [0.90, 0.80, 0.85]).statistic)


def test_rank_run_writes_the_ranking_and_checks_it_against_probes(sms_small, tiny_bert_dir,
                                                                   tmp_path):
    out = tmp_path / "rank"
    result = rank_run(sms_small, candidates=f"minilm,{tiny_bert_dir}", out=out, verify=True,
                      cache=False)
    saved = json.loads((out / "rank.json").read_text())
    assert saved["candidates"][0]["name"] == "minilm"
    truth = saved["verified"]["accuracy"]
    assert truth["minilm"] > truth[str(tiny_bert_dir)] and truth["minilm"] > 0.85
    assert saved["verified"]["agreement"]["logme"]["top1_regret"] == 0.0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "weighted τ" in html
    assert (out / "score_vs_accuracy.png").stat().st_size > 1000
    assert result.fit_seconds["minilm"] > 0


def test_fit_backbone_auto_fits_the_first_candidate_and_reuses_its_features(
        data_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    done = run_cli("fit", data_dir / "sms_spam.train.csv", "--test",
                   data_dir / "sms_spam.test.csv", "--per-class", "30", "--backbone", "auto",
                   "--candidates", f"{tiny_bert_dir},minilm", "--out", out, "--no-cache")
    assert done.returncode == 0, done.stderr
    ranking = json.loads((out / "rank.json").read_text())
    assert [c["name"] for c in ranking["candidates"]] == ["minilm", str(tiny_bert_dir)]
    assert "backbone: minilm" in (out / "run.yaml").read_text()
    cost = json.loads((out / "run.json").read_text())["fit_info"]["cost"]
    assert cost["examples_extracted"] == 0 and cost["examples_from_cache"] == 60
    assert "How the backbone was chosen" in (out / "report.html").read_text()


def test_candidates_without_auto_is_refused(data_dir, tmp_path):
    done = run_cli("fit", data_dir / "sms_spam.train.csv", "--candidates", "minilm",
                   "--out", tmp_path / "r")
    assert done.returncode != 0 and "--candidates is for --backbone auto" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_frozen_only_backbone_is_refused_for_fine_tuning(sms_small, tiny_bert_dir):
    from transferkit.backbones import load_backbone

    frozen = load_backbone(str(tiny_bert_dir))
    frozen.frozen_only = True
    with pytest.raises(ConfigError, match=r"only be used frozen.*probe, protonet "
                                          r"\(--no-meta-train\)"):
        Classifier(copy.deepcopy(frozen), "partial", cache=False).fit(sms_small)
    clf = Classifier(copy.deepcopy(frozen), "probe", cache=False).fit(sms_small)
    assert np.isfinite(clf.predict_proba(["free prize"])).all()
    Classifier(copy.deepcopy(frozen), "protonet", cache=False,
               strategy_options={"meta_train": False}).fit(sms_small)


def test_models_install_refuses_what_it_cannot_install():
    done = run_cli("models", "--install", "minilmm")
    assert done.returncode != 0 and "Unknown backbone 'minilmm'" in done.stderr
    assert "did you mean" in done.stderr.lower()
    done = run_cli("models", "--install", "bert-base")
    assert done.returncode != 0 and "no package to install" in done.stderr
