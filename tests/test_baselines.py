"""The no-pretraining side of every comparison: the from-scratch recipe (a learning rate and
an epoch count chosen inside the budget, then a refit) and the baselines built on it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from transferkit.data.examples import Dataset, Examples
from transferkit.evaluate.baselines import (
    augment_images,
    classic_baseline,
    fasttext_baseline,
    hashed_ngrams,
    no_pretraining_baselines,
    small_cnn_baseline,
)
from transferkit.train.batches import TensorBatches
from transferkit.train.recipe import carve_validation, fit_from_scratch

COST_KEYS = {"examples_seen", "steps", "examples_evaluated", "trainable_params",
             "total_params", "train_flops", "wall_seconds"}


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return rng.normal(size=(n, 8)).astype(np.float32) + np.eye(3, 8, dtype=np.float32)[y] * 4, y


def _fit_blobs(seed: int, lrs=(1e-3, 3e-2)):
    x, y = _blobs(90, 0)
    return fit_from_scratch(lambda: nn.Linear(8, 3),
                            lambda idx: TensorBatches(x[idx], y[idx], 3), y, lrs=lrs,
                            max_epochs=8, patience=2, seed=seed, flops_per_example=48.0)


def test_recipe_learns_a_separable_task_with_a_rate_from_its_grid():
    fitted = _fit_blobs(0)
    x, y = _blobs(300, 1)
    with torch.no_grad():
        acc = (fitted.model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert acc > 0.95
    info, cost = fitted.info, fitted.cost
    assert info["lr"] == 3e-2 and fitted.chosen == {"lr": info["lr"],
                                                             "epochs": info["epochs"]}
    assert info["validation"] == "held-out" and (info["n_tune_train"], info["n_valid"]) == (72, 18)
    assert [g["lr"] for g in info["grid"]] == [1e-3, 3e-2]
    # the grid's runs and the refit are all paid for
    assert cost["examples_seen"] == 72 * sum(g["epochs_run"] for g in info["grid"]) \
        + 90 * info["epochs"]
    assert cost["steps"] > 0 and set(cost) == COST_KEYS
    assert cost["trainable_params"] == cost["total_params"] == 27
    assert cost["train_flops"] == 48.0 * (3 * cost["examples_seen"] + cost["examples_evaluated"])


def test_recipe_is_reproducible_by_seed():
    a, b, c = _fit_blobs(0), _fit_blobs(0), _fit_blobs(5)
    assert a.info == b.info
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert not torch.equal(a.model.weight, c.model.weight)  # another seed, another model


def test_validation_is_carved_per_class_and_never_takes_a_last_example():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 2 + [3])
    carve = carve_validation(labels, 0.2, seed=0)
    assert np.bincount(labels[carve.valid_idx], minlength=4).tolist() == [10, 2, 1, 0]
    assert sorted([*carve.train_idx, *carve.valid_idx]) == list(range(len(labels)))
    assert carve.held_out and "3" in carve.note
    assert carve_validation(labels, 0.2, seed=1).valid_idx.tolist() != carve.valid_idx.tolist()
    alone = carve_validation(np.array([0, 1, 2]), 0.2)  # one example a class: a copy
    assert not alone.held_out and alone.valid_idx.tolist() == alone.train_idx.tolist() == [0, 1, 2]
    assert "copy" in alone.note


def test_hashed_ngrams_are_stable_lowercased_words_and_bigrams():
    ids = hashed_ngrams("Good  movie!", 2 ** 18)
    assert len(ids) == 3 and ids.tolist() == hashed_ngrams("good movie", 2 ** 18).tolist()
    assert ids.min() >= 1 and ids.max() <= 2 ** 18  # 0 is the padding id
    assert len(hashed_ngrams("电影很好", 1024)) == 4 + 3  # CJK: characters are words
    assert len(hashed_ngrams("", 16)) == 0


def _examples(inputs, labels, modality: str) -> Examples:
    return Examples(inputs=list(inputs), labels=list(labels),
                    origins=[f"row {i}" for i in range(len(labels))], modality=modality)


def _texts(per_class: int, n_test: int, seed: int = 0) -> Dataset:
    """Two classes told apart by three cue words of each class's own, in sentences padded
    with words both classes share."""
    rng = np.random.default_rng(seed)
    cue = {"pos": [f"good{i}" for i in range(6)], "neg": [f"bad{i}" for i in range(6)]}
    shared = [f"the{i}" for i in range(30)]

    def split(n: int) -> Examples:
        labels = ["pos", "neg"] * n
        texts = [" ".join([*rng.choice(cue[y], 3), *rng.choice(shared, 6)])
                 for y in labels]
        return _examples(texts, labels, "text")

    return Dataset(train=split(per_class), test=split(n_test), classes=["neg", "pos"])


def test_fasttext_beats_chance_on_a_small_separable_text_task():
    result = fasttext_baseline(_texts(24, 100), seed=0, buckets=2 ** 12, max_epochs=10)
    assert result["metrics"]["accuracy"] > 0.85  # chance is 0.5
    assert result["chosen"]["lr"] in (3e-3, 1e-2, 3e-2)
    assert result["cost"]["trainable_params"] == (2 ** 12 + 1) * 64 + 64 * 2 + 2
    assert result["cost"]["train_flops"] > 0 and result["n_train"] == 48


def _images(per_class: int, n_test: int, seed: int = 0) -> Dataset:
    """Horizontal against vertical bars (a mirror keeps the class), 12 x 12, at random places."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> Examples:
        labels, arrays = [], []
        for i in range(2 * n):
            img = rng.integers(0, 40, (12, 12)).astype(np.uint8)
            at = rng.integers(2, 10)
            if i % 2:
                img[:, at] = 255
            else:
                img[at, :] = 255
            arrays.append(img)
            labels.append(["horizontal", "vertical"][i % 2])
        return _examples(arrays, labels, "image")

    return Dataset(train=split(per_class), test=split(n_test),
                   classes=["horizontal", "vertical"])


def test_small_cnn_trains_with_augmentation_and_reports_its_cost():
    result = small_cnn_baseline(_images(8, 20), seed=0, epochs=3, size=12)
    cost = result["cost"]
    assert result["name"] == "small CNN from scratch"
    assert cost["steps"] > 0 and cost["examples_seen"] >= 16 and cost["train_flops"] > 0
    assert cost["trainable_params"] == cost["total_params"] > 0
    # a tuning trial gets at least MIN_CAP_STEPS steps however small the cap: tiny epochs
    assert result["chosen"]["lr"] in (3e-4, 1e-3, 3e-3) and result["chosen"]["epochs"] >= 1
    assert set(result) >= {"name", "metrics", "seconds", "n_train", "cost", "chosen"}


def test_augmentation_shifts_and_mirrors_without_losing_content():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 12, 12)
    x[:, :, 5:7, 4] = 1.0  # off-centre, away from the border: any shift of 3 keeps it whole
    out = augment_images(x, pad=3, flip=True)
    assert out.shape == x.shape
    torch.testing.assert_close(out.sum((1, 2, 3)), x.sum((1, 2, 3)))
    columns = out.sum((1, 2)).argmax(1)
    assert len(set(columns.tolist())) > 3  # shifted by different amounts, some mirrored
    assert torch.equal(augment_images(x, pad=0, flip=False), x)


def test_every_baseline_runs_on_two_examples_a_class():
    lighter = {"fasttext": {"buckets": 2 ** 12, "max_epochs": 4}, "small-cnn": {"epochs": 4}}
    for data in (_texts(2, 10), _images(2, 10)):
        baselines = no_pretraining_baselines(data.modality)
        for name, baseline in baselines.items():
            result = baseline(data, 0, **lighter.get(name, {}))
            assert result["n_train"] == 4 and 0.0 <= result["metrics"]["accuracy"] <= 1.0, name
            assert set(result["cost"]) == COST_KEYS and result["chosen"], name
            if "search" in result:  # the recipe: one example a class on each side
                assert result["search"]["validation"] == "held-out"
                assert result["search"]["n_valid"] == 2


def test_baselines_are_listed_by_stable_names_and_classic_still_works():
    assert list(no_pretraining_baselines("text")) == ["tfidf-logreg", "fasttext"]
    assert list(no_pretraining_baselines("image")) == ["pixels-logreg", "small-cnn"]
    assert list(no_pretraining_baselines("audio")) == ["mfcc-logreg", "logmel-cnn"]
    result = classic_baseline(_texts(10, 20))
    assert result["name"] == "TF-IDF + logistic regression"
    assert result["cost"]["steps"] is None and result["chosen"]["C"] > 0


def test_one_example_a_class_validates_on_a_copy():
    data = _texts(1, 10)
    result = fasttext_baseline(data, seed=0, buckets=2 ** 10, max_epochs=5)
    assert result["search"]["validation"] == "training copy"
    assert result["search"]["notes"] and result["n_train"] == 2
