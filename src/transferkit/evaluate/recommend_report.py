"""The report of a recommender run: metrics.json, a plot per segment, Markdown and HTML.

One table row per model and segment (warm items: the model has seen them; cold items: no
interactions in training), each metric with its bootstrap interval; one plot per segment
with every model side by side, so what the text embeddings buy on cold items, and what they
cost on warm ones, reads at a glance."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from .._io import write_json, write_text, write_with
from .report import _env, _png

RANKING_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
TABLE_METRICS = (*RANKING_METRICS, "auc", "coverage@10")


def _segment_png(results: dict[str, Any], segment: str) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    fig, (ax, ax_auc) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110,
                                     gridspec_kw={"width_ratios": [4, 1.3]})
    width = 0.8 / len(names)
    x = np.arange(len(RANKING_METRICS))
    for j, name in enumerate(names):
        seg = results[name][segment]
        means = [seg[m]["mean"] for m in RANKING_METRICS]
        err = [[max(seg[m]["mean"] - seg[m]["lo"], 0) for m in RANKING_METRICS],
               [max(seg[m]["hi"] - seg[m]["mean"], 0) for m in RANKING_METRICS]]
        ax.bar(x + (j - (len(names) - 1) / 2) * width, means, width, yerr=err, capsize=2,
               label=name)
        a = seg["auc"]
        ax_auc.bar(j, a["mean"], 0.7, yerr=[[max(a["mean"] - a["lo"], 0)],
                                            [max(a["hi"] - a["mean"], 0)]], capsize=2)
    ax.set_xticks(x, RANKING_METRICS)
    ax.set_title(f"{segment} items ({results[names[0]][segment]['users']} users), 95% CI")
    ax.legend(fontsize=8)
    ax_auc.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax_auc.set_ylim(0.4, 1.0)
    ax_auc.axhline(0.5, color="#999", lw=0.8, ls="--")
    ax_auc.set_title("per-user AUC")
    return _png(fig)


def write_recommend_report(out: Path, r: dict[str, Any]) -> dict[str, Path]:
    """``r``: ``results`` ({model: {segment: {metric: {mean, lo, hi}}}}), ``run`` (title,
    timings, chosen settings), ``split``, ``data_lines``. Writes metrics.json, one PNG per
    segment, report.md and a self-contained report.html."""
    write_json(out / "metrics.json", r["results"])
    images = {}
    for segment in ("warm", "cold"):
        png = _segment_png(r["results"], segment)
        write_with(out / f"{segment}.png", lambda p, png=png: p.write_bytes(png))
        images[segment] = base64.b64encode(png).decode("ascii")
    context = {"r": r, "metrics": TABLE_METRICS, "images": images}
    env = _env()
    write_text(out / "report.md", env.get_template("recommend.md.j2").render(**context))
    write_text(out / "report.html", env.get_template("recommend.html.j2").render(**context))
    return {"json": out / "metrics.json", "md": out / "report.md", "html": out / "report.html"}
