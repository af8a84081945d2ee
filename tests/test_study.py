"""The transfer study on real data: pretrained probe vs scratch vs classic, report, resume."""

from __future__ import annotations

import json

import pytest

from transferkit import study
from transferkit.evaluate.study_report import StudySummary, labels_to_reach


@pytest.fixture(scope="module")
def small_study(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    summary = study(data_dir / "sms_spam.train.csv", test=data_dir / "sms_spam.test.csv",
                    budgets="8,32", strategies="scratch,tfidf-logreg,probe", seeds=1, epochs=1,
                    out=out)
    return out, summary


def test_probe_beats_both_baselines_at_the_smallest_budget(small_study):
    _, s = small_study
    acc = {k: v["8"]["accuracy_mean"] for k, v in s["curves"].items()}
    assert acc["probe"] > acc["scratch"] and acc["probe"] > acc["tfidf-logreg"]
    assert s["best_per_budget"]["8"] == "probe"
    assert s["labels_to_target"]["probe"]["90%"] == 8  # reached at the first budget
    assert s["headline"] and s["headline"][0].startswith("probe")


def test_report_files_schema_and_embedded_plots(small_study):
    out, _ = small_study
    for name in ("study.json", "report.html", "report.md", "accuracy_vs_labels.png",
                 "accuracy_vs_time.png"):
        assert (out / name).is_file(), name
    StudySummary.model_validate(json.loads((out / "study.json").read_text()))
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<img" in html
    cells = json.loads((out / "study.json").read_text())["cells"]
    assert len(cells) == 6
    probe = [c for c in cells if c["strategy"] == "probe"]
    assert all(c["trainable_params"] < c["total_params"] / 100 for c in probe)
    scratch = [c for c in cells if c["strategy"] == "scratch"]
    assert all(c["train_flops"] > probe[0]["train_flops"] for c in scratch)


def test_rerun_skips_finished_cells(small_study, data_dir):
    out, _ = small_study
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    study(data_dir / "sms_spam.train.csv", test=data_dir / "sms_spam.test.csv",
          budgets="8,32", strategies="scratch,tfidf-logreg,probe", seeds=1, epochs=1, out=out)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps


def test_other_data_in_the_same_folder_is_refused(small_study, data_dir):
    from transferkit.errors import ArtifactError

    out, _ = small_study
    with pytest.raises(ArtifactError, match="--overwrite"):
        study(data_dir / "rotten_tomatoes.test.csv", budgets="8", strategies="probe",
              seeds=1, out=out)


def test_options_for_a_strategy_the_study_does_not_run_are_refused(data_dir, tmp_path):
    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match="contrastiv,.*probe"):
        study(data_dir / "rotten_tomatoes.test.csv", budgets="8", strategies="probe", seeds=1,
              out=tmp_path / "s", strategy_options={"contrastiv": {"loss": "batch_hard"}})
    assert not (tmp_path / "s").exists()


def test_labels_to_reach_interpolates_on_a_log_axis():
    assert labels_to_reach([8, 32, 128], [0.5, 0.7, 0.9], 0.8) == pytest.approx(64)
    assert labels_to_reach([8, 32], [0.5, 0.6], 0.9) is None
    assert labels_to_reach([8, 32], [0.95, 0.97], 0.9) == 8


def test_a_study_runs_every_registered_strategy(tmp_path, tiny_bert_dir):
    """The study asks each strategy what it is (frozen or not, whether --epochs is its
    budget) instead of matching names: every registered one runs, contrastive and protonet
    included, and only the epoch-budgeted ones get the study's epochs."""
    from transferkit.adapt import STRATEGIES

    rows = "".join(f"\"{('cheap offer win', 'see you at lunch', 'the film was long')[i % 3]}"
                   f" {i}\",{'abc'[i % 3]}\n" for i in range(90))
    (tmp_path / "t.csv").write_text("text,label\n" + rows)
    summary = study(tmp_path / "t.csv", backbone=str(tiny_bert_dir), budgets="10",
                    strategies=[*sorted(STRATEGIES), "baselines"], seeds=1, epochs=1,
                    out=tmp_path / "study", strategy_options={"protonet": {"episodes": 8},
                                                              "scratch": {"epochs": 3}})
    assert set(summary["curves"]) == {*STRATEGIES, "tfidf-logreg", "fasttext"}
    cells = {c["strategy"]: c for c in summary["cells"]}
    assert cells["probe"]["accuracy"] == 1.0  # the three texts differ in their first words
    for name, kind in STRATEGIES.items():  # a uniform cost for every strategy that trains
        if not kind.frozen_backbone:
            assert cells[name]["steps"] > 0 and cells[name]["examples_seen"] > 0, name
            assert 0 < cells[name]["trainable_params"] <= cells[name]["total_params"], name
        assert cells[name]["train_flops"] > 0 and cells[name]["peak_rss_scope"] == "cell"
    # scratch's tuning counts: three learning rates and the refit
    assert cells["scratch"]["training_runs"] == 4 and not cells["scratch"]["pretrained"]
    assert set(summary["no_pretraining"]) == {"scratch", "tfidf-logreg", "fasttext"}
    provenance = summary["provenance"]
    assert provenance["plan"]["strategies"] == summary["strategies"]
    assert "torch" in provenance["versions"] and "commit" in provenance
    for name, kind in STRATEGIES.items():
        record = json.loads((tmp_path / "study" / "cells" / f"{name}__10__seed0.json"
                             ).read_text())
        assert record["strategy"] == name and kind.takes_epochs == (name in {
            "full", "partial", "gradual", "bitfit", "lora"})  # scratch stops early, capped


def _toy_texts(path, n=120):
    rows = "".join(f"\"{('cheap offer win', 'see you at lunch', 'the film was long')[i % 3]}"
                   f" {i}\",{'abc'[i % 3]}\n" for i in range(n))
    path.write_text("text,label\n" + rows)
    return path


def test_scratch_recipe_really_trains_and_each_seed_starts_apart(tmp_path, tiny_bert_dir):
    """From random weights, with the learning rate and epochs chosen on a validation part,
    scratch separates three phrases; two seeds start from different weights."""
    from transferkit import Classifier
    from transferkit.adapt import TransferModel, get_strategy
    from transferkit.backbones import load_backbone
    from transferkit.data import load_data

    data = load_data(_toy_texts(tmp_path / "t.csv"), seed=0)
    clf = Classifier(str(tiny_bert_dir), "scratch", seed=0).fit(data)
    assert clf.evaluate(data)["accuracy"] >= 0.95
    recipe = clf.fit_info["recipe"]
    assert recipe["lr"] in [g["lr"] for g in recipe["grid"]] and len(recipe["grid"]) == 3
    starts = []
    for seed in (0, 1, 0):
        strategy = get_strategy("scratch")
        strategy._seed = seed
        model = TransferModel(load_backbone(str(tiny_bert_dir)), ["a", "b"])
        strategy.prepare_backbone(model)
        starts.append(next(model.backbone.parameters()).detach().clone())
    assert not starts[0].equal(starts[1]) and starts[0].equal(starts[2])


def test_compare_budgets_fits_small_budgets_on_the_pristine_backbone(tmp_path, tiny_bert_dir):
    """The small-budget row of a fine-tuned run equals a fresh run at that budget: it must
    not start from the backbone that was already fine-tuned on every label."""
    from transferkit.config import FitConfig
    from transferkit.workflows import fit_run

    train = _toy_texts(tmp_path / "t.csv", 90)
    common = dict(train=str(train), backbone=str(tiny_bert_dir), strategy="full",
                  strategy_options={"epochs": 2, "lr": 1e-3}, seed=0)
    big = fit_run(FitConfig(**common, out=str(tmp_path / "big"), compare_baseline=True,
                            compare_budgets=[4]))
    row = next(r for r in big.comparison if r["name"].endswith("4/class")
               and "full" in r["name"])
    small = fit_run(FitConfig(**common, out=str(tmp_path / "small"), per_class=4))
    assert row["accuracy"] == pytest.approx(small.metrics["accuracy"])
    assert row["n_train"] == 12


def test_study_curve_labels_stay_inside_the_axes():
    """The "90% of best" label sits inside the plot at any budget range (it was placed at the
    linear x-limit before the axis turned logarithmic, and could land outside)."""
    import matplotlib.pyplot as plt

    from transferkit.evaluate.study_report import curve_figure

    for xs in ((8, 32, 128), (8, 32, 128, 512, 4265), (2, 4)):
        curves = {s: {str(x): {"x": x, "accuracy_mean": acc * (1 - 1 / (x + 1)),
                               "accuracy_std": 0.01} for x in xs}
                  for s, acc in (("probe", 0.8), ("scratch", 0.6))}
        fig = curve_figure({"curves": curves, "best_full_score": 0.8, "backbone": "minilm"})
        fig.canvas.draw()
        ax = fig.axes[0]
        box = ax.get_window_extent()
        label = next(t for t in ax.texts if "90% of best" in t.get_text())
        extent = label.get_window_extent()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, (xs, extent, box)
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1, (xs, extent, box)
        plt.close(fig)
