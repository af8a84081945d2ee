"""Few-shot learning on real data: contrastive tuning (SetFit's recipe on our loop) and
prototypical networks (episodic meta-training, new classes from a support set)."""

from __future__ import annotations

import copy
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import run_cli
from weight_helpers import changed_tensors

from transferkit import Classifier, load_data
from transferkit.adapt.contrastive import label_groups
from transferkit.adapt.protonet import (
    adapt_head,
    meta_evaluate,
    meta_train_data,
    prototype_criterion,
    prototype_head,
    softmax_scale,
)
from transferkit.errors import ConfigError
from transferkit.train.sampler import BalancedBatches, Episodes

BASE = ["education", "entertainment", "finance", "game", "politics"]
NOVEL = ["realty", "science", "society", "sports", "stocks"]


def test_balanced_batches_scale_linearly_and_cover_every_example():
    groups = np.repeat(np.arange(50), 64)  # 64 per class x 50 classes
    sampler = BalancedBatches(groups, batch_size=32, steps_per_epoch=100, seed=0)
    tracemalloc.start()
    epoch0 = sampler(0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # all pairs would be 3200^2 / 2 = 5.1M index pairs (>40 MB); the sampler holds queues
    assert peak < 4_000_000
    assert all(len(b) == 32 for b in epoch0)
    for b in epoch0:  # 8 classes x 4 examples: positives and negatives in every batch
        _, counts = np.unique(groups[b], return_counts=True)
        assert len(counts) == 8 and (counts == 4).all()
    drawn = sorted(i for b in epoch0 for i in b)
    assert drawn == list(range(3200))  # every example once before any is reused
    again = BalancedBatches(groups, batch_size=32, steps_per_epoch=100, seed=0)
    assert again(1) == sampler(1) and sampler(1) != epoch0  # deterministic for resume


def test_episodes_layout():
    labels = np.repeat(np.arange(6), 12)
    for episode in Episodes(labels, n_way=5, k_shot=3, n_query=4, episodes=5, seed=1)(0):
        support, query = np.array(episode[:15]), np.array(episode[15:])
        classes = labels[support].reshape(5, 3)
        assert (classes == classes[:, :1]).all() and len(set(classes[:, 0])) == 5
        assert (labels[query].reshape(5, 4) == classes[:, :1]).all()
        assert not set(support) & set(query)


def test_prototype_head_equals_nearest_centroid():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.arange(60) % 4
    head = prototype_head(x, y, 4, scale=10.0)
    cent = np.stack([x[y == k].mean(0) for k in range(4)])
    q = rng.normal(size=(200, 16)).astype(np.float32)
    d2 = ((q[:, None, :] - cent[None]) ** 2).sum(-1)
    with torch.no_grad():
        logits = head(torch.from_numpy(q)).numpy()
    assert (logits.argmax(1) == d2.argmin(1)).all()
    ref = torch.softmax(torch.from_numpy(-10.0 * d2), -1).numpy()
    assert np.allclose(torch.softmax(torch.from_numpy(logits), -1).numpy(), ref, atol=1e-4)
    # the scale is meant for unit norm: larger features get it over their mean squared norm
    assert softmax_scale(x, 10.0) == pytest.approx(10.0, rel=1e-5)
    assert softmax_scale(30 * x, 10.0) == pytest.approx(10.0 / 900, rel=1e-5)


def test_fo_proto_maml_steps_are_gradient_descent_and_first_order():
    rng = np.random.default_rng(0)
    n, k, q, steps, lr = 4, 3, 2, 5, 3.0
    centers = rng.normal(size=(n, 16))
    emb = np.concatenate([centers.repeat(m, 0) + 2 * rng.normal(size=(n * m, 16)) for m in (k, q)])
    emb = torch.nn.functional.normalize(torch.tensor(emb, dtype=torch.float32), dim=-1)
    shots, target = torch.arange(n).repeat_interleave(k), torch.arange(n).repeat_interleave(q)

    def head_of(support):  # the prototype head, as a function of the support embeddings
        protos = support.reshape(n, k, -1).mean(1)
        return 20 * protos, -10 * protos.pow(2).sum(1)

    def descend(w, b, support, create_graph=False):  # plain autograd gradient descent
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(support @ w.T + b, shots)
            gw, gb = torch.autograd.grad(loss, (w, b), create_graph=create_graph)
            w, b = w - lr * gw, b - lr * gb  # unit-norm features: lr is used as given
        return w, b

    support = emb[:n * k]
    w0, b0 = head_of(support)
    d_w, d_b = adapt_head(w0, b0, support, shots, steps, lr)
    w_ref, b_ref = descend(w0.clone().requires_grad_(), b0.clone().requires_grad_(), support)
    assert torch.allclose(w0 + d_w, w_ref, atol=1e-5) and torch.allclose(b0 + d_b, b_ref,
                                                                          atol=1e-5)
    ce = torch.nn.functional.cross_entropy
    assert ce(support @ (w0 + d_w).T + b0 + d_b, shots) < ce(support @ w0.T + b0, shots)
    assert not d_w.requires_grad

    def query_loss(w, b, x):
        return ce(x[n * k:] @ w.T + b, target)

    x = emb.clone().requires_grad_()
    prototype_criterion(n, k, q, 10.0, steps, lr)(x, target).backward()
    ours = x.grad
    x = emb.clone().requires_grad_()  # first order: the steps' changes are constants
    w0, b0 = head_of(x[:n * k])
    w, b = descend(w0.detach().requires_grad_(), b0.detach().requires_grad_(), x[:n * k].detach())
    query_loss(w0 + (w - w0).detach(), b0 + (b - b0).detach(), x).backward()
    assert (ours - x.grad).norm() < 1e-4 * ours.norm() and ours[:n * k].abs().sum() > 0
    x = emb.clone().requires_grad_()  # second order (through the steps) differs
    w, b = descend(*head_of(x[:n * k]), x[:n * k], create_graph=True)
    query_loss(w, b, x).backward()
    assert (ours - x.grad).norm() > 0.01 * ours.norm()  # 2.7% here, against < 0.01%
    # the fitted head takes the same steps on its training features, lowering their loss
    y = shots.numpy()
    plain, adapted = (prototype_head(support.numpy(), y, n, 10.0, s, lr) for s in (0, steps))
    with torch.no_grad():
        assert ce(adapted(support), shots) < ce(plain(support), shots)


def test_contrastive_beats_probe_at_8_per_class(data_dir, minilm):
    """Mean of 3 seeds on a fixed 600-text subset of the rotten_tomatoes test split."""
    train, test = data_dir / "rotten_tomatoes.train.csv", data_dir / "rotten_tomatoes.test.csv"
    subset = None
    probe, contrastive = [], []
    for seed in range(3):
        data = load_data(train, test=test, per_class=8, seed=seed)
        if subset is None:
            subset = data.test.subset(np.random.default_rng(0).permutation(len(data.test))[:600])
        data.test = subset
        probe.append(Classifier(minilm, "probe", seed=seed).fit(data).evaluate(data)["accuracy"])
        clf = Classifier(copy.deepcopy(minilm), "contrastive", seed=seed, cache=False).fit(data)
        contrastive.append(clf.evaluate(data)["accuracy"])
        # 20 passes' worth of full 32-example batches: 10 whole-set steps of 16 examples
        assert clf.fit_info["phase1"]["steps"] == 10
        # the text default keeps the word embeddings as pretrained; the layers tune
        changed = changed_tensors(minilm.state_dict(), clf.model.backbone)
        assert not any("embeddings" in name for name in changed)
        assert any("layer.0." in name for name in changed)
    print(f"probe {np.mean(probe):.4f} {probe}, contrastive {np.mean(contrastive):.4f} "
          f"{contrastive}")
    assert np.mean(contrastive) > np.mean(probe)


@pytest.fixture(scope="module")
def sms_8_per_class(data_dir):
    return load_data(data_dir / "sms_spam.train.csv", test=data_dir / "sms_spam.test.csv",
                     per_class=8, seed=0)


def test_contrastive_frozen_layers_run_once(sms_8_per_class, minilm):
    """``frozen_groups=3``: embeddings and layers 0-1 stay as pretrained, and those two layers
    are computed once (the prefix cache) instead of at every step; the rest tunes."""
    data = sms_8_per_class
    clf = Classifier(copy.deepcopy(minilm), "contrastive", seed=0, cache=False,
                     strategy_options={"frozen_groups": 3, "max_steps": 4}).fit(data)
    phase1 = clf.fit_info["phase1"]
    assert phase1["frozen_groups"] == 3 and phase1["prefix_cached_layers"] == 2
    changed = changed_tensors(minilm.state_dict(), clf.model.backbone)
    assert not any("embeddings" in name for name in changed)
    assert {name.split("layer.")[1].split(".")[0] for name in changed} == {"2", "3", "4", "5"}
    with pytest.raises(ConfigError, match="at most 6"):
        Classifier(copy.deepcopy(minilm), "contrastive", cache=False,
                   strategy_options={"frozen_groups": 7, "max_steps": 1}).fit(data)


def test_contrastive_end_to_end_tunes_body_and_head(sms_8_per_class, minilm):
    """``end_to_end=1``: after phase 1 (embeddings frozen), one epoch of cross-entropy on body
    and head; only that phase can move the embeddings, so their change shows it ran."""
    data = sms_8_per_class
    clf = Classifier(copy.deepcopy(minilm), "contrastive", seed=0, cache=False,
                     strategy_options={"max_steps": 2, "end_to_end": 1}).fit(data)
    assert clf.fit_info["phase1"]["steps"] == 2
    assert clf.fit_info["head"]["end_to_end"]["steps"] == 1  # 16 examples, batches of 32
    changed = changed_tensors(minilm.state_dict(), clf.model.backbone)
    assert any("embeddings" in name for name in changed)
    assert clf.evaluate(data)["accuracy"] > 0.9  # majority class: 0.87
    with pytest.raises(ConfigError, match="logreg probe"):
        Classifier(minilm, "contrastive", strategy_options={"end_to_end": 1, "head": "linear"})


def test_multilabel_contrastive_with_early_stopping(data_dir, minilm, tmp_path):
    items = pd.read_csv(data_dir / "movielens100k.items.csv", keep_default_na=False)
    items = items[items.genres != ""].sample(400, random_state=0)
    frame = items.rename(columns={"title": "text", "genres": "label"})[["text", "label"]]
    frame[:240].to_csv(tmp_path / "train.csv", index=False)
    frame[240:320].to_csv(tmp_path / "valid.csv", index=False)
    frame[320:].to_csv(tmp_path / "test.csv", index=False)
    data = load_data(tmp_path / "train.csv", valid=tmp_path / "valid.csv",
                     test=tmp_path / "test.csv", label_delimiter="|", seed=0)
    groups, _ = label_groups(data.train)
    sets = data.train.labels
    assert all((groups[i] == groups[j]) == (sets[i] == sets[j])
               for i in range(0, 240, 7) for j in range(0, 240, 11))
    # a learning rate far too high: validation centroid accuracy falls and phase 1 must stop
    clf = Classifier(copy.deepcopy(minilm), "contrastive", seed=0, cache=False,
                     strategy_options={"lr": 3e-3, "epochs": 8, "eval_every": 2,
                                       "patience": 2, "warmup_ratio": 0.0}).fit(data)
    phase1 = clf.fit_info["phase1"]
    assert phase1["n_valid"] == len(data.valid) > 0
    assert phase1["stopped_early"] and phase1["steps"] < phase1["planned_steps"]
    assert phase1["best_valid"] is not None  # the best weights (by centroid accuracy) kept
    assert clf.model.multilabel and clf.model.thresholds is not None
    metrics = clf.evaluate(data)
    assert 0 < metrics["micro_f1"] <= 1
    assert all(set(p.split("|")) <= set(data.classes) for p in clf.predict(["Heat (1995)"])
               if p)


@pytest.fixture(scope="module")
def protonet_run(data_dir, tmp_path_factory):
    """MiniLM meta-trained on 5 THUCNews classes (200 headlines each, 40 episodes)."""
    from transferkit.backbones import load_backbone

    data = meta_train_data(str(data_dir / "thucnews_titles.train.csv"), BASE, per_class=200)
    clf = Classifier(load_backbone("minilm"), "protonet", seed=0,
                     strategy_options={"episodes": 40}).fit(data)
    out = tmp_path_factory.mktemp("proto") / "run"
    clf.save(out)
    return clf, out


def test_protonet_beats_raw_prototypes_on_new_classes(data_dir, minilm, protonet_run):
    from transferkit.adapt.protonet import read_labelled

    clf, _ = protonet_run
    assert clf.classes == BASE and clf.fit_info["meta_train"]["steps"] == 40
    novel = read_labelled(str(data_dir / "thucnews_titles.test.csv"), NOVEL, split="test")
    labels = np.array([NOVEL.index(y) for y in novel.labels])
    raw = Classifier(minilm, "probe")
    from transferkit.adapt import TransferModel

    raw_feats = raw.context.features(TransferModel(minilm, NOVEL), novel, "raw")
    tuned_feats = clf.context.features(clf.model, novel, "tuned")
    before = meta_evaluate(raw_feats, labels, NOVEL, n_way=5, k_shot=5, episodes=600)
    after = meta_evaluate(tuned_feats, labels, NOVEL, n_way=5, k_shot=5, episodes=600)
    print(f"5-way 5-shot on novel classes: raw {before['accuracy']:.4f} ± {before['ci95']:.4f}, "
          f"meta-trained {after['accuracy']:.4f} ± {after['ci95']:.4f}")
    assert before["episodes"] == 600 and before["ci95"] > 0
    assert after["accuracy"] > before["accuracy"]


def test_predict_with_support_of_new_classes(data_dir, protonet_run, tmp_path):
    _, run = protonet_run
    train = pd.read_csv(data_dir / "thucnews_titles.train.csv", keep_default_na=False)
    test = pd.read_csv(data_dir / "thucnews_titles.test.csv", keep_default_na=False)
    support = pd.concat([train[train.label == c].head(10) for c in NOVEL])
    queries = pd.concat([test[test.label == c].head(40) for c in NOVEL])
    support.to_csv(tmp_path / "support.csv", index=False)
    queries.to_csv(tmp_path / "queries.csv", index=False)
    done = run_cli("predict", run, tmp_path / "queries.csv", "--output", tmp_path / "p.csv",
                   "--support", tmp_path / "support.csv")
    assert done.returncode == 0, done.stderr
    pred = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert {c for c in pred.columns if c.startswith("prob_")} == {f"prob_{c}" for c in NOVEL}
    accuracy = float((pred.label == pred.true_label).mean())
    print(f"--support: accuracy {accuracy:.3f} on 200 headlines of 5 new classes")
    assert accuracy > 0.3  # chance: 0.2


def test_support_can_keep_the_known_classes(protonet_run, data_dir):
    clf, _ = protonet_run
    train = pd.read_csv(data_dir / "thucnews_titles.train.csv", keep_default_na=False)
    support = train[train.label.isin(["sports", "stocks"])].groupby("label").head(5)
    from transferkit.data.examples import Examples

    ex = Examples(support.text.tolist(), support.label.tolist(), [""] * 10, "text")
    both = clf.with_support(ex, keep_classes=True)
    assert both.classes == BASE + ["sports", "stocks"]
    assert torch.equal(both.model.head.weight[:5], clf.model.head.weight)
    assert clf.with_support(ex).classes == ["sports", "stocks"]
    # a fo-Proto-MAML run adapts the support's prototype head by its inner steps
    adapted = copy.copy(clf)
    adapted.fit_info = {**clf.fit_info, "inner_steps": 10, "inner_lr": 3.0}
    y = torch.tensor([["sports", "stocks"].index(label) for label in ex.labels])
    losses = []
    for model in (clf, adapted):
        support_clf = model.with_support(ex)
        x = torch.from_numpy(support_clf.context.features(support_clf.model, ex, "support"))
        with torch.no_grad():
            losses.append(torch.nn.functional.cross_entropy(support_clf.model.head(x), y))
    assert losses[1] < losses[0]


def test_fo_proto_maml_from_the_command_line(data_dir, minilm, tmp_path):
    """meta-train --inner-steps (first-order MAML for the head) on 40 headlines of each base
    class (4 episodes), then meta-eval on 40 of each new class: above raw-feature prototypes
    by more than the confidence interval."""
    import json

    from transferkit.adapt import TransferModel
    from transferkit.adapt.protonet import read_labelled

    train = pd.read_csv(data_dir / "thucnews_titles.train.csv", keep_default_na=False)
    test = pd.read_csv(data_dir / "thucnews_titles.test.csv", keep_default_na=False)
    train[train.label.isin(BASE)].groupby("label").head(40).to_csv(tmp_path / "base.csv",
                                                                   index=False)
    test[test.label.isin(NOVEL)].groupby("label").head(40).to_csv(tmp_path / "new.csv",
                                                                  index=False)

    def cli(*args):
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run = tmp_path / "run"
    cli("meta-train", tmp_path / "base.csv", "--out", run, "--episodes", 4, "--lr", 1e-4,
        "--inner-steps", 10)
    shown = cli("meta-eval", run, tmp_path / "new.csv", "--output", tmp_path / "r.json")
    result = json.loads((tmp_path / "r.json").read_text())
    assert "after 10 steps on each support" in " ".join(shown.split())  # the run's own steps
    assert result["inner_steps"] == 10 and result["inner_lr"] == 3.0
    assert result["episodes"] == 600 and result["classes"] == NOVEL
    novel = read_labelled(str(tmp_path / "new.csv"))
    raw = Classifier(minilm, "probe").context.features(TransferModel(minilm, NOVEL), novel, "raw")
    before = meta_evaluate(raw, np.array([NOVEL.index(y) for y in novel.labels]), NOVEL)
    print(f"fo-Proto-MAML 5-way 5-shot on new classes: {result['accuracy']:.4f} ± "
          f"{result['ci95']:.4f}, raw prototypes {before['accuracy']:.4f}")
    assert result["accuracy"] > before["accuracy"] + result["ci95"]


def test_too_few_classes_for_episodes_is_a_clear_error(data_dir, minilm):
    data = meta_train_data(str(data_dir / "thucnews_titles.train.csv"), BASE[:3], per_class=20)
    clf = Classifier(minilm, "protonet", strategy_options={"n_way": 5})
    with pytest.raises(ConfigError, match=r"5-way 5-shot .* need at least 5 classes.*3 of the 3"):
        clf.fit(data)
    labels = np.repeat(np.arange(3), 20)
    with pytest.raises(ConfigError, match="Lower --n-way"):
        meta_evaluate(np.zeros((60, 4), np.float32), labels, ["a", "b", "c"], n_way=5)
    with pytest.raises(ConfigError, match="--inner-steps must be >= 0"):
        meta_evaluate(np.zeros((60, 4), np.float32), labels, ["a", "b", "c"], n_way=3,
                      inner_steps=-1)
    with pytest.raises(ConfigError, match="inner_lr > 0"):
        Classifier(minilm, "protonet", strategy_options={"inner_steps": 5, "inner_lr": 0})
