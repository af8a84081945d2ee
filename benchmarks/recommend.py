"""Cold-start recommendation on MovieLens-100K: pretrained item text embeddings against a
tuned collaborative-filtering baseline.

Per seed: 20% of the films held out entirely (cold), each user's latest 20% of the warm
interactions held out (temporal), every model fitted on the same training rows: popularity,
`implicit` ALS and BPR (settings chosen on a validation split of the training rows, never
the test: ALS over the `full` grid), content (MiniLM embeddings of "title. genres", users as
the sum of their films), and the hybrid (ALS factors for warm films, a text -> factor map
chosen on the validation split's pseudo-cold films for cold ones). NDCG@10, Recall@20 and
AUC on warm and cold films separately, plus chance; mean and sd over the seeds; wall times.

``--strategy full`` (or partial, lora...: ``recommend fit --strategy``) adds two rows per
seed, ``content+full`` and ``hybrid+full``: the same split and ALS, with MiniLM fine-tuned
on the training interactions toward the validation split's ALS factors (early stopping on
its pseudo-cold films) before the text models are fit; slow on CPU (minutes a seed).

    python recommend.py                     # 3 seeds, full ALS grid
    python recommend.py --strategy full     # + the fine-tuned encoder's rows
    python recommend.py --seeds 1 --tune small
"""

from __future__ import annotations

import statistics
import time
from importlib.metadata import version
from typing import Any

from common import DATA, arguments, entry, print_table, write_results

MODELS = ["popularity", "als", "bpr", "content", "hybrid"]
METRICS = ["ndcg@10", "recall@20", "auc"]


def main() -> None:
    ap = arguments(__doc__, seeds=3, tune="full", cold_share=0.2, test_share=0.2, threads=1,
                   backbone="minilm", name="recommend")
    ap.add_argument("--strategy", default="probe",
                    help="Also fine-tune the encoder with this strategy (default: probe, "
                         "no extra rows).")
    args = ap.parse_args()
    from transferkit.recommend.embed import embed_texts, text_backbone
    from transferkit.recommend.encoder import FROZEN, EncoderTuner, check_strategy
    from transferkit.recommend.interactions import read_recommendation_data
    from transferkit.recommend.split import split_rows
    from transferkit.recommend.training import evaluate_models, train_models

    start = time.perf_counter()
    data, catalogue, _ = read_recommendation_data(
        DATA / "movielens100k.ratings.csv", DATA / "movielens100k.items.csv",
        item_text=["title", "genres"])
    read_s = time.perf_counter() - start
    encoder = text_backbone(args.backbone)
    # timed without the cache: what a first run pays to embed the catalogue
    embeddings, embed = embed_texts(encoder, catalogue.texts, catalogue.origins, cache=False)
    print(f"read {read_s:.1f} s; embedded {len(catalogue)} films in {embed['seconds']:.1f} s")

    per_seed: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        split = split_rows(data.users, data.items, data.times, cold_share=args.cold_share,
                           test_share=args.test_share, seed=seed)
        trained = train_models(data, len(catalogue), split, embeddings, models=MODELS,
                               seed=seed, threads=args.threads, grid=args.tune)
        results = evaluate_models(trained, data, split, seed=seed)
        seconds = dict(trained.seconds)
        tuned_info = None
        if args.strategy != FROZEN:
            t1 = time.perf_counter()
            # a fresh pretrained encoder per seed: tuning changes it in place
            tuner = EncoderTuner(text_backbone(args.backbone), catalogue.texts,
                                 catalogue.origins, check_strategy(args.strategy))
            tuned = train_models(data, len(catalogue), split, embeddings,
                                 models=["content", "hybrid"], seed=seed,
                                 threads=args.threads, grid=args.tune, tune_encoder=tuner)
            tuned_results = evaluate_models(tuned, data, split, seed=seed)
            for model in ("content", "hybrid"):
                results[f"{model}+{args.strategy}"] = tuned_results[model]
                seconds[f"{model}+{args.strategy}"] = tuned.seconds[model]
            tuned_info = {k: v for k, v in tuned.tuning["encoder"].items()
                          if k not in ("options",)}
            tuned_info["wall_seconds"] = time.perf_counter() - t1
            tuned_info["text_map"] = tuned.tuning["text_map"]["chosen"]
        per_seed.append({"seed": seed, "split": split.summary(len(data.user_ids),
                                                              len(catalogue)),
                         "results": {m: {s: {k: r[s][k] for k in METRICS}
                                         for s in ("warm", "cold")} for m, r in results.items()},
                         "seconds": seconds, "encoder": tuned_info,
                         "chosen": {k: trained.tuning[k]["chosen"]
                                    for k in ("als", "bpr", "text_map")},
                         "map_trials": trained.tuning["text_map"]["trials"],
                         "wall_seconds": time.perf_counter() - t0})
        done = per_seed[-1]
        print(f"seed {seed}: {done['wall_seconds']:.0f} s; ALS {done['chosen']['als']}; "
              f"map {done['chosen']['text_map']}")
        if tuned_info:
            print(f"  {args.strategy}: {tuned_info['wall_seconds']:.0f} s, "
                  f"{tuned_info['steps']} steps, best step {tuned_info['best_step']}")
    table = summarise(per_seed)
    show(table)
    versions = {"transferkit": version("transferkit"), "implicit": version("implicit")}

    def mean(model: str, seg: str, metric: str) -> float:
        return table[model][seg][metric]["mean"]

    entries = [
        entry("cold NDCG@10, hybrid vs popularity", mean("hybrid", "cold", "ndcg@10"),
              mean("popularity", "cold", "ndcg@10"), "NDCG@10", args.seeds, True, versions),
        entry("cold Recall@20, hybrid vs popularity", mean("hybrid", "cold", "recall@20"),
              mean("popularity", "cold", "recall@20"), "Recall@20", args.seeds, True, versions),
        entry("cold NDCG@10, hybrid vs content", mean("hybrid", "cold", "ndcg@10"),
              mean("content", "cold", "ndcg@10"), "NDCG@10", args.seeds, True, versions),
        entry("warm NDCG@10, hybrid vs tuned ALS", mean("hybrid", "warm", "ndcg@10"),
              mean("als", "warm", "ndcg@10"), "NDCG@10", args.seeds, True, versions),
        entry("warm Recall@20, hybrid vs tuned ALS", mean("hybrid", "warm", "recall@20"),
              mean("als", "warm", "recall@20"), "Recall@20", args.seeds, True, versions),
    ]
    tuned = f"hybrid+{args.strategy}"
    if tuned in table:
        entries += [
            entry(f"cold NDCG@10, hybrid with MiniLM fine-tuned ({args.strategy}) vs frozen",
                  mean(tuned, "cold", "ndcg@10"), mean("hybrid", "cold", "ndcg@10"), "NDCG@10",
                  args.seeds, True, versions),
            entry(f"cold Recall@20, hybrid with MiniLM fine-tuned ({args.strategy}) vs frozen",
                  mean(tuned, "cold", "recall@20"), mean("hybrid", "cold", "recall@20"),
                  "Recall@20", args.seeds, True, versions),
            entry(f"fit seconds per seed, hybrid fine-tuned ({args.strategy}) vs frozen",
                  sum(table[tuned]["seconds"].values()),
                  sum(table["hybrid"]["seconds"].values()), "s", args.seeds, False, versions)]
    print_table(entries)
    goals = {"cold_hybrid_far_above_popularity_and_chance":
             mean("hybrid", "cold", "ndcg@10") > 3 * max(mean("popularity", "cold", "ndcg@10"),
                                                         mean("chance", "cold", "ndcg@10")),
             "warm_hybrid_within_1_point_of_als":
             mean("hybrid", "warm", "ndcg@10") >= mean("als", "warm", "ndcg@10") - 0.01
             and mean("hybrid", "warm", "recall@20") >= mean("als", "warm", "recall@20") - 0.01}
    print(goals)
    path = write_results(args.name, entries, table=table, seeds=per_seed, goals=goals,
                         embedding={"films": len(catalogue), "seconds": embed["seconds"],
                                    "backbone": args.backbone},
                         protocol={"cold_share": args.cold_share, "test_share": args.test_share,
                                   "tune": args.tune, "threads": args.threads,
                                   "item_text": "title. genres",
                                   "strategy": args.strategy})
    print(f"results: {path}")


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over seeds per model, segment and metric, with the median wall times."""
    table: dict[str, Any] = {}
    for model in per_seed[0]["results"]:
        table[model] = {}
        for seg in ("warm", "cold"):
            table[model][seg] = {}
            for metric in METRICS:
                vals = [s["results"][model][seg][metric]["mean"] for s in per_seed]
                table[model][seg][metric] = {
                    "mean": statistics.fmean(vals),
                    "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals}
        if model in per_seed[0]["seconds"]:
            table[model]["seconds"] = {
                k: statistics.median(s["seconds"][model][k] for s in per_seed)
                for k in ("tune", "fit")}
    return table


def show(table: dict[str, Any]) -> None:
    print(f"\n{'model':<11} {'warm NDCG@10':>16} {'warm R@20':>16} {'cold NDCG@10':>16} "
          f"{'cold R@20':>16} {'tune s':>7} {'fit s':>6}")
    for model, row in table.items():
        cells = [f"{row[s][m]['mean']:.4f} ± {row[s][m]['sd']:.4f}"
                 for s in ("warm", "cold") for m in ("ndcg@10", "recall@20")]
        secs = row.get("seconds", {"tune": 0.0, "fit": 0.0})
        print(f"{model:<11} " + " ".join(f"{c:>16}" for c in cells)
              + f" {secs['tune']:>7.1f} {secs['fit']:>6.2f}")


if __name__ == "__main__":
    main()
