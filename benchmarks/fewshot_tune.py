"""Choose ``contrastive`` text defaults on validation texts drawn from the *training* files.

Each training file is split once (seeded, stratified): a pool that the ``--per-class``
budgets are drawn from, and ``--valid-size`` held-out rows that score every option set.
The test splits are never read, so defaults chosen here are not fitted to the numbers that
``fewshot.py`` reports.

    python benchmarks/fewshot_tune.py --per-class 64 --seeds 2 \\
        --set "epochs=12" --set "epochs=24" --set "epochs=24 lr=5e-5"

Each ``--set`` is one option set (space-separated KEY=VALUE, as ``fit --option`` reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    import pandas as pd
    from common import DATA, write_results
    from sklearn.model_selection import train_test_split

    from transferkit import Classifier, load_data
    from transferkit.cli import parse_options

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--datasets", default="rotten_tomatoes,sms_spam")
    ap.add_argument("--valid-size", type=int, default=1000)
    ap.add_argument("--set", action="append", required=True, dest="sets")
    ap.add_argument("--name", default="fewshot_tune")
    args = ap.parse_args()
    option_sets = [parse_options(s.split()) for s in args.sets]

    rows = []
    with tempfile.TemporaryDirectory(prefix="fewshot-tune-") as tmp:
        for ds in args.datasets.split(","):
            frame = pd.read_csv(DATA / f"{ds}.train.csv", keep_default_na=False)
            pool, valid = train_test_split(frame, test_size=args.valid_size, random_state=0,
                                           stratify=frame["label"])
            pool_path, valid_path = Path(tmp) / f"{ds}.pool.csv", Path(tmp) / f"{ds}.valid.csv"
            pool.to_csv(pool_path, index=False)
            valid.to_csv(valid_path, index=False)
            for seed in range(args.seeds):
                data = load_data(pool_path, test=valid_path, per_class=args.per_class,
                                 seed=seed)
                for options in option_sets:
                    start = time.perf_counter()
                    clf = Classifier("minilm", "contrastive", seed=seed, cache=False,
                                     strategy_options=options).fit(data)
                    row = {"dataset": ds, "seed": seed, "options": options,
                           "valid_accuracy": clf.evaluate(data)["accuracy"],
                           "seconds": time.perf_counter() - start,
                           "steps": clf.fit_info["phase1"]["steps"]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    summary = []
    for ds in args.datasets.split(","):
        for options in option_sets:
            accs = [r["valid_accuracy"] for r in rows
                    if r["dataset"] == ds and r["options"] == options]
            summary.append({"dataset": ds, "options": options,
                            "valid_accuracy_mean": statistics.mean(accs), "runs": accs})
            print(f"{ds:16s} {json.dumps(options):40s} {statistics.mean(accs):.4f} {accs}")
    path = write_results(args.name, [], per_class=args.per_class, valid_size=args.valid_size,
                         summary=summary, runs=rows)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
