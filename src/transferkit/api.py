"""The Python API: ``Classifier`` for code, ``fit_run`` for a whole reported run (the CLI)."""

from __future__ import annotations

import os
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from ._io import ordinary_permissions, write_json, write_text
from ._outputs import check_out_folder, mark_folder, staged_output
from .adapt import FitContext, TransferModel, get_strategy, label_indices
from .backbones import Backbone, load_backbone
from .config import FitConfig, dump_yaml
from .data import Dataset, Examples, issue_summary, load_data, pick_split, read_source
from .errors import ArtifactError, ConfigError
from .evaluate.metrics import compute_metrics, compute_multilabel_metrics
from .train.cache import FeatureCache

Progress = Callable[..., None]  # (stage, done, total, **extra: loss, lr, best)


def seed_everything(seed: int) -> None:
    """One seed drives Python, numpy and torch (DESIGN.md: runs are reproducible)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"Unknown device '{device}': use auto, cpu, cuda or cuda:N.") from e


class Classifier:
    """A pretrained backbone adapted to your labels.

    >>> clf = Classifier("minilm", strategy="probe").fit("train.csv")
    >>> clf.predict(["what a great film"])
    """

    def __init__(
        self, backbone: str | Backbone = "minilm", strategy: str = "probe", *,
        strategy_options: dict[str, Any] | None = None, pooling: str | None = None,
        max_length: int | None = None, image_size: int | None = None, seed: int = 0,
        batch_size: int = 32, precision: str = "auto", device: str | None = "auto",
        cache: bool = True, trust_remote_code: bool = False,
    ) -> None:
        self.backbone_spec = backbone
        # trust_remote_code: run code shipped with a hub/folder model (refused otherwise)
        self.backbone_options = {"pooling": pooling, "max_length": max_length,
                                 "image_size": image_size,
                                 "trust_remote_code": trust_remote_code}
        self.strategy = get_strategy(strategy, strategy_options)
        self.context = FitContext(seed=seed, batch_size=batch_size, precision=precision,
                                  device=resolve_device(device),
                                  cache=FeatureCache() if cache else None)
        self.model: TransferModel | None = None
        self.fit_info: dict[str, Any] = {}
        self.timings: dict[str, float] = {}

    # -- training -------------------------------------------------------------------------
    def _backbone(self) -> Backbone:
        if isinstance(self.backbone_spec, Backbone):
            return self.backbone_spec
        return load_backbone(self.backbone_spec, **self.backbone_options)

    def fit(self, data: Dataset | str | Path, **load_options: Any) -> Classifier:
        if not isinstance(data, Dataset):
            data = load_data(data, seed=self.context.seed, **load_options)
        seed_everything(self.context.seed)
        start = time.perf_counter()
        backbone = self._backbone()
        if backbone.modality != data.modality:
            raise ConfigError(
                f"Backbone '{backbone.source}' is a {backbone.modality} model but the data is "
                f"{data.modality}. Pick a {data.modality} backbone (`transferkit models`)."
            )
        self.timings["load_backbone"] = time.perf_counter() - start
        self.model = TransferModel(backbone, data.classes)
        n_extract = len(self.context.extraction)
        start = time.perf_counter()
        self.fit_info = self.strategy.fit(self.model, data, self.context)
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
        from .artifact.store import save_model

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
        from .artifact.store import load_model

        model, config = load_model(directory, trust_remote_code=trust_remote_code)
        name = config.strategy.get("name")
        clf = cls(model.backbone, strategy=name if name in STRATEGIES else "probe",
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
        from .data.validate import clean_rows

        model = self._require_model()
        if model.multilabel:
            raise ConfigError("--support needs a single-label model; this one is multi-label.")
        if not isinstance(support, Examples):
            from .data import DataReport

            support = clean_rows(pick_split(support, read_source(
                support, text_column, label_column), "train"), DataReport(), True)
        if not len(support) or support.labels is None:
            raise ConfigError("The support set holds no labelled examples: give a CSV with "
                              "text and label columns, or a folder of <class>/ images.")
        if support.modality != model.backbone.modality:
            raise ConfigError(f"The support examples are {support.modality} but the model "
                              f"reads {model.backbone.modality}.")
        classes = sorted(set(support.labels))
        labels = label_indices(support, classes)
        feats = self.context.features(model, support, "features: support")
        if keep_classes and self.strategy.name != "protonet":
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
    from .data import DataReport
    from .data.validate import canonical_multilabels, clean_rows, drop_unseen_labels

    examples = pick_split(source, read_source(source, text_column, label_column), "test")
    if modality and examples.modality != modality:
        raise ConfigError(f"{source} holds {examples.modality} examples, but the model reads "
                          f"{modality}: evaluate it on {modality} data.")
    if delimiter:
        examples = canonical_multilabels(examples, delimiter)
    report = DataReport()
    examples = drop_unseen_labels(clean_rows(examples, report, True), classes, report)
    if len(examples) == 0:
        raise ArtifactError(f"{source}: no usable labelled rows ({issue_summary(report)}).")
    return examples


def checkpoint_dir_for(out: Path) -> Path:
    """Checkpoints live beside the run folder (which only appears once the run is whole), so a
    killed run can be resumed with ``--resume``; they are deleted when training finishes."""
    return out.with_name(f"{out.name}.checkpoints")


@dataclass
class RunResult:
    out: Path
    metrics: dict[str, Any]
    report: Path
    comparison: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def fit_run(config: FitConfig, progress: Progress | None = None,
            data: Dataset | None = None) -> RunResult:
    """Everything ``transferkit fit`` does: data -> fit -> evaluate -> artifact + report."""
    from .artifact.store import save_model
    from .evaluate.report import _env, write_run_report

    start = time.perf_counter()
    out = Path(config.out)
    # Under `accelerate launch` / torchrun every rank runs this; only rank 0 writes the run.
    main_process = int(os.environ.get("RANK", "0")) == 0
    inputs = [config.train, config.valid, config.test]
    with staged_output(out, config.overwrite, main_process, inputs=inputs) as stage:
        if data is None:
            data = load_data(
                config.train, config.valid, config.test, text_column=config.text_column,
                label_column=config.label_column, per_class=config.per_class, seed=config.seed,
                test_size=config.test_size, strict=config.strict,
                max_bad_fraction=config.max_bad_fraction, label_delimiter=config.label_delimiter,
                max_text_chars=config.max_text_chars,
            )
        clf = Classifier(
            config.backbone, config.strategy, strategy_options=config.strategy_options,
            pooling=config.pooling, max_length=config.max_length, image_size=config.image_size,
            seed=config.seed, batch_size=config.batch_size, precision=config.precision,
            device=config.device, cache=config.cache,
            trust_remote_code=config.trust_remote_code,
        )
        clf.context.progress = progress
        clf.context.run_dir = stage
        clf.context.checkpoint_dir = checkpoint_dir_for(out)
        clf.context.resume = config.resume
        clf.fit(data)
        n_before = len(clf.context.extraction)
        metrics = clf.evaluate(data)
        extraction = clf.context.extraction
        extract_seconds = clf.timings["extract"] + sum(s.seconds for s in extraction[n_before:])
        comparison = []
        if config.compare_baseline and not data.multilabel:
            comparison = compare_with_baseline(config, data, clf, metrics)
        model = clf._require_model()
        save_model(model, stage, clf.strategy_record())
        title = f"{Path(str(config.train)).name} · {config.backbone} · {config.strategy}"
        run = {
            "title": title, "strategy": config.strategy, "seed": config.seed,
            "version": __version__, "precision": extraction[0].precision if extraction else "",
            "cached": bool(extraction) and all(s.from_cache for s in extraction),
            "extract_seconds": extract_seconds, "fit_seconds": clf.timings["fit_head"],
            "total_seconds": time.perf_counter() - start,
            "strategy_info": _info_text(clf.fit_info),
            "data_issues": issue_summary(data.report), "data_lines": data.report.lines(),
            "python": platform.python_version(), "torch": torch.__version__,
        }
        context = {"metrics": metrics, "run": run, "data": data.summary(),
                   "backbone": model.backbone.describe(), "comparison": comparison,
                   "labels": model.classes}
        write_run_report(stage, context)
        write_text(stage / "README.md", _env().get_template("model_card.md.j2").render(**context))
        write_text(stage / "run.yaml", dump_yaml(config))
        write_json(stage / "run.json", {"run": run, "data": data.summary(),
                                        "timings": clf.timings, "fit_info": clf.fit_info,
                                        "comparison": comparison})
    return RunResult(out=out, metrics=metrics, report=out / "report.html",
                     comparison=comparison, timings={**clf.timings, "total": run["total_seconds"]})


def compare_with_baseline(config: FitConfig, data: Dataset, clf: Classifier,
                          metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the report: this run and a no-pretraining baseline on the same test split, at
    full data and at each of ``config.compare_budgets`` labels per class (features come from
    the cache, so each extra budget costs only a head fit)."""
    from dataclasses import replace

    from .data.split import per_class_budget
    from .evaluate.baselines import classic_baseline

    ours = f"{config.backbone} + {config.strategy}"
    rows = [{"name": ours, "n_train": len(data.train), "accuracy": metrics["accuracy"],
             "macro_f1": metrics["macro_f1"], "seconds": clf.timings["fit_total"]}]
    base = classic_baseline(data, config.seed)
    rows.append({"name": base["name"], "n_train": base["n_train"],
                 "accuracy": base["metrics"]["accuracy"],
                 "macro_f1": base["metrics"]["macro_f1"], "seconds": base["seconds"]})
    for budget in sorted(config.compare_budgets):
        small = replace(data, train=per_class_budget(data.train, budget, config.seed,
                                                     data.report.__class__()))
        small_clf = Classifier(clf.model.backbone, config.strategy,
                               strategy_options=config.strategy_options, seed=config.seed,
                               batch_size=config.batch_size, precision=config.precision,
                               device=config.device, cache=config.cache)
        small_clf.fit(small)
        m = small_clf.evaluate(small)
        rows.append({"name": f"{ours}, {budget}/class", "n_train": len(small.train),
                     "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                     "seconds": small_clf.timings["fit_total"]})
        b = classic_baseline(small, config.seed)
        rows.append({"name": f"{base['name']}, {budget}/class", "n_train": b["n_train"],
                     "accuracy": b["metrics"]["accuracy"], "macro_f1": b["metrics"]["macro_f1"],
                     "seconds": b["seconds"]})
    return rows


def _info_text(info: dict[str, Any]) -> str:
    if not info:
        return ""
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()]
    return "(" + ", ".join(parts) + ")"


def study(
    train: str | Path, *, test: str | Path | None = None, valid: str | Path | None = None,
    backbone: str = "minilm", budgets: str | list[int | str] = "8,32,128,512,all",
    strategies: str | list[str] = "scratch,classic,probe,partial,lora,full", seeds: int = 3,
    out: str | Path = "runs/study", epochs: int = 2, text_column: str | None = None,
    label_column: str | None = None, image_size: int | None = None, precision: str = "auto",
    batch_size: int = 32, seed: int = 0, overwrite: bool = False,
    strategy_options: dict[str, dict[str, Any]] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure what transfer saves on your data: every strategy at every label budget, for
    several seeds, on one held-out test set. Finished cells are kept in ``out/cells``, so
    running the same call again after an interruption only runs what is missing."""
    from .evaluate.study import StudyPlan, parse_budgets, run_study

    out = Path(out)
    check_out_folder(out, overwrite=True, inputs=[train, valid, test])  # links, inputs, cwd
    plan = StudyPlan(
        budgets=parse_budgets(budgets) if isinstance(budgets, str) else list(budgets),
        strategies=[s.strip() for s in strategies.split(",")] if isinstance(strategies, str)
        else list(strategies),
        seeds=[seed + i for i in range(seeds)], backbone=backbone, epochs=epochs,
        batch_size=batch_size, precision=precision, image_size=image_size,
        strategy_options=dict(strategy_options or {}))
    plan.validate()
    stray = sorted(set(plan.strategy_options) - set(plan.strategies))
    if stray:
        raise ConfigError(f"strategy_options name {', '.join(stray)}, which this study does not "
                          f"run (its strategies: {', '.join(plan.strategies)}).")
    data = load_data(train, valid, test, text_column=text_column, label_column=label_column,
                     seed=seed)
    identity = {"data": data.train.fingerprint() + data.test.fingerprint(),
                "backbone": backbone, "epochs": epochs, "image_size": image_size,
                "precision": precision, "batch_size": batch_size}
    if plan.strategy_options:  # only when set: studies made before the option still resume
        identity["strategy_options"] = plan.strategy_options
    marker = out / "study_identity.json"
    started = out.is_dir() and any(out.iterdir())
    if started and not overwrite and not marker.is_file():
        raise ArtifactError(f"{out} is a transferkit folder but not a study; choose another "
                            "--out, or pass --overwrite to replace it.")
    if started and not overwrite and _read_json(marker) != identity:
        raise ArtifactError(
            f"{out} holds a study of other data or settings; its finished cells cannot be "
            "reused. Choose another --out, or pass --overwrite to start it afresh.")

    def claim_out() -> None:
        """Called once everything is validated and the backbone has loaded."""
        if started and overwrite:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        mark_folder(out, "study")
        write_json(marker, identity)

    return run_study(data, plan, out, progress, claim_out)


def _read_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def pretrain(corpus: str | Path | list[str | Path], *, out: str | Path = "runs/pretrained",
             progress: Progress | None = None, **options: Any) -> dict[str, Any]:
    """Self-supervised pretraining on unlabelled data; returns the run's summary.

    Text: continued masked-LM from ``source`` (any encoder ``load_backbone`` resolves), or
    ``scratch=True`` with ``size`` tiny|mini|small and a WordPiece tokenizer trained on the
    corpus. Images (``modality="image"``): SimCLR on ``source`` (pretrained weights, or the
    architecture with random weights when ``scratch=True``). Every option is a
    ``PretrainConfig`` field. ``out`` becomes a backbone folder: ``Classifier(out)``,
    ``fit --backbone OUT`` and the rest accept it."""
    from .config import PretrainConfig

    sources = [str(c) for c in (corpus if isinstance(corpus, list) else [corpus])]
    try:
        config = PretrainConfig(corpus=sources, out=str(out), **options)
    except ValueError as e:  # pydantic: a bad option value or an unknown option
        raise ConfigError(f"Invalid pretraining option: {e}") from e
    return pretrain_run(config, progress)


def pretrain_run(config: Any, progress: Progress | None = None) -> dict[str, Any]:
    """Everything ``transferkit pretrain`` does: corpus -> objective -> backbone folder."""
    from .pretrain.corpus import read_corpus

    if config.modality == "text" and config.scratch == bool(config.source):
        raise ConfigError("Text pretraining needs exactly one of --from BACKBONE (continue "
                          "pretraining it) or --scratch --size tiny|mini|small.")
    if config.modality == "image" and not config.source:
        raise ConfigError("Image pretraining needs --from: a timm name or backbone (with "
                          "--scratch, only its architecture is used, with random weights).")
    start = time.perf_counter()
    inputs = [*config.corpus, config.source, config.tokenizer]
    check_out_folder(config.out, config.overwrite, inputs)  # before the corpus is read
    items, report = read_corpus(config.corpus, config.modality, config.text_column)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    out = Path(config.out)
    # Under `accelerate launch` every rank trains; only rank 0 writes the backbone folder.
    main_process = int(os.environ.get("RANK", "0")) == 0
    with staged_output(out, config.overwrite, main_process, kind="backbone",
                       inputs=inputs) as stage:
        if config.modality == "text":
            from .pretrain.text import pretrain_text

            summary = pretrain_text(items, config, stage, checkpoint_dir_for(out), progress,
                                    device)
        else:
            from .pretrain.image import pretrain_images

            summary = pretrain_images(items, config, stage, checkpoint_dir_for(out), progress,
                                      device)
        summary = {"corpus": report, **summary, "total_seconds": time.perf_counter() - start,
                   "version": __version__, "torch": torch.__version__}
        if not main_process:
            return {"out": out, **summary}
        load_backbone(str(stage))  # the folder must load as a backbone before it is kept
        write_text(stage / "pretrain.yaml", dump_yaml(config))
        write_json(stage / "pretrain.json", summary)
        write_text(stage / "README.md", _pretrain_card(config, summary))
        ordinary_permissions(stage)  # safetensors writes 0600 files
    return {"out": out, **summary}


def _pretrain_card(config: Any, s: dict[str, Any]) -> str:
    """The model card of a pretrained backbone folder: what it is, how it was made."""
    lines = [f"# Backbone pretrained by transferkit {__version__}", "",
             f"- objective: {s['objective']} ({s.get('kind', '')}, from {s.get('start')})",
             f"- corpus: {', '.join(config.corpus)} ({s['corpus']['examples']} examples; "
             f"{s.get('train_texts', s.get('train_images'))} trained on, "
             f"{s.get('valid_texts', s.get('valid_images'))} held out)",
             f"- steps: {s['steps']} (best at {s['best_step']}), "
             f"{'stopped early' if s['stopped_early'] else 'ran to the end'}",
             f"- training time: {s['train_seconds']:.0f} s, precision {s['precision']}"]
    for key, label in (("tokens_per_second", "tokens/s"), ("images_per_second", "images/s")):
        if s.get(key):
            lines.append(f"- throughput: {s[key]:.0f} {label}")
    for key in ("valid_perplexity_start", "valid_perplexity_best", "valid_loss_start",
                "valid_loss_best"):
        if s.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: {s[key]:.4g}")
    lines += ["", "Use it as a backbone:", "", "```",
              f"transferkit fit DATA --backbone {config.out} --strategy full", "```",
              "", "Settings: `pretrain.yaml`; measurements: `pretrain.json`; per-step log: "
              "`train_log.jsonl`."]
    return "\n".join(lines) + "\n"
