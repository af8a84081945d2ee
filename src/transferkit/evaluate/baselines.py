"""Baselines with no pretraining, so a reported gain from transfer is an honest one."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..adapt.base import label_indices
from ..adapt.probe import make_logreg_cv
from ..backbones.vision import to_pil
from ..data.examples import TEXT, Dataset, Examples
from ..metrics import compute_metrics
from ..train.batches import TensorBatches
from ..train.config import RunSettings, TrainConfig
from ..train.optim import ParamGroup
from ..train.trainer import Trainer


def _pixels(ex: Examples, size: int = 32) -> np.ndarray:
    """Raw pixels as given when the images are arrays of one shape; else grey ``size``^2."""
    first = ex.inputs[0]
    if isinstance(first, np.ndarray) and all(
            isinstance(x, np.ndarray) and x.shape == first.shape for x in ex.inputs):
        return np.stack([x.reshape(-1) for x in ex.inputs]).astype(np.float32) / 255.0
    return np.stack([np.asarray(to_pil(x).convert("L").resize((size, size)), dtype=np.float32)
                     .ravel() / 255.0 for x in ex.inputs])


def classic_baseline(data: Dataset, seed: int = 0, cnn: bool = False) -> dict[str, Any]:
    """TF-IDF word+bigram logistic regression for text; for images raw-pixel logistic
    regression, or (``cnn=True``) a small CNN trained from random weights. Regularisation is
    cross-validated like the probe's, so neither side is handicapped.
    """
    if data.modality != TEXT and cnn:
        return small_cnn_baseline(data, seed)
    start = time.perf_counter()
    y = label_indices(data.train, data.classes)
    folds = max(2, min(5, int(np.bincount(y).min())))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    clf = make_logreg_cv(np.logspace(-4, 2, 7), cv, 3000, seed)
    if data.modality == TEXT:
        name = "TF-IDF + logistic regression"
        model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
                              clf)
        x_train, x_test = data.train.inputs, data.test.inputs
    else:
        name = "raw pixels + logistic regression"
        model = make_pipeline(StandardScaler(), clf)
        x_train, x_test = _pixels(data.train), _pixels(data.test)
    model.fit(x_train, y)
    proba = model.predict_proba(x_test)
    metrics = compute_metrics(label_indices(data.test, data.classes), proba, data.classes)
    return {"name": name, "metrics": metrics, "seconds": time.perf_counter() - start,
            "n_train": len(data.train)}


def small_cnn_baseline(data: Dataset, seed: int = 0, epochs: int = 10, size: int = 32
                       ) -> dict[str, Any]:
    """Two conv blocks and a linear layer, trained from random weights on the same images:
    the classic no-pretraining model for images, on the same ``Trainer`` as every strategy."""
    import torch
    from torch import nn

    start = time.perf_counter()
    torch.manual_seed(seed)

    def tensor(ex: Examples) -> torch.Tensor:
        arr = np.stack([np.asarray(to_pil(x).convert("L").resize((size, size)),
                                   dtype=np.float32) / 255.0 for x in ex.inputs])
        return torch.from_numpy(arr).unsqueeze(1)

    x_train, x_test = tensor(data.train), tensor(data.test)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * (size // 4) ** 2, len(data.classes)))
    # a fixed recipe, no validation split: the baseline gets the training data the
    # transferred model gets, and a constant LR that suits 10 epochs from scratch
    cfg = TrainConfig(epochs=epochs, lr=2e-3, weight_decay=1e-4, warmup_ratio=0.0,
                      schedule="constant", max_grad_norm=None, patience=None)
    images = TensorBatches(x_train, label_indices(data.train, data.classes), len(data.classes))
    Trainer(net, [ParamGroup(list(net.parameters()), cfg.lr)], cfg, images,
            run=RunSettings(seed=seed, batch_size=64, precision="fp32")).fit()
    device = next(net.parameters()).device
    with torch.inference_mode():
        proba = torch.cat([torch.softmax(net(b.to(device)), -1).cpu()
                           for b in x_test.split(512)]).numpy()
    metrics = compute_metrics(label_indices(data.test, data.classes), proba, data.classes)
    return {"name": "small CNN from scratch", "metrics": metrics,
            "seconds": time.perf_counter() - start, "n_train": len(data.train)}
