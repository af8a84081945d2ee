"""Recommendation: metrics by hand, the split, validation messages, the fitted run (cold items
by text, predict = evaluation, new items), the CLI, and one real MovieLens run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from recommend_helpers import MOVIELENS, taste_of, tastes_files, tastes_run, write_tastes

from transferkit.errors import ArtifactError, DataError
from transferkit.recommend.interactions import read_recommendation_data
from transferkit.recommend.metrics import bootstrap_ci, evaluate_segment, user_metrics
from transferkit.recommend.recommender import Recommender
from transferkit.recommend.split import split_rows


# -- metrics ----------------------------------------------------------------------------------
def test_metrics_match_hand_computed_values():
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    relevant = np.array([False, True, False, True])
    m, order = user_metrics(scores, relevant, np.zeros(4), ks=(2, 4))
    assert order.tolist() == [0, 1, 2, 3]
    assert m["recall@2"] == pytest.approx(0.5)
    # one hit at rank 2: DCG 1/log2(3); ideal: hits at ranks 1 and 2
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["ndcg@4"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(5))
                                        / (1 + 1 / np.log2(3)))
    # relevant 0.8 beats 0.7 only; 0.1 beats nothing: 1 of 4 pairs
    assert m["auc"] == pytest.approx(0.25)


def test_equal_scores_are_chance_not_file_order():
    m, _ = user_metrics(np.zeros(5), np.array([True, False, False, False, False]),
                        np.array([0.5, 0.1, 0.2, 0.3, 0.4]), ks=(1,))
    assert m["auc"] == 0.5  # ties count one half
    assert m["recall@1"] == 0.0  # the tie key, not the index, put item 1 first
    # every candidate scored alike, over many users: recall@1 near 1/candidates
    n_users, n_items = 2000, 10
    result = evaluate_segment(np.zeros((n_users, n_items)), np.arange(n_users),
                              np.zeros(n_users, dtype=np.int64), np.arange(n_items),
                              [np.array([], dtype=np.int64)] * n_users, seed=0, ks=(1,))
    assert result.values["recall@1"].mean() == pytest.approx(0.1, abs=0.02)
    assert result.coverage["coverage@1"] == 1.0


def test_bootstrap_interval_holds_the_mean():
    values = np.random.default_rng(0).random(500)
    lo, hi = bootstrap_ci(values, seed=0)
    assert lo < values.mean() < hi and hi - lo < 0.1


# -- the split ----------------------------------------------------------------------------------
def test_split_never_leaks_a_cold_item_and_holds_out_the_latest():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 50, 3000)
    items = rng.integers(0, 200, 3000)
    times = rng.random(3000) * 1e6
    split = split_rows(users, items, times, cold_share=0.2, test_share=0.25, seed=3)
    assert not np.isin(items[split.train], split.cold_items).any()
    assert not np.isin(items[split.warm_test], split.cold_items).any()
    assert np.isin(items[split.cold_test], split.cold_items).all()
    assert len(split.cold_items) == round(0.2 * len(np.unique(items)))
    assert sorted([*split.train, *split.warm_test, *split.cold_test]) == list(range(3000))
    for u in np.unique(users[split.warm_test]):  # temporal: test after training, per user
        mine = split.train[users[split.train] == u]
        assert times[mine].max() <= times[split.warm_test[users[split.warm_test] == u]].min()
    again = split_rows(users, items, times, cold_share=0.2, test_share=0.25, seed=3)
    assert np.array_equal(again.cold_items, split.cold_items)  # seeded


# -- reading and validation ----------------------------------------------------------------------
def test_bad_rows_are_named_by_file_line_and_field(tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\na,Space film\nb,\nc,Love story\na,Again\n"
                     + "".join(f"x{i},Film {i}\n" for i in range(6)))
    inter = tmp_path / "ratings.csv"
    inter.write_text("user_id,item_id,rating\nu1,a,5\nu1,zz,4\n,a,3\nu2,c,x\nu1,a,2\n"
                     + "".join(f"u{i},c,4\n" for i in range(3, 20)))
    data, catalogue, report = read_recommendation_data(inter, items)
    assert catalogue.ids[:2] == ["a", "c"] and len(catalogue) == 8
    lines = "\n".join(report.lines())
    assert "items.csv line 3 (item_id b: title all empty)" in lines  # item without text
    assert "items.csv line 5 (item_id a)" in lines  # duplicate item id
    assert "ratings.csv line 3 (item_id zz)" in lines  # unknown item
    assert "ratings.csv line 4 (empty user_id)" in lines  # missing id
    assert "ratings.csv line 5 (rating 'x')" in lines  # not a number
    assert "ratings.csv line 6 (user u1, item a: first at line 2)" in lines  # duplicate row
    assert len(data) == 18
    with pytest.raises(DataError, match="--strict is on"):
        read_recommendation_data(inter, items, strict=True)
    with pytest.raises(DataError, match=r"ratings.csv: 3 of 22 rows are unusable"):
        read_recommendation_data(inter, items, max_bad_fraction=0.1)
    with pytest.raises(DataError, match="no column named 'who'.*--user-column"):
        read_recommendation_data(inter, items, user_column="who")


# -- a fitted run ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run():
    return tastes_run()


def test_cold_items_go_to_users_whose_history_is_similar_in_text(run):
    rec = run.recommender
    cold_items = [i for i in range(len(rec.item_ids))
                  if rec.seen[:, i].nnz == 0]  # no training interactions: placed from text
    assert {taste_of(rec.item_ids[i]) for i in cold_items} == {"scifi", "romance"}
    for model in ("hybrid", "content"):
        right = 0
        for user in rec.user_ids:
            scores = rec.scores(user, model)
            best = max(cold_items, key=lambda i: scores[i])
            mine = "scifi" if int(user[1:]) % 2 == 0 else "romance"
            right += taste_of(rec.item_ids[best]) == mine
        assert right / len(rec.user_ids) >= 0.9, model
    res = run.results
    assert res["hybrid"]["cold"]["auc"]["mean"] > 0.75  # chance: 0.5
    assert res["hybrid"]["cold"]["ndcg@10"]["mean"] > res["chance"]["cold"]["ndcg@10"]["mean"]
    assert res["als"]["cold"]["auc"]["mean"] == 0.5  # ID-only: cold items are all alike


def test_predict_reproduces_the_evaluation(run):
    from transferkit.recommend.training import evaluate_models

    rec = Recommender.load(run.out)
    interactions, items = tastes_files()
    data, catalogue, _ = read_recommendation_data(interactions, items,
                                                  item_text=["title", "genres"])
    split = split_rows(data.users, data.items, data.times, cold_share=0.25, test_share=0.2,
                       seed=0)
    again = evaluate_models(_as_trained(rec), data, split, seed=0)
    saved = json.loads((run.out / "metrics.json").read_text())
    for model in rec.models:
        for seg in ("warm", "cold"):
            assert again[model][seg]["ndcg@10"]["mean"] == pytest.approx(
                saved[model][seg]["ndcg@10"]["mean"], abs=1e-9)
    user = rec.user_ids[0]
    top = rec.recommend(user, k=5)
    scores = rec.scores(user)
    assert [t["score"] for t in top] == pytest.approx(sorted(
        np.delete(scores, rec.seen[0].indices), reverse=True)[:5])
    assert not {t["item"] for t in top} & {rec.item_ids[i] for i in rec.seen[0].indices}


def _as_trained(rec: Recommender):
    from transferkit.recommend.training import Trained

    return Trained(rec.models, rec.seen)


def test_clear_messages_for_unknown_user_empty_history_and_model(run, tmp_path):
    from transferkit.workflows.recommend import recommend_fit

    with pytest.raises(DataError, match=r"Unknown user 'u1000' \(did you mean 'u100?'"):
        run.recommender.recommend("u1000")
    # a user whose only interaction is with a cold item has no training history
    inter, items = write_tastes(tmp_path / "d")
    data, _, _ = read_recommendation_data(inter, items)
    cold = split_rows(data.users, data.items, data.times, cold_share=0.25, test_share=0.2,
                      seed=0).cold_items
    frame = pd.read_csv(inter)
    frame.loc[len(frame)] = {"user_id": "lonely", "item_id": pd.read_csv(items).item_id[cold[0]],
                             "rating": 5, "timestamp": 9e9}
    frame.to_csv(inter, index=False)
    fitted = recommend_fit(inter, items, out=tmp_path / "r", cold_share=0.25, test_share=0.2,
                           models=["popularity"], tune="none", seed=0)
    with pytest.raises(DataError, match="User 'lonely' has an empty history"):
        fitted.recommender.recommend("lonely")
    with pytest.raises(DataError, match="Model 'als' is not in this run"):
        fitted.recommender.recommend("u0", model="als")
    with pytest.raises(ArtifactError, match="is not a run of `transferkit recommend fit`"):
        Recommender.load(tmp_path)


def test_new_items_are_placed_from_text_without_retraining(run, tmp_path):
    new = tmp_path / "new.csv"
    new.write_text("item_id,title,genres\nn1,Comet Wars: a space battle among the stars,"
                   "Sci-Fi|Action\nn2,The Wedding Kiss: a tender love story,Romance|Comedy\n")
    before = (run.out / "vectors.safetensors").read_bytes()
    rec = Recommender.load(run.out).with_new_items(new)
    for user in ("u0", "u2", "u1", "u3"):
        top = rec.recommend(user, k=1, only_new=True)[0]["item"]
        assert top == ("n1" if int(user[1:]) % 2 == 0 else "n2"), user
    assert (run.out / "vectors.safetensors").read_bytes() == before
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,title,genres\nn3,,\ns0,Old film,Drama\n")
    with pytest.raises(DataError, match=r"bad.csv line 2 \(item_id n3: title, genres all empty"):
        Recommender.load(run.out).with_new_items(bad)
    bad.write_text("item_id,title,genres\ns0,Old film,Drama\n")
    with pytest.raises(DataError, match="bad.csv line 2: item 's0' is already in the run"):
        Recommender.load(run.out).with_new_items(bad)


def test_cli_fit_predict_and_a_usage_error(run, tmp_path):
    interactions, items = tastes_files()
    out = tmp_path / "cli-run"
    done = subprocess.run(
        [sys.executable, "-m", "transferkit", "recommend", "fit", str(interactions),
         "--items", str(items), "--out", str(out), "--tune", "none", "--models",
         "popularity,hybrid"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "cold NDCG@10" in done.stdout and (out / "report.html").is_file()
    csv = tmp_path / "recs.csv"
    done = subprocess.run(
        [sys.executable, "-m", "transferkit", "recommend", "predict", str(out), "--user", "u0",
         "--user", "u1", "--k", "3", "--output", str(csv)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(csv, dtype=str)
    assert table.user.tolist() == ["u0"] * 3 + ["u1"] * 3
    rec = Recommender.load(out)
    assert table.item[:3].tolist() == [r["item"] for r in rec.recommend("u0", k=3)]
    done = subprocess.run(
        [sys.executable, "-m", "transferkit", "recommend", "predict", str(out), "--user",
         "nobody"], capture_output=True, text=True)
    assert done.returncode == 2 and "Unknown user 'nobody'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not (MOVIELENS / "movielens100k.ratings.csv").is_file(),
                    reason="MovieLens-100K is read from ../shared/data")
def test_movielens_hybrid_far_above_chance_on_cold_and_level_with_als_on_warm(tmp_path):
    from transferkit.workflows.recommend import recommend_fit

    r = recommend_fit(MOVIELENS / "movielens100k.ratings.csv",
                      MOVIELENS / "movielens100k.items.csv", out=tmp_path / "ml",
                      item_text="title,genres", tune="none", seed=0).results
    assert r["hybrid"]["cold"]["ndcg@10"]["mean"] > 3 * r["chance"]["cold"]["ndcg@10"]["mean"]
    assert r["popularity"]["cold"]["auc"]["mean"] == 0.5
    assert r["hybrid"]["warm"]["ndcg@10"]["mean"] >= r["als"]["warm"]["ndcg@10"]["mean"] - 0.01
