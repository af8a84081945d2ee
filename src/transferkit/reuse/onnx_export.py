"""``transferkit export RUN --onnx [--int8]``: the whole model as one ONNX graph.

The graph is backbone + head + softmax (sigmoid for multi-label), with dynamic batch (and,
for text, sequence) axes, so ONNX Runtime returns exactly what ``predict_proba`` returns. An
unmerged LoRA adapter is merged into a copy first (the saved run is not touched).

The export proves itself before it is kept: the torch-free :class:`OnnxEngine` (its own
tokenizer / image transform included) is run on up to 60 test examples of the run plus edge
cases, against the PyTorch model in fp32, and an export whose probabilities differ by more
than 1e-4 is refused. ``--int8`` adds a dynamically quantised copy and records its accuracy
change on the run's test split. Everything is built in a staging folder and moved to
``RUN/onnx/`` only when whole, so a failed export leaves an older one intact.
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from .._io import write_json, write_text
from ..artifact.schema import ArtifactConfig
from ..backbones.text import position_limit
from ..data.examples import Examples
from ..errors import ArtifactError, ConfigError, TransferkitError
from ..train.cache import extract_features
from ..train.onnx_graph import EXPORTERS, export_graph, make_exportable
from ..train.onnx_graph import quiet as _quiet
from .onnx_runtime import EXPORT_FILE, FP32_FILE, INT8_FILE, ONNX_DIR, OnnxEngine

PARITY_TOLERANCE = 1e-4
PARITY_EXAMPLES = 60
CARD_START = "<!-- transferkit:onnx -->"
CARD_END = "<!-- /transferkit:onnx -->"


class _ProbabilityGraph(nn.Module):
    """Positional inputs (the exporter's calling convention) -> class probabilities."""

    def __init__(self, model: nn.Module, names: list[str], multilabel: bool) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.multilabel = multilabel

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        logits = self.model(**dict(zip(self.names, tensors, strict=True))).float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)


def _exportable(model: nn.Module) -> nn.Module:
    """A float32 eval copy whose backbone has LoRA merged and eager attention (the backbone
    part is shared with the feature extractor's export: ``train.onnx_features``)."""
    model = copy.deepcopy(model).float().eval()
    make_exportable(model.backbone)
    return model


def _run_test_split(
    run_dir: Path, config: ArtifactConfig, eval_data: str | Path | None,
    text_column: str | None, label_column: str | None,
) -> tuple[Examples | None, str]:
    """Labelled examples to measure on: ``eval_data``, else the run's own test split rebuilt
    from ``run.yaml`` with its seed (the same rows the run was scored on). Without them, the
    second value says why, and the export reports it (parity on edge cases only)."""
    from ..classifier import evaluation_examples

    delimiter = config.label_delimiter if config.multilabel else None
    if eval_data is not None:
        return evaluation_examples(eval_data, config.labels, text_column=text_column,
                                   label_column=label_column, delimiter=delimiter), str(eval_data)
    run_yaml = run_dir / "run.yaml"
    if not run_yaml.is_file():
        return None, f"{run_yaml} is missing, so the run's test split cannot be rebuilt"
    from ..config import build_config, load_yaml
    from ..data import load_data
    from ..data.validate import drop_unseen_labels

    try:
        fit = build_config(load_yaml(run_yaml), {})
        data = load_data(fit.train, fit.valid, fit.test, text_column=fit.text_column,
                         label_column=fit.label_column, per_class=fit.per_class, seed=fit.seed,
                         test_size=fit.test_size, max_bad_fraction=fit.max_bad_fraction,
                         label_delimiter=fit.label_delimiter)
    except TransferkitError as e:
        return None, f"the run's test split could not be rebuilt from {run_yaml} ({e})"
    from ..data import DataReport

    test = drop_unseen_labels(data.test, config.labels, DataReport())
    return test, f"test split of {run_yaml} (seed {fit.seed})"


def _edge_cases(config: ArtifactConfig, max_length: int) -> list[Any]:
    if config.modality == "text":
        return ["a", "ok", " ".join(["transfer"] * (2 * max_length + 5))]
    if config.modality == "audio":  # short, long, resampled, stereo, quiet
        from ..backbones.audio import check_clips

        return check_clips()
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(37, 91), (301, 17), (64, 64), (250, 333)]
    images: list[Any] = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                         for h, w in sizes]
    images.append(Image.fromarray(rng.integers(0, 256, (45, 60), dtype=np.uint8)))  # grey
    return images


def _score(engine: OnnxEngine, examples: Examples, config: ArtifactConfig) -> dict[str, float]:
    from ..adapt import label_indices
    from ..metrics import compute_metrics, compute_multilabel_metrics

    proba = engine.predict_proba(list(examples.inputs))
    truth = label_indices(examples, config.labels)
    if config.multilabel:
        m = compute_multilabel_metrics(truth, proba, config.labels, config.thresholds)
    else:
        m = compute_metrics(truth, proba, config.labels)
    return {"accuracy": float(m["accuracy"]), "macro_f1": float(m["macro_f1"])}


def export_onnx(run_dir: str | Path, *, int8: bool = False, overwrite: bool = False,
                eval_data: str | Path | None = None, text_column: str | None = None,
                label_column: str | None = None, batch_size: int = 32,
                exporter: str = "auto") -> dict[str, Any]:
    """Export ``run_dir`` to ``run_dir/onnx/``; returns what is written to ``export.json``.

    ``exporter``: ``auto`` (TorchScript, dynamo if that fails), ``torchscript`` or ``dynamo``.
    """
    from .._outputs import staged_output
    from ..artifact.store import load_model

    if exporter not in EXPORTERS:
        raise ConfigError(f"Unknown exporter '{exporter}'. Choose one of: {', '.join(EXPORTERS)}.")
    run_dir = Path(run_dir)
    target = run_dir / ONNX_DIR
    if target.exists() and not overwrite:
        raise ArtifactError(
            f"{target} already exists (an earlier export). Pass --overwrite to replace it; the "
            "old export is kept until the new one has passed its checks.")
    start = time.perf_counter()
    model, config = load_model(run_dir)
    if (problem := model.backbone.onnx_problem()) is not None:
        raise ConfigError(f"{run_dir} cannot be exported to ONNX: {problem}.")
    examples, source = _run_test_split(run_dir, config, eval_data, text_column, label_column)
    if int8 and (examples is None or len(examples) == 0):
        raise ConfigError(
            "--int8 measures the accuracy change on labelled data, but there is none here: "
            f"{source if examples is None else 'the evaluation data has no usable rows'}. Pass "
            "--eval-data FILE with labelled examples.")
    text = config.modality == "text"
    if int8 and not text and not any(isinstance(m, nn.Linear)
                                     for m in model.backbone.modules()):
        raise ConfigError(
            f"--int8: {run_dir}'s backbone is a convolutional network. ONNX Runtime's dynamic "
            "int8 quantisation covers MatMul layers only, so it would make this model no "
            "smaller and less accurate (EfficientNet-Lite0: same size, 3.5 points less "
            "accurate). Export without --int8.")
    graph_model = _exportable(model)
    backbone = graph_model.backbone
    info: dict[str, Any] = {
        "format": "transferkit-onnx", "transferkit_version": __version__,
        "fingerprint": config.backbone.fingerprint, "modality": config.modality,
        "multilabel": config.multilabel, "torch_version": torch.__version__,
    }
    if text:
        limit = position_limit(backbone.model.config)  # older runs saved an uncapped length
        max_length = min(backbone.max_length, limit) if limit else backbone.max_length
        pad_id = backbone.tokenizer.pad_token_id
        info["text"] = {"max_length": int(max_length), "pad_id": int(pad_id or 0)}
        sample = dict(backbone.preprocess(["a short sample", "a longer sample text to export"]))
    else:
        max_length = 0
        sample = dict(backbone.preprocess(_edge_cases(config, 0)[:2]))
    names = list(sample)
    info["inputs"] = names
    graph = _ProbabilityGraph(graph_model, names, config.multilabel).eval()

    with staged_output(target, overwrite=True) as stage:
        onnx_path = stage / FP32_FILE
        info["exporter"], info["opset"] = export_graph(graph, sample, onnx_path, text=text,
                                                       exporter=exporter)
        info["export_seconds"] = round(time.perf_counter() - start, 2)
        write_json(stage / EXPORT_FILE, {**info, "int8": False})

        # parity: the torch-free engine (preprocessing included) against PyTorch fp32
        parity_inputs: list[Any] = []
        if examples is not None and len(examples):
            idx = np.linspace(0, len(examples) - 1, min(PARITY_EXAMPLES, len(examples)))
            parity_inputs = [examples.inputs[int(i)] for i in np.unique(idx.astype(int))]
        edge = _edge_cases(config, max_length)  # one word, past max_length; odd image sizes
        parity_inputs += edge
        # the reference is PyTorch itself (the feature extractor would pick ORT for fp32)
        features, _ = extract_features(model.backbone, parity_inputs, batch_size=batch_size,
                                       precision="fp32", engine="torch")
        reference = model.head_proba(features)
        fp32 = OnnxEngine(run_dir, batch_size=batch_size, onnx_dir=stage)
        diff = float(np.abs(fp32.predict_proba(parity_inputs) - reference).max())
        info["fp32"] = {"file": FP32_FILE, "bytes": onnx_path.stat().st_size,
                        "parity_max_abs_diff": diff, "parity_examples": len(parity_inputs),
                        "parity_source": (f"{len(parity_inputs) - len(edge)} examples of the "
                                          f"{source} + {len(edge)} edge cases")
                        if examples is not None else f"{len(edge)} edge cases only: {source}",
                        "parity_tolerance": PARITY_TOLERANCE}
        if not diff <= PARITY_TOLERANCE:
            raise ArtifactError(
                f"ONNX export of {run_dir} refused: its probabilities differ from PyTorch fp32 "
                f"by {diff:.2e} (> {PARITY_TOLERANCE:g}) on {len(parity_inputs)} inputs. The "
                "previous export, if any, is unchanged. Please report this model.")
        info["int8"] = False
        if int8:
            assert examples is not None
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q_start = time.perf_counter()
            int8_path = stage / INT8_FILE
            # Text: every MatMul and the embedding Gathers (most of the bytes). Images: the
            # MatMuls of a ViT; ORT's CPU kernels have no int8-weight ConvInteger.
            ops = None if text else ["MatMul"]
            with _quiet():
                quantize_dynamic(onnx_path, int8_path, weight_type=QuantType.QInt8,
                                 op_types_to_quantize=ops)
            write_json(stage / EXPORT_FILE, {**info, "int8": True})
            q = OnnxEngine(run_dir, int8=True, batch_size=batch_size, onnx_dir=stage)
            ours, base = _score(q, examples, config), _score(fp32, examples, config)
            info["int8"] = {
                "file": INT8_FILE, "bytes": int8_path.stat().st_size,
                "eval_source": source, "eval_examples": len(examples),
                "accuracy_fp32": base["accuracy"], "accuracy_int8": ours["accuracy"],
                "accuracy_change": ours["accuracy"] - base["accuracy"],
                "macro_f1_fp32": base["macro_f1"], "macro_f1_int8": ours["macro_f1"],
                "parity_max_abs_diff": float(np.abs(
                    q.predict_proba(parity_inputs) - reference).max()),
                "quantize_seconds": round(time.perf_counter() - q_start, 2),
            }
        info["total_seconds"] = round(time.perf_counter() - start, 2)
        write_json(stage / EXPORT_FILE, info)
    write_card_section(run_dir, info)
    return info


def card_section(info: dict[str, Any]) -> str:
    fp32 = info["fp32"]
    lines = [
        CARD_START, "## ONNX export", "",
        f"`onnx/{FP32_FILE}` (opset {info['opset']}, {info['exporter']} exporter, "
        f"{fp32['bytes'] / 1e6:.1f} MB): backbone + head + "
        f"{'sigmoid' if info['multilabel'] else 'softmax'}, dynamic batch"
        f"{' and sequence' if info['modality'] == 'text' else ''} axes. Parity with PyTorch "
        f"fp32: max |Δ probability| = {fp32['parity_max_abs_diff']:.2e} on "
        f"{fp32['parity_examples']} inputs (limit {fp32['parity_tolerance']:g}).",
    ]
    q = info.get("int8")
    if q:
        lines += [
            "",
            f"`onnx/{INT8_FILE}` (dynamic int8 quantisation, {q['bytes'] / 1e6:.1f} MB), on "
            f"{q['eval_examples']} examples ({q['eval_source']}):", "",
            "| model | accuracy | macro F1 |", "|---|---:|---:|",
            f"| ONNX fp32 | {q['accuracy_fp32']:.4f} | {q['macro_f1_fp32']:.4f} |",
            f"| ONNX int8 | {q['accuracy_int8']:.4f} | {q['macro_f1_int8']:.4f} |", "",
            f"Accuracy change from int8: {q['accuracy_change'] * 100:+.2f} points.",
        ]
    lines += ["", "```bash", "transferkit predict THIS_FOLDER inputs.csv --output p.csv "
              f"--engine onnx{' --int8' if q else ''}   # no torch needed", "```", CARD_END]
    return "\n".join(lines) + "\n"


def write_card_section(run_dir: Path, info: dict[str, Any]) -> None:
    """Put the export's section into the model card, replacing an older one, keeping the rest."""
    card = run_dir / "README.md"
    old = card.read_text(encoding="utf-8") if card.is_file() else ""
    section = card_section(info)
    pattern = re.compile(re.escape(CARD_START) + r".*?" + re.escape(CARD_END) + r"\n?", re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: section, old, count=1)
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + section
    write_text(card, new)
