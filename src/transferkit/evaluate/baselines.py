"""Baselines with no pretraining, so a reported gain from transfer is an honest one.

Each baseline is ``f(data, seed) -> {"name", "metrics", "seconds", "n_train", "cost",
"chosen"}``: trained on ``data.train`` (the budget), scored on ``data.test``, with what the
training cost (examples seen, optimizer steps, parameters, FLOPs where they mean something)
and the hyper-parameters it chose *inside* the budget (cross-validated C, the recipe's
learning rate and epochs). ``no_pretraining_baselines(modality)`` lists them by short,
stable names, so a study can run each as a column and compare transfer with the best of them.

The neural baselines are models a reviewer recognises as strong on small data without any
pretraining: a fastText-style bag of hashed word unigrams and bigrams for text (Joulin et
al. 2017) and a small CNN with crop-and-flip augmentation for images, both tuned by
``train.recipe`` (a learning rate chosen on a held-out part of the budget, early stopping,
a refit on the whole budget) and charged for that tuning.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..adapt.base import label_indices
from ..backbones.vision import to_pil
from ..data.examples import AUDIO, IMAGE, TEXT, Dataset, Examples
from ..train.batches import Batches, TensorBatches
from ..train.config import RunSettings
from ..train.recipe import SCRATCH_CONFIG, fit_from_scratch
from .baseline_tools import batch_size_for, forward_flops, logreg_baseline, recipe_result
from .baselines_audio import logmel_cnn_baseline, mfcc_logreg_baseline

Baseline = Callable[[Dataset, int], dict[str, Any]]


def image_tensor(ex: Examples, size: int = 32) -> torch.Tensor:
    """Grey ``size`` x ``size`` images in [0, 1], ``[N, 1, size, size]``."""
    arr = np.stack([np.asarray(to_pil(x).convert("L").resize((size, size)), dtype=np.float32)
                    / 255.0 for x in ex.inputs])
    return torch.from_numpy(arr).unsqueeze(1)


def _pixels(ex: Examples, size: int = 32) -> np.ndarray:
    """Raw pixels as given when the images are arrays of one shape; else grey ``size``^2."""
    first = ex.inputs[0]
    if isinstance(first, np.ndarray) and all(
            isinstance(x, np.ndarray) and x.shape == first.shape for x in ex.inputs):
        return np.stack([x.reshape(-1) for x in ex.inputs]).astype(np.float32) / 255.0
    return image_tensor(ex, size).reshape(len(ex), -1).numpy()


def tfidf_logreg_baseline(data: Dataset, seed: int = 0) -> dict[str, Any]:
    """TF-IDF of word unigrams and bigrams (sublinear tf) + logistic regression."""
    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    return logreg_baseline(data, seed, "TF-IDF + logistic regression", tfidf, data.train.inputs,
                   data.test.inputs)


def pixels_logreg_baseline(data: Dataset, seed: int = 0) -> dict[str, Any]:
    """Standardised raw pixels + logistic regression."""
    return logreg_baseline(data, seed, "raw pixels + logistic regression", StandardScaler(),
                   _pixels(data.train), _pixels(data.test))


# a word is a run of letters/digits; a CJK character is a word of its own (Chinese and
# Japanese put no spaces between words, so a run of them would be a whole sentence)
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+")


def hashed_ngrams(text: str, buckets: int) -> np.ndarray:
    """Ids in ``1..buckets`` of the lower-cased words and word bigrams of ``text`` (0 pads).
    crc32, not ``hash()``: Python salts string hashes per process, and a model's features
    must not change between runs."""
    words = _TOKEN.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    return np.fromiter((zlib.crc32(g.encode("utf-8")) % buckets + 1 for g in grams),
                       dtype=np.int64, count=len(grams))


class HashedTexts(Batches):
    """Texts as hashed n-gram ids, padded per batch to its longest text."""

    def __init__(self, ids: list[np.ndarray], labels: np.ndarray, n_classes: int) -> None:
        super().__init__(labels, n_classes)
        self.ids = ids

    def subset(self, idx: np.ndarray) -> HashedTexts:
        return HashedTexts([self.ids[i] for i in idx], self.labels[idx], self.n_classes)

    def collate(self, idx: list[int], augment: bool = False) -> dict[str, torch.Tensor]:
        out = torch.zeros(len(idx), max([1, *(len(self.ids[i]) for i in idx)]),
                          dtype=torch.long)
        for row, i in enumerate(idx):
            out[row, :len(self.ids[i])] = torch.from_numpy(self.ids[i])
        return {"ids": out}


class FastText(nn.Module):
    """Mean of the n-grams' embeddings, then a linear layer; initialised as fastText does
    (small uniform embeddings, a zero output layer)."""

    def __init__(self, buckets: int, dim: int, n_classes: int) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(buckets + 1, dim, mode="mean", padding_idx=0)
        self.out = nn.Linear(dim, n_classes)
        with torch.no_grad():
            nn.init.uniform_(self.embed.weight, -1.0 / dim, 1.0 / dim)
            self.embed.weight[0].zero_()
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids))


class AugmentedImages(TensorBatches):
    """Image tensors ``[N, C, H, W]``; a training batch is shifted by up to ``pad`` pixels
    (a random crop of the zero-padded image) and, with ``flip``, mirrored left-right half of
    the time. Drawn from torch's generator, which the recipe seeds."""

    def __init__(self, inputs: torch.Tensor, labels: np.ndarray, n_classes: int, *,
                 pad: int = 3, flip: bool = True) -> None:
        super().__init__(inputs, labels, n_classes)
        self.pad, self.flip = pad, flip

    def subset(self, idx: np.ndarray) -> AugmentedImages:
        return AugmentedImages(self.inputs[torch.as_tensor(idx)], self.labels[idx],
                               self.n_classes, pad=self.pad, flip=self.flip)

    def collate(self, idx: list[int], augment: bool = False) -> dict[str, torch.Tensor]:
        x = super().collate(idx)[self.key]
        return {self.key: augment_images(x, self.pad, self.flip) if augment else x}


def augment_images(x: torch.Tensor, pad: int, flip: bool) -> torch.Tensor:
    """Random crops of the zero-padded batch (one offset per image), then random flips."""
    b, c, h, w = x.shape
    if pad:
        padded = nn.functional.pad(x, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2, b))
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                   rows, cols]
    if flip:
        x = torch.where((torch.rand(b) < 0.5)[:, None, None, None], x.flip(-1), x)
    return x


def small_cnn(n_classes: int, size: int = 32, channels: int = 1) -> nn.Sequential:
    """Two conv blocks and a linear layer: the classic no-pretraining model for images."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * (size // 4) ** 2, n_classes))


def fasttext_baseline(data: Dataset, seed: int = 0, *, buckets: int = 2 ** 18, dim: int = 64,
                      lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2), max_epochs: int = 30,
                      patience: int = 3) -> dict[str, Any]:
    """fastText-style text classifier from random weights (hashed unigrams + bigrams, mean
    embedding, linear layer), AdamW at the learning rate the recipe picks."""
    start = time.perf_counter()
    n_classes = len(data.classes)

    def texts(ex: Examples) -> HashedTexts:
        return HashedTexts([hashed_ngrams(str(t), buckets) for t in ex.inputs],
                           label_indices(ex, data.classes), n_classes)

    train, test = texts(data.train), texts(data.test)
    mean_ids = float(np.mean([len(i) for i in train.ids])) if train.ids else 0.0
    fitted = fit_from_scratch(
        lambda: FastText(buckets, dim, n_classes), train.subset, train.labels, lrs=lrs,
        max_epochs=max_epochs, patience=patience, seed=seed,
        # stops on the validation loss: a few hundred sentences make accuracy a coarse signal,
        # and the zero-initialised output layer's first epochs often tie the untrained model
        cfg=replace(SCRATCH_CONFIG, metric="loss"),
        run=RunSettings(precision="fp32", batch_size=batch_size_for(len(train), 32, 256)),
        flops_per_example=mean_ids * dim + 2.0 * dim * n_classes)  # bag mean + linear layer
    return recipe_result("fastText-style (hashed n-grams) from scratch", data, fitted, test, start)


def small_cnn_baseline(data: Dataset, seed: int = 0, epochs: int = 40, size: int = 32, *,
                       lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3), patience: int = 5,
                       max_examples: int | None = 100_000, pad: int = 3, flip: bool = True
                       ) -> dict[str, Any]:
    """The small CNN from random weights, with crop-and-flip augmentation (``flip=False`` for
    images whose mirror is another class, such as digits), tuned by the recipe. ``epochs``
    caps each run, and ``max_examples`` the examples one run sees (about a minute on two
    quiet CPU cores): runs on up to 2,500 images keep the 40-epoch cap, 512 Fashion-MNIST
    images a class get 24 epochs (the chosen rate peaked at 19), all 60,000 get 2 epochs a
    run, about 5 minutes in all instead of hours."""
    start = time.perf_counter()
    n_classes = len(data.classes)
    train = AugmentedImages(image_tensor(data.train, size), label_indices(
        data.train, data.classes), n_classes, pad=pad, flip=flip)
    test = TensorBatches(image_tensor(data.test, size), label_indices(data.test, data.classes),
                         n_classes)
    flops = forward_flops(small_cnn(n_classes, size), train.collate([0]))
    fitted = fit_from_scratch(
        lambda: small_cnn(n_classes, size), train.subset, train.labels, lrs=lrs,
        max_epochs=epochs, patience=patience, seed=seed, max_examples=max_examples,
        cfg=replace(SCRATCH_CONFIG, weight_decay=1e-4),
        run=RunSettings(precision="fp32", batch_size=batch_size_for(len(train), 32, 128)),
        flops_per_example=flops)
    return recipe_result("small CNN from scratch", data, fitted, test, start)


def no_pretraining_baselines(modality: str) -> dict[str, Baseline]:
    """The no-pretraining baselines for ``modality`` by short name (none for others).

    Names are stable: studies key their cells and columns on them."""
    if modality == TEXT:
        return {"tfidf-logreg": tfidf_logreg_baseline, "fasttext": fasttext_baseline}
    if modality == IMAGE:
        return {"pixels-logreg": pixels_logreg_baseline, "small-cnn": small_cnn_baseline}
    if modality == AUDIO:
        return {"mfcc-logreg": mfcc_logreg_baseline, "logmel-cnn": logmel_cnn_baseline}
    return {}


def classic_baseline(data: Dataset, seed: int = 0, cnn: bool = False) -> dict[str, Any]:
    """The one baseline of a fit report: TF-IDF + logistic regression for text; MFCC
    statistics + logistic regression for audio; for images raw-pixel logistic regression, or
    (``cnn=True``) the small CNN from random weights."""
    if data.modality == TEXT:
        return tfidf_logreg_baseline(data, seed)
    if data.modality == AUDIO:
        return mfcc_logreg_baseline(data, seed)
    return small_cnn_baseline(data, seed) if cnn else pixels_logreg_baseline(data, seed)
