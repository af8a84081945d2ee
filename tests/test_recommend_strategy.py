"""``recommend fit --strategy``: the text encoder fine-tuned on the interactions (a tiny
random BERT, two epochs: plumbing, not quality), saved with the run and used for new items;
and the strategy names checked against the registry."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from recommend_helpers import tastes_files, write_tastes
from safetensors.numpy import load_file

from transferkit.errors import ConfigError
from transferkit.recommend.recommender import BACKBONE_DIR, Recommender


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_bert_dir):
    from transferkit.workflows.recommend import recommend_fit

    folder = tmp_path_factory.mktemp("tuned")
    interactions, items = write_tastes(folder / "data")
    # restore_best off: with early stopping on, a random encoder may end where it began
    result = recommend_fit(interactions, items, out=folder / "run", backbone=str(tiny_bert_dir),
                           item_text="title,genres", models=["als", "content", "hybrid"],
                           cold_share=0.25, test_share=0.2, seed=0, tune="none",
                           strategy="full", strategy_options={"epochs": 2,
                                                              "restore_best": False})
    return result, interactions, items


def test_fine_tuned_encoder_is_saved_and_a_reloaded_run_reproduces_its_scores(
        tuned, tiny_bert_dir, tmp_path):
    from transferkit.backbones import load_backbone
    from transferkit.recommend.interactions import read_recommendation_data
    from transferkit.recommend.split import split_rows
    from transferkit.recommend.training import Trained, evaluate_models

    result, interactions, items = tuned
    out = result.out
    encoder = result.seconds["encoder"]
    assert encoder["strategy"] == "full" and encoder["steps"] > 0
    assert [e["step"] for e in encoder["history"]][0] == 0  # early stopping's scores logged
    # the weights changed, and the run folder holds the changed ones (safetensors)
    before = load_file(str(tiny_bert_dir / "model.safetensors"))
    after = load_file(str(out / BACKBONE_DIR / "model.safetensors"))
    changed = [k for k in after if not np.array_equal(before[k], after[k])]
    assert changed, "fine-tuning left every weight as it was"
    config = json.loads((out / "config.json").read_text())
    assert config["strategy"] == "full" and config["strategy_options"]["epochs"] == 2
    assert config["backbone"]["fingerprint"] != load_backbone(str(tiny_bert_dir)).fingerprint
    assert (out / "train_log.jsonl").is_file()

    # a reloaded run scores exactly what the evaluation measured
    rec = Recommender.load(out)
    data, catalogue, _ = read_recommendation_data(interactions, items,
                                                  item_text=["title", "genres"])
    split = split_rows(data.users, data.items, data.times, cold_share=0.25, test_share=0.2,
                       seed=0)
    again = evaluate_models(Trained(rec.models, rec.seen), data, split, seed=0)
    saved = json.loads((out / "metrics.json").read_text())
    for model in rec.models:
        for seg in ("warm", "cold"):
            assert again[model][seg]["ndcg@10"]["mean"] == pytest.approx(
                saved[model][seg]["ndcg@10"]["mean"], abs=1e-9)

    # new items are embedded by the tuned encoder: a new item with a cold item's text lands
    # exactly where the fit placed that cold item
    cold = int(split.cold_items[0])
    new = tmp_path / "new.csv"
    row = pd.read_csv(items).set_index("item_id").loc[catalogue.ids[cold]]
    pd.DataFrame([{"item_id": "new1", "title": row.title, "genres": row.genres}]).to_csv(
        new, index=False)
    grown = rec.with_new_items(new)
    assert grown.embeddings[-1] == pytest.approx(rec.embeddings[cold], abs=1e-5)
    assert grown.models["hybrid"].items[-1] == pytest.approx(rec.models["hybrid"].items[cold],
                                                             abs=1e-5)


def test_unknown_or_inapplicable_strategy_is_a_clear_error(tmp_path):
    from transferkit.workflows.recommend import recommend_fit

    interactions, items = tastes_files()
    with pytest.raises(ConfigError, match=r"Unknown strategy 'parital' \(did you mean "
                       r"'partial'\?\)\. Choose from: probe, bitfit, full, gradual, lora, "
                       r"partial"):
        recommend_fit(interactions, items, out=tmp_path / "a", strategy="parital")
    with pytest.raises(ConfigError, match="--strategy protonet cannot tune .* no classes"):
        recommend_fit(interactions, items, out=tmp_path / "b", strategy="protonet")
    with pytest.raises(ConfigError, match="Unknown option.*'partial': epoch"):
        recommend_fit(interactions, items, out=tmp_path / "c", strategy="partial",
                      strategy_options={"epoch": 3})
    with pytest.raises(ConfigError, match="add hybrid to --models"):
        recommend_fit(interactions, items, out=tmp_path / "d", strategy="lora",
                      models=["als", "content"])
    assert not any(tmp_path.iterdir())  # refused before anything was written
    done = subprocess.run(
        [sys.executable, "-m", "transferkit", "recommend", "fit", str(interactions), "--items",
         str(items), "--out", str(tmp_path / "cli"), "--strategy", "nope"],
        capture_output=True, text=True)
    assert done.returncode == 2 and "Unknown strategy 'nope'" in done.stderr
    assert "probe, bitfit, full, gradual, lora, partial" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "transferkit", "recommend", "fit", str(interactions), "--items",
         str(items), "--out", str(tmp_path / "cli"), "--strategy", "partial", "-o", "epoch=3"],
        capture_output=True, text=True)
    assert done.returncode == 2 and "Unknown option(s) for strategy 'partial': epoch" in \
        done.stderr and "Traceback" not in done.stderr
