"""Run reports: metrics.json, a confusion-matrix PNG, Markdown and self-contained HTML."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402

from .._io import write_json, write_text, write_with  # noqa: E402


def confusion_png(metrics: dict[str, Any]) -> bytes:
    if "confusion_matrix" not in metrics:  # multi-label: per-label scores instead
        return per_label_png(metrics)
    cm = np.array(metrics["confusion_matrix"]["matrix"])
    labels = metrics["confusion_matrix"]["labels"]
    size = max(4.0, 0.55 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=110)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(f"Confusion matrix (accuracy {metrics['accuracy']:.3f})")
    return _png(fig)


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def per_label_png(metrics: dict[str, Any]) -> bytes:
    names = list(metrics["per_class"])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(names) + 2), 4), dpi=110)
    x = np.arange(len(names))
    for offset, key in ((-0.27, "precision"), (0.0, "recall"), (0.27, "f1")):
        ax.bar(x + offset, [metrics["per_class"][n][key] for n in names], width=0.27,
               label=key)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"Per-label scores (micro F1 {metrics['micro_f1']:.3f})")
    return _png(fig)


def _env() -> Environment:
    return Environment(loader=PackageLoader("transferkit", "templates"),
                       # templates are named *.html.j2: "html" alone never matched them
                       autoescape=select_autoescape(["html", "html.j2"]))


def write_model_card(folder: Path, template: str, **context: Any) -> None:
    """The folder's README.md: what it is, how it was made, how to use it (one writer for
    run folders and pretrained backbones; an ONNX export adds its own section later)."""
    write_text(folder / "README.md", _env().get_template(template).render(**context))


def write_run_report(directory: Path, context: dict[str, Any]) -> dict[str, Path]:
    """Write metrics.json, confusion_matrix.png, report.md and report.html into ``directory``.

    ``context`` holds ``metrics``, ``run`` (config and timings), ``data`` (summary),
    ``backbone`` and optionally ``comparison`` rows (name, accuracy, macro_f1).
    """
    png = confusion_png(context["metrics"])
    paths = {
        "metrics": directory / "metrics.json",
        "confusion": directory / "confusion_matrix.png",
        "markdown": directory / "report.md",
        "html": directory / "report.html",
    }
    write_json(paths["metrics"], context["metrics"])
    write_with(paths["confusion"], lambda p: p.write_bytes(png))
    env = _env()
    write_text(paths["markdown"], env.get_template("report.md.j2").render(**context))
    html_ctx = dict(context, confusion_b64=base64.b64encode(png).decode("ascii"))
    write_text(paths["html"], env.get_template("report.html.j2").render(**html_ctx))
    return paths
