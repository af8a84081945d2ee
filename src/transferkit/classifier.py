"""The Classifier: a pretrained backbone adapted to your labels (scikit-learn conventions).

It fits, predicts, scores, embeds, saves and loads; whole reported runs (a run folder, a
report, a study) are the workflows' job, one layer up.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from ._outputs import staged_output
from .adapt import FitContext, TransferModel, fit_cost, get_strategy, label_indices
from .adapt.base import frozen_only_choices
from .artifact.store import load_model, save_model
from .backbones import Backbone, load_backbone
from .data import DataReport, Dataset, Examples, issue_summary, load_data, load_examples
from .errors import ArtifactError, ConfigError
from .metrics import compute_metrics, compute_multilabel_metrics
from .train.cache import FeatureCache
from .train.device import resolve_device


def seed_everything(seed: int) -> None:
    """One seed drives Python, numpy and torch (DESIGN.md: runs are reproducible)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Classifier:
    """A pretrained backbone adapted to your labels.

    >>> clf = Classifier("minilm", strategy="probe").fit("train.csv")
    >>> clf.predict(["what a great film"])
    """

    def __init__(
        self, backbone: str | Backbone = "minilm", strategy: str = "probe", *,
        strategy_options: dict[str, Any] | None = None, pooling: str | None = None,
        max_length: int | None = None, image_size: int | None = None,
        clip_seconds: float | None = None, seed: int = 0,
        batch_size: int = 32, precision: str = "auto", device: str | None = "auto",
        cache: bool = True, trust_remote_code: bool = False,
    ) -> None:
        self.backbone_spec = backbone
        # trust_remote_code: run code shipped with a hub/folder model (refused otherwise)
        self.backbone_options = {"pooling": pooling, "max_length": max_length,
                                 "image_size": image_size, "clip_seconds": clip_seconds,
                                 "trust_remote_code": trust_remote_code}
        self.strategy = get_strategy(strategy, strategy_options)
        self.context = FitContext(seed=seed, batch_size=batch_size, precision=precision,
                                  device=resolve_device(device),
                                  cache=FeatureCache() if cache else None)
        self.model: TransferModel | None = None
        self.fit_info: dict[str, Any] = {}
        self.timings: dict[str, float] = {}

    # -- training -------------------------------------------------------------------------
    def resolve_backbone(self) -> Backbone:
        """The backbone this Classifier was given, loaded (a name) or as it is (an object)."""
        if isinstance(self.backbone_spec, Backbone):
            return self.backbone_spec
        return load_backbone(self.backbone_spec, **self.backbone_options)

    def fit(self, data: Dataset | str | Path, **load_options: Any) -> Classifier:
        if not isinstance(data, Dataset):
            data = load_data(data, seed=self.context.seed, **load_options)
        seed_everything(self.context.seed)
        start = time.perf_counter()
        backbone = self.resolve_backbone()
        if backbone.modality != data.modality:
            raise ConfigError(
                f"Backbone '{backbone.source}' is a {backbone.modality} model but the data is "
                f"{data.modality}. Pick a {data.modality} backbone (`transferkit models`)."
            )
        if backbone.frozen_only and self.strategy.trains_backbone():
            raise ConfigError(
                f"Backbone '{backbone.source}' can only be used frozen (its weights are not "
                f"trainable here), and strategy '{self.strategy.name}' would train it. Use one "
                f"of: {frozen_only_choices()}; or pick a trainable backbone "
                "(`transferkit models`).")
        self.timings["load_backbone"] = time.perf_counter() - start
        self.model = TransferModel(backbone, data.classes)
        n_extract, n_phases = len(self.context.extraction), len(self.context.phases)
        start = time.perf_counter()
        self.fit_info = self.strategy.fit(self.model, data, self.context)
        self.fit_info["cost"] = fit_cost(self.model, self.context.extraction[n_extract:],
                                         self.context.phases[n_phases:])
        self.timings["fit_total"] = time.perf_counter() - start
        self.timings["extract"] = sum(s.seconds for s in self.context.extraction[n_extract:])
        self.timings["fit_head"] = self.timings["fit_total"] - self.timings["extract"]
        self.model.eval()
        return self

    # -- inference ------------------------------------------------------------------------
    def _require_model(self) -> TransferModel:
        if self.model is None:
            raise ConfigError("This Classifier is not fitted yet: call fit() or load() first.")
        return self.model

    @property
    def classes(self) -> list[str]:
        return self._require_model().classes

    @property
    def modality(self) -> str:
        """What the model reads: text, image (what ``predict_file`` checks inputs against)."""
        return self._require_model().backbone.modality

    def predict_proba(self, inputs: list[Any] | Examples) -> np.ndarray:
        model = self._require_model()
        examples = inputs if isinstance(inputs, Examples) else Examples(
            list(inputs), None, [], model.backbone.modality)
        return model.head_proba(self.context.features(model, examples, "features: predict"))

    def predict(self, inputs: list[Any] | Examples) -> list[str]:
        """Label names; for a multi-label model, each example's labels joined with the
        training data's delimiter (empty when no label clears its threshold)."""
        return self._require_model().labels_from_proba(self.predict_proba(inputs))

    def evaluate(self, data: Examples | Dataset | str | Path, **read_options: Any
                 ) -> dict[str, Any]:
        """Metrics on labelled examples: a split, a Dataset (its test split) or a file."""
        model = self._require_model()
        if isinstance(data, Dataset):
            examples = data.test
        elif isinstance(data, Examples):
            examples = data
        else:
            examples = evaluation_examples(data, model.classes, delimiter=model.delimiter
                                           if model.multilabel else None,
                                           modality=model.backbone.modality, **read_options)
        proba = self.predict_proba(examples)
        truth = label_indices(examples, model.classes)
        if model.multilabel:
            return compute_multilabel_metrics(truth, proba, model.classes, model.thresholds)
        return compute_metrics(truth, proba, model.classes)

    # -- reuse ----------------------------------------------------------------------------
    def save(self, directory: str | Path, overwrite: bool = False, inputs: Any = ()) -> Path:
        directory = Path(directory)
        with staged_output(directory, overwrite, inputs=inputs) as stage:
            save_model(self._require_model(), stage, self.strategy_record())
        return directory

    def strategy_record(self) -> dict[str, Any]:
        return {"name": self.strategy.name, "options": self.strategy.options(),
                "fit_info": self.fit_info}

    @classmethod
    def load(cls, directory: str | Path, *, batch_size: int = 32, precision: str = "auto",
             device: str | None = "auto", cache: bool = False,
             trust_remote_code: bool = False) -> Classifier:
        from .adapt import STRATEGIES

        model, config = load_model(directory, trust_remote_code=trust_remote_code)
        name = config.strategy.get("name")
        if name not in STRATEGIES:
            raise ArtifactError(
                f"{directory} was made with the strategy '{name}', which this transferkit "
                f"({__version__}) does not have (it has {', '.join(sorted(STRATEGIES))}). "
                "Load it with the transferkit version that made it (config.json says which).")
        clf = cls(model.backbone, strategy=name,
                  batch_size=batch_size, precision=precision, device=device, cache=cache)
        clf.model = model
        clf.fit_info = config.strategy.get("fit_info", {})
        return clf

    def with_support(self, support: str | Path | Examples, *, text_column: str | None = None,
                     label_column: str | None = None, keep_classes: bool = False
                     ) -> Classifier:
        """A classifier for the classes of ``support`` (a file, folder or Examples of labelled
        examples), by distance to their prototypes: new classes need no training.

        By default the support's classes replace the model's (the few-shot setting: K
        examples of each new class). ``keep_classes=True`` on a protonet artifact keeps the
        classes it already knows as well (a class named in the support gets its prototype
        from there); expect new classes close to known ones to be confused with them. Works
        on any model's backbone; returns a new Classifier sharing the backbone. A run
        meta-trained with ``inner_steps`` (fo-Proto-MAML) adapts the new head by those steps
        on the support."""
        import copy

        from .adapt.protonet import prototype_head, softmax_scale

        model = self._require_model()
        if model.multilabel:
            raise ConfigError("--support needs a single-label model; this one is multi-label.")
        if not isinstance(support, Examples):
            support = load_examples(support, split="train", text_column=text_column,
                                    label_column=label_column)
        if not len(support) or support.labels is None:
            raise ConfigError("The support set holds no labelled examples: give a CSV with "
                              "text and label columns, or a folder of <class>/ images.")
        if support.modality != model.backbone.modality:
            raise ConfigError(f"The support examples are {support.modality} but the model "
                              f"reads {model.backbone.modality}.")
        classes = sorted(set(support.labels))
        labels = label_indices(support, classes)
        feats = self.context.features(model, support, "features: support")
        if keep_classes and not self.strategy.keeps_prototypes:
            raise ConfigError("keep_classes needs a protonet artifact (its head is made of "
                              "prototypes); other heads cannot be mixed with prototypes.")
        scale = float(self.fit_info.get("scale") or softmax_scale(feats))
        inner = {k: self.fit_info[k] for k in ("inner_steps", "inner_lr") if k in self.fit_info}
        head = prototype_head(feats, labels, len(classes), scale, **inner)  # fo-Proto-MAML
        if keep_classes:  # keep the known prototypes the support does not redefine
            keep = [i for i, c in enumerate(model.classes) if c not in set(classes)]
            with torch.no_grad():
                weight = torch.cat([model.head.weight[keep], head.weight])
                bias = torch.cat([model.head.bias[keep], head.bias])
            classes = [model.classes[i] for i in keep] + classes
            head = torch.nn.Linear(weight.shape[1], len(classes))
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.copy_(bias)
        clf = copy.copy(self)
        clf.model = TransferModel(model.backbone, classes, head).eval()
        clf.fit_info = {**self.fit_info, "scale": scale, "support": {
            "source": support.source, "n": len(support), "classes": sorted(set(support.labels))}}
        return clf

    def labels_from_proba(self, proba: np.ndarray) -> list[str]:
        """Label names for probabilities (what ``predict_file`` and the server need)."""
        return self._require_model().labels_from_proba(proba)


def evaluation_examples(source: str | Path, classes: list[str], *,
                        text_column: str | None = None, label_column: str | None = None,
                        delimiter: str | None = None, modality: str | None = None
                        ) -> Examples:
    """Labelled examples from a file for ``evaluate``: bad rows and unknown labels dropped."""
    report = DataReport()
    examples = load_examples(source, split="test", text_column=text_column,
                             label_column=label_column, label_delimiter=delimiter,
                             classes=classes, report=report)
    if modality and examples.modality != modality:
        raise ConfigError(f"{source} holds {examples.modality} examples, but the model reads "
                          f"{modality}: evaluate it on {modality} data.")
    if len(examples) == 0:
        raise ArtifactError(f"{source}: no usable labelled rows ({issue_summary(report)}).")
    return examples
