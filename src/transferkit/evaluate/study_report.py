"""What a study means: curves, labels-to-target, savings over scratch, and the report."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from .._io import write_json, write_text, write_with
from ..data.examples import Dataset
from .report import _env, _png

TARGETS = (0.90, 0.95)


class CellRecord(BaseModel):
    """Schema of one cell in ``study.json`` (tests validate the file against it)."""

    strategy: str
    budget: int | str
    seed: int
    accuracy: float
    macro_f1: float
    n_train: int
    wall_seconds: float
    extract_seconds: float
    train_seconds: float
    trainable_params: int | None
    total_params: int | None
    train_flops: float | None
    steps: int | None = None
    examples_seen: int | None = None
    pretrained: bool = True
    peak_rss_mb: float
    peak_rss_scope: str = "process"


class StudySummary(BaseModel):
    backbone: str
    budgets: list[int | str]
    strategies: list[str]
    seeds: list[int]
    classes: list[str]
    n_test: int
    x_labels_per_class: dict[str, float]
    curves: dict[str, dict[str, dict[str, float]]]
    best_full_score: float
    labels_to_target: dict[str, dict[str, float | None]]
    savings: dict[str, dict[str, dict[str, Any]]]
    best_per_budget: dict[str, str]
    headline: list[str]
    cells: list[CellRecord]
    no_pretraining: list[str] = []
    best_no_pretraining: dict[str, dict[str, Any]] = {}
    best_no_pretraining_to_target: dict[str, float | None] = {}
    no_gain_budgets: list[str] = []
    shared_extraction_seconds: float = 0.0
    provenance: dict[str, Any] = {}


def _x(budget: int | str, data: Dataset) -> float:
    """Labels per class on the x axis; "all" is the average class size of the training set."""
    if budget == "all":
        return len(data.train) / len(data.classes)
    return float(budget)


def labels_to_reach(xs: list[float], ys: list[float], target: float) -> float | None:
    """Smallest labels-per-class where the mean curve reaches ``target`` (log-x interpolation);
    None when it never does within the budgets run."""
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if y >= target:
            if i == 0:
                return x
            x0, y0 = xs[i - 1], ys[i - 1]
            frac = (target - y0) / (y - y0) if y != y0 else 1.0
            return float(math.exp(math.log(x0) + frac * (math.log(x) - math.log(x0))))
    return None


def summarise(cells: list[dict[str, Any]], plan: Any, data: Dataset) -> dict[str, Any]:
    xs = {str(b): _x(b, data) for b in plan.budgets}
    pretrained = {c["strategy"]: c.get("pretrained", True) for c in cells}
    order = sorted(plan.budgets, key=lambda b: xs[str(b)])
    curves: dict[str, dict[str, dict[str, float]]] = {}
    for s in plan.strategies:
        curves[s] = {}
        for b in order:
            rows = [c for c in cells if c["strategy"] == s and str(c["budget"]) == str(b)]
            if not rows:
                continue
            acc = np.array([r["accuracy"] for r in rows])
            curves[s][str(b)] = {
                "x": xs[str(b)], "accuracy_mean": float(acc.mean()),
                "accuracy_std": float(acc.std()),
                "macro_f1_mean": float(np.mean([r["macro_f1"] for r in rows])),
                "wall_seconds_mean": float(np.mean([r["wall_seconds"] for r in rows])),
                "n": len(rows)}
    top = str(order[-1])
    best = max(curves[s][top]["accuracy_mean"] for s in curves if top in curves[s])
    to_target: dict[str, dict[str, float | None]] = {}
    for s, curve in curves.items():
        pts = [curve[str(b)] for b in order if str(b) in curve]
        to_target[s] = {f"{int(t * 100)}%": labels_to_reach(
            [p["x"] for p in pts], [p["accuracy_mean"] for p in pts], t * best)
            for t in TARGETS}
    max_x = max(xs.values())
    # Pretraining is compared with the best one can do without it *at each budget*: the
    # envelope of every no-pretraining curve (scratch and the baselines), never the weakest.
    reference = [s for s in curves if not pretrained.get(s, True)]
    envelope: dict[str, dict[str, Any]] = {}
    for b in order:
        rows = [(curves[r][str(b)]["accuracy_mean"], r) for r in reference if str(b) in curves[r]]
        if rows:
            score, who = max(rows)
            envelope[str(b)] = {"x": xs[str(b)], "accuracy_mean": score, "baseline": who}
    pts = list(envelope.values())
    envelope_to_target = {f"{int(t * 100)}%": labels_to_reach(
        [p["x"] for p in pts], [p["accuracy_mean"] for p in pts], t * best) for t in TARGETS}
    savings: dict[str, dict[str, dict[str, Any]]] = {}
    for s in curves:
        if s in reference or not envelope:
            continue
        savings[s] = {}
        for t, ours in to_target[s].items():
            if ours is None:
                continue
            theirs = envelope_to_target[t]
            savings[s][t] = {"ratio": (theirs if theirs is not None else max_x) / ours,
                             "lower_bound": theirs is None, "labels": ours,
                             "baseline_labels": theirs}
    best_per_budget = {str(b): max((s for s in curves if str(b) in curves[s]),
                                   key=lambda s, b=b: curves[s][str(b)]["accuracy_mean"])
                       for b in order}
    # where transfer does not pay: budgets at which no pretrained strategy beats the envelope
    no_gain = [str(b) for b in order if str(b) in envelope and not any(
        curves[s][str(b)]["accuracy_mean"] > envelope[str(b)]["accuracy_mean"]
        for s in curves if s not in reference and str(b) in curves[s])]
    target_of = "the best full-data accuracy" if top == "all" else \
        f"the best accuracy at {top} labels per class"
    headline = []
    for s in curves:
        if s in reference or to_target[s]["90%"] is None:
            continue
        line = (f"{s}: reaches 90% of {target_of} ({best:.3f}) with "
                f"{to_target[s]['90%']:.0f} labels per class")
        vs = savings.get(s, {}).get("90%")
        if vs:
            more = "more than " if vs["lower_bound"] else ""
            line += (f": {more}×{vs['ratio']:.1f} fewer labels than the best no-pretraining "
                     "baseline at each budget")
        headline.append(line)
    for b in no_gain:
        headline.append(f"at {b} labels per class transfer does not pay: "
                        f"{envelope[b]['baseline']} ({envelope[b]['accuracy_mean']:.3f}) is "
                        "level with or above every pretrained strategy")
    summary = {
        "backbone": plan.backbone, "budgets": plan.budgets, "strategies": plan.strategies,
        "seeds": plan.seeds, "classes": data.classes, "n_test": len(data.test),
        "x_labels_per_class": xs, "curves": curves, "best_full_score": best,
        "labels_to_target": to_target, "savings": savings, "best_per_budget": best_per_budget,
        "headline": headline, "cells": cells, "no_pretraining": reference,
        "best_no_pretraining": envelope, "best_no_pretraining_to_target": envelope_to_target,
        "no_gain_budgets": no_gain,
    }
    return summary


def _curve_png(summary: dict[str, Any]) -> bytes:
    return _png(curve_figure(summary))


def curve_figure(summary: dict[str, Any]) -> Any:
    """Accuracy against labels per class, one curve (mean +- std over seeds) per strategy."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for s, curve in summary["curves"].items():
        pts = sorted(curve.values(), key=lambda p: p["x"])
        x = np.array([p["x"] for p in pts])
        y = np.array([p["accuracy_mean"] for p in pts])
        sd = np.array([p["accuracy_std"] for p in pts])
        ax.plot(x, y, marker="o", label=s)
        ax.fill_between(x, y - sd, y + sd, alpha=0.15)
    ax.axhline(0.9 * summary["best_full_score"], color="grey", ls="--", lw=0.8)
    # x in axes fractions, y in data: the label stays inside whatever the log scale's limits
    ax.text(0.01, 0.9 * summary["best_full_score"], "90% of best", va="bottom", fontsize=8,
            color="grey", transform=ax.get_yaxis_transform())
    ax.set_xscale("log")
    ax.set_xlabel("labelled examples per class (log)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Accuracy vs labels — {summary['backbone']}")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _time_png(summary: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for s, curve in summary["curves"].items():
        pts = sorted(curve.values(), key=lambda p: p["wall_seconds_mean"])
        ax.plot([p["wall_seconds_mean"] for p in pts], [p["accuracy_mean"] for p in pts],
                marker="o", label=s)
    ax.set_xscale("log")
    ax.set_xlabel("wall time per run, s (log)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs time")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def write_study_report(out: Path, summary: dict[str, Any]) -> dict[str, Path]:
    StudySummary.model_validate(summary)  # what we write is what the schema promises
    pngs = {"accuracy_vs_labels.png": _curve_png(summary),
            "accuracy_vs_time.png": _time_png(summary)}
    for name, data in pngs.items():
        write_with(out / name, lambda p, data=data: p.write_bytes(data))
    write_json(out / "study.json", summary)
    env = _env()
    context = {"s": summary, "images": {k: base64.b64encode(v).decode() for k, v in pngs.items()}}
    write_text(out / "report.md", env.get_template("study.md.j2").render(**context))
    write_text(out / "report.html", env.get_template("study.html.j2").render(**context))
    return {"json": out / "study.json", "html": out / "report.html", "md": out / "report.md"}
