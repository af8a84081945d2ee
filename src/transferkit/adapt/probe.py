"""Linear probing: a frozen backbone's cached features and a linear classifier on top."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..data.examples import Dataset
from ..errors import ConfigError
from ..train.batches import TensorBatches
from ..train.config import RunSettings, TrainConfig
from ..train.optim import ParamGroup
from ..train.trainer import Hooks, Trainer
from .base import FitContext, Strategy, label_indices, register
from .model import TransferModel

Head = Literal["logreg", "linear"]
HEADS = get_args(Head)


def make_logreg_cv(cs: np.ndarray, cv: StratifiedKFold, max_iter: int, seed: int
                   ) -> LogisticRegressionCV:
    """L2 logistic regression, C chosen by cross-validated log loss (smoother than accuracy
    on few examples). Spelled out so scikit-learn's changing defaults do not move results."""
    return LogisticRegressionCV(Cs=cs, cv=cv, scoring="neg_log_loss", l1_ratios=(0.0,),
                                use_legacy_attributes=False, max_iter=max_iter,
                                random_state=seed, n_jobs=-1)


@register
class Probe(Strategy):
    """``head='logreg'``: scikit-learn logistic regression, L2 strength chosen by stratified
    cross-validation on the training set. ``head='linear'``: a torch linear layer trained on the
    one ``Trainer`` (AdamW, runs on GPU), stopping early on the loss of a held-out tenth of the
    training set after ``patience`` epochs without improvement.
    Either way the result is one ``nn.Linear`` (standardisation folded in), so a probe saves,
    exports and serves like any other model."""

    name = "probe"
    frozen_backbone = True

    # Each head's own options, with their defaults; the other head's are refused, not ignored.
    HEAD_OPTIONS: ClassVar[dict[str, dict[str, Any]]] = {
        "logreg": {"cv_folds": 5, "Cs": 7, "max_iter": 3000},
        "linear": {"epochs": 300, "lr": 1e-2, "weight_decay": 1e-3, "patience": 20},
    }

    option_defaults: ClassVar[dict[str, Any]] = {**HEAD_OPTIONS["logreg"],
                                                 **HEAD_OPTIONS["linear"]}
    option_help: ClassVar[dict[str, str]] = {
        "head": "logreg: scikit-learn logistic regression, C cross-validated; linear: a torch "
                "linear layer on the training loop (runs on GPU).",
        "cv_folds": "logreg head: cross-validation folds for C.",
        "Cs": "logreg head: how many values of C to try (log-spaced).",
        "max_iter": "logreg head: solver iterations.",
        "epochs": "linear head: the most epochs (early stopping on a held-out tenth).",
        "lr": "linear head: learning rate.",
        "weight_decay": "linear head: AdamW weight decay.",
        "patience": "linear head: epochs without improvement before stopping.",
    }

    def __init__(self, head: Head = "logreg", cv_folds: int | None = None,
                 Cs: int | None = None, max_iter: int | None = None,  # noqa: N803
                 epochs: int | None = None, lr: float | None = None,
                 weight_decay: float | None = None, patience: int | None = None) -> None:
        if head not in HEADS:
            raise ConfigError(f"Unknown probe head '{head}'. Choose one of: {', '.join(HEADS)}.")
        given = {"cv_folds": cv_folds, "Cs": Cs, "max_iter": max_iter, "epochs": epochs,
                 "lr": lr, "weight_decay": weight_decay, "patience": patience}
        other = next(h for h in HEADS if h != head)
        ignored = [k for k in self.HEAD_OPTIONS[other] if given[k] is not None]
        if ignored:
            raise ConfigError(
                f"{', '.join(ignored)} set the probe's {other} head, but this probe fits the "
                f"{head} head, which would ignore them. Drop them, or pass --head {other}.")
        own = {k: v if given[k] is None else given[k] for k, v in self.HEAD_OPTIONS[head].items()}
        self.head, self._own = head, own
        for key, value in {**self.HEAD_OPTIONS["logreg"], **self.HEAD_OPTIONS["linear"],
                           **own}.items():
            setattr(self, key, value)

    def options(self) -> dict[str, Any]:
        return {"head": self.head, **self._own}

    def fit(self, model: TransferModel, data: Dataset, ctx: FitContext) -> dict[str, Any]:
        x = ctx.features(model, data.train, "features: train")
        y = label_indices(data.train, model.classes)
        scaler = StandardScaler().fit(x)
        # Nearly constant feature dimensions would be blown up to noise by standardising, and
        # the folded head would get huge weights that cancel badly in low precision.
        scaler.scale_ = np.maximum(scaler.scale_, 1e-2 * np.median(scaler.scale_) + 1e-12)
        xs = scaler.transform(x).astype(np.float32)
        if y.ndim == 2:  # multi-label: one binary problem per label, thresholds tuned
            model.multilabel, model.delimiter = True, data.train.delimiter
            if self.head == "logreg":
                weight, bias, info = self._fit_multilabel(xs, y, ctx.seed)
            else:
                weight, bias, info = self._fit_torch(xs, y, len(model.classes), ctx)
            model.thresholds = info.pop("thresholds")
        elif self.head == "logreg":
            weight, bias, info = self._fit_logreg(xs, y, len(model.classes), ctx.seed)
        else:
            weight, bias, info = self._fit_torch(xs, y, len(model.classes), ctx)
        # Fold the scaler into the layer: W' = W / s, b' = b - W' . mean
        w = weight / scaler.scale_[None, :]
        b = bias - w @ scaler.mean_
        head = nn.Linear(x.shape[1], len(model.classes))
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            head.bias.copy_(torch.from_numpy(b.astype(np.float32)))
        model.head = head
        return info

    def _fit_logreg(self, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        folds = min(self.cv_folds, int(np.bincount(y).min()))
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
            clf = make_logreg_cv(np.logspace(-4, 2, self.Cs), cv, self.max_iter, seed)
            clf.fit(x, y)
            info = {"C": float(np.atleast_1d(clf.C_)[0]), "cv_folds": folds}
        else:  # too few examples per class to cross-validate: a moderate default
            clf = LogisticRegression(C=1.0, max_iter=self.max_iter).fit(x, y)
            info = {"C": 1.0, "cv_folds": 0}
        coef, intercept = clf.coef_, clf.intercept_
        if n_classes == 2 and coef.shape[0] == 1:
            # sigmoid(z) == softmax([-z/2, z/2])[1]: one linear layer serves both cases
            coef = np.vstack([-coef / 2, coef / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        return coef, intercept, info

    def _fit_multilabel(self, x: np.ndarray, y: np.ndarray, seed: int
                        ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        from sklearn.model_selection import cross_val_predict

        from ..metrics import tune_thresholds

        k_labels = y.shape[1]
        weight = np.zeros((k_labels, x.shape[1]))
        bias = np.zeros(k_labels)
        oof = np.full(y.shape, 0.5)
        cs = []
        for k in range(k_labels):
            yk = y[:, k].astype(int)
            n_pos = int(yk.sum())
            if n_pos in (0, len(yk)):  # never or always on in training: a constant
                rate = np.clip(n_pos / len(yk), 1e-3, 1 - 1e-3)
                bias[k] = np.log(rate / (1 - rate))
                cs.append(None)
                continue
            folds = min(self.cv_folds, n_pos, len(yk) - n_pos)
            if folds >= 2:
                cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
                clf = make_logreg_cv(np.logspace(-4, 2, self.Cs), cv, self.max_iter, seed)
                clf.fit(x, yk)
                c = float(np.atleast_1d(clf.C_)[0])
                oof[:, k] = cross_val_predict(LogisticRegression(C=c, max_iter=self.max_iter),
                                              x, yk, cv=cv, method="predict_proba")[:, 1]
            else:
                c = 1.0
                clf = LogisticRegression(C=c, max_iter=self.max_iter).fit(x, yk)
            weight[k], bias[k] = clf.coef_[0], clf.intercept_[0]
            cs.append(c)
        # thresholds from out-of-fold probabilities: honest, unlike the training fit's own
        return weight, bias, {"C": cs, "thresholds": tune_thresholds(y, oof)}

    def _fit_torch(self, x: np.ndarray, y: np.ndarray, n_classes: int, ctx: FitContext
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        torch.manual_seed(ctx.seed)  # the layer's initial weights
        multilabel = y.ndim == 2
        strata = y.argmax(1) if multilabel else y
        can_hold_out = len(y) >= 20 and np.bincount(strata).min() >= 2
        if can_hold_out:
            tr, va = train_test_split(np.arange(len(y)), test_size=0.1, stratify=strata,
                                      random_state=ctx.seed)
        else:
            tr, va = np.arange(len(y)), np.arange(0)
        layer = nn.Linear(x.shape[1], n_classes)
        xv, yv = torch.from_numpy(x[va]), torch.from_numpy(y[va])
        loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()

        def valid_loss() -> dict[str, float]:
            # only the loss it stops on: the full classification report would cost more
            # than the epoch it scores, for hundreds of epochs
            device = layer.weight.device
            return {"valid_loss": loss_fn(layer(xv.to(device)), yv.to(device)).item()}

        # a convex problem on fixed features: a constant LR, no warm-up, no clipping
        cfg = TrainConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                          warmup_ratio=0.0, schedule="constant", max_grad_norm=None,
                          metric="loss", patience=self.patience)
        # fp32: a head this small gains nothing from bf16, and its folded standardisation
        # needs the precision. No log, checkpoints or progress bars: the probe is seconds of
        # one step of a run (a bar per epoch would be hundreds of bars)
        run = RunSettings.of(ctx, batch_size=1024, precision="fp32", run_dir=None,
                             checkpoint_dir=None, resume=False, progress=None)
        result = Trainer(layer, [ParamGroup(list(layer.parameters()), self.lr)], cfg,
                         TensorBatches(x[tr], y[tr], n_classes),
                         hooks=Hooks(evaluator=valid_loss if len(va) else None), run=run).fit()
        layer = layer.cpu()
        w = layer.weight.detach().double().numpy()
        b = layer.bias.detach().double().numpy()
        info: dict[str, Any] = {"epochs": result["epochs_completed"], "steps": result["steps"],
                                "best_step": result["best_step"],
                                "stopped_early": result["stopped_early"],
                                "valid_loss": result["best_valid"]}
        if multilabel:
            from ..metrics import tune_thresholds

            with torch.no_grad():
                proba = torch.sigmoid(layer(xv)).numpy() if len(va) else None
            info["thresholds"] = tune_thresholds(y[va], proba) if proba is not None \
                else [0.5] * n_classes
        return w, b, info
