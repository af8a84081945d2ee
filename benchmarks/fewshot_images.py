"""Few-shot images: ``contrastive`` against the ``probe`` on Fashion-MNIST, side by side.

No library does SetFit-style contrastive tuning for images, so the comparison is with what a
user would run otherwise: the frozen-feature probe on the same backbone (EfficientNet-Lite0,
the bundled image model), the same seeded, stratified ``--per-class`` draw from the official
training images, and the same test images (a stratified ``--test-per-class`` sample of the
official test split). The two alternate within each (budget, seed). Wall time = load the
backbone + train + fit the head.

    python benchmarks/fewshot_images.py [--budgets 8,64] [--seeds 3] [--image-size 64]
        [--test-per-class 200] [--option KEY=VALUE ...] [--valid] [--name fewshot_images]

``--option`` overrides ``contrastive``'s image defaults (as ``fit --option`` does). To choose
defaults, ``--valid`` scores on training images outside every draw instead of the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def stratified_sample(images: np.ndarray, labels: np.ndarray, per_class: int,
                      seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), per_class,
                                              replace=False) for k in np.unique(labels)]))


def main() -> None:
    import torch
    from common import DATA, entry, print_table, write_results

    import transferkit
    from transferkit import Classifier, load_data
    from transferkit.cli import parse_options

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budgets", default="8,64")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--option", action="append", help="contrastive option KEY=VALUE")
    ap.add_argument("--valid", action="store_true",
                    help="score on held-out *training* images (for choosing defaults)")
    ap.add_argument("--name", default="fewshot_images")
    args = ap.parse_args()

    train = np.load(DATA / "fashion_mnist.train.npz")
    if args.valid:  # the last 10,000 training images: never in a draw below
        pool = {k: train[k][:50000] for k in ("images", "labels")}
        held = {k: train[k][50000:] for k in ("images", "labels")}
    else:
        pool = {k: train[k] for k in ("images", "labels")}
        test = np.load(DATA / "fashion_mnist.test.npz")
        held = {k: test[k] for k in ("images", "labels")}
    keep = stratified_sample(held["images"], held["labels"], args.test_per_class, seed=1234)
    options = parse_options(args.option)
    versions = {"transferkit": transferkit.__version__, "torch": torch.__version__}
    entries = []
    with tempfile.TemporaryDirectory(prefix="fewshot-images-") as tmp:
        pool_path, held_path = Path(tmp) / "pool.npz", Path(tmp) / "held.npz"
        np.savez(pool_path, images=pool["images"], labels=pool["labels"],
                 classes=train["classes"])
        np.savez(held_path, images=held["images"][keep], labels=held["labels"][keep],
                 classes=train["classes"])
        for budget in [int(b) for b in args.budgets.split(",")]:
            acc = {"contrastive": [], "probe": []}
            secs = {"contrastive": [], "probe": []}
            phase1 = []
            for seed in range(args.seeds):
                data = load_data(pool_path, test=held_path, per_class=budget, seed=seed)
                order = ["contrastive", "probe"][::-1 if seed % 2 else 1]
                for strategy in order:
                    start = time.perf_counter()
                    clf = Classifier("efficientnet_lite0", strategy, seed=seed, cache=False,
                                     image_size=args.image_size,
                                     strategy_options=options if strategy == "contrastive"
                                     else None).fit(data)
                    secs[strategy].append(time.perf_counter() - start)
                    acc[strategy].append(clf.evaluate(data)["accuracy"])
                    if strategy == "contrastive":
                        phase1.append(clf.fit_info["phase1"])
                    print(json.dumps({"per_class": budget, "seed": seed, "strategy": strategy,
                                      "accuracy": acc[strategy][-1],
                                      "seconds": secs[strategy][-1],
                                      "phase1": clf.fit_info.get("phase1")}, default=str),
                          flush=True)
            split = "validation" if args.valid else "test"
            entries.append(entry(
                f"fashion_mnist {budget}/class {split} accuracy, contrastive vs probe (mean of "
                f"{args.seeds} seeds)", statistics.mean(acc["contrastive"]),
                statistics.mean(acc["probe"]), "accuracy", args.seeds, True, versions,
                accuracy_contrastive=acc["contrastive"], accuracy_probe=acc["probe"],
                seconds_contrastive=secs["contrastive"], seconds_probe=secs["probe"],
                phase1=phase1, options=options, image_size=args.image_size,
                n_eval=len(keep)))
            write_results(args.name, entries)
    print_table(entries)
    print(f"results: {write_results(args.name, entries)}")


if __name__ == "__main__":
    main()
