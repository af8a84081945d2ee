"""The report of a backbone ranking: rank.json's table, score plots, Markdown and HTML."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

from .._io import write_text, write_with
from .report import _env, _png


def _scores_png(r: dict[str, Any]) -> bytes:
    """The ordering score per candidate, best at the top, with the time each took."""
    import matplotlib.pyplot as plt

    rows = [c for c in r["candidates"] if c["error"] is None][::-1]
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(9, 0.45 * len(rows) + 1.6), dpi=110,
                                   sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    names = [c["name"] for c in rows]
    ax.barh(names, [c["scores"].get(r["score"]) or 0.0 for c in rows], color="#3a78c2")
    ax.set_xlabel(r["score"])
    ax.set_title(f"candidates ranked by {r['score']}")
    ax_t.barh(names, [c["seconds"].get("total", 0.0) for c in rows], color="#999")
    ax_t.set_xlabel("seconds to score")
    return _png(fig)


def _truth_png(r: dict[str, Any]) -> bytes:
    """Each score against the accuracy the candidates reached (verify), one panel a score."""
    import matplotlib.pyplot as plt

    truth = r["verified"]["accuracy"]
    agree = r["verified"]["agreement"]
    scores = list(agree)
    cols = min(4, len(scores))
    nrows = math.ceil(len(scores) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), dpi=110,
                             squeeze=False)
    for ax in axes.flat[len(scores):]:
        ax.axis("off")
    for ax, score in zip(axes.flat, scores, strict=False):
        pts = [(c["scores"][score], truth[c["name"]], c["name"]) for c in r["candidates"]
               if c["name"] in truth and c["scores"].get(score) is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="#3a78c2")
        for x, y, name in pts:
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        a = agree[score]
        ax.set_title(f"{score}: τw {a['weighted_tau']:.2f}, regret {a['top1_regret']:.3f}",
                     fontsize=9)
        ax.set_xlabel(score, fontsize=8)
        ax.set_ylabel("probe test accuracy", fontsize=8)
        ax.grid(alpha=0.3)
    return _png(fig)


def write_rank_report(out: Path, r: dict[str, Any]) -> dict[str, Path]:
    """report.md, report.html (self-contained) and the PNGs next to rank.json."""
    pngs = {"scores.png": _scores_png(r)}
    if r.get("verified", {}).get("agreement"):
        pngs["score_vs_accuracy.png"] = _truth_png(r)
    for name, data in pngs.items():
        write_with(out / name, lambda p, data=data: p.write_bytes(data))
    score_names = sorted({s for c in r["candidates"] for s in c["scores"]},
                         key=lambda s: (s != r["score"], s))
    context = {"r": r, "score_names": score_names,
               "images": {k: base64.b64encode(v).decode() for k, v in pngs.items()}}
    env = _env()
    write_text(out / "report.md", env.get_template("rank.md.j2").render(**context))
    write_text(out / "report.html", env.get_template("rank.html.j2").render(**context))
    return {"json": out / "rank.json", "html": out / "report.html", "md": out / "report.md"}
