"""Meta-learning on images: prototypical networks on Fashion-MNIST classes never trained on.

EfficientNet-Lite0 (the bundled image model) is meta-trained with ``protonet`` on the first
five classes (T-shirt/top, Trouser, Pullover, Dress, Coat; ``--per-class`` training images
each), then scored in N-way K-shot episodes on the other five (Sandal, Shirt, Sneaker, Bag,
Ankle boot) of the official test split, 600 episodes with a 95% confidence interval. The
baseline is what a user has without meta-learning: prototypes of the same backbone's raw
features on the same episodes. Meta-training runs with ``freeze_batchnorm`` on (the default)
and off, so the cost of letting episodes update batch norm's statistics is measured too, and
with ``--inner-steps S`` also as fo-Proto-MAML (first-order MAML for the head: S steps of the
prototype head on each support, in meta-training and in the episodes scored).

    python benchmarks/protonet_images.py [--seeds 3] [--per-class 200] [--episodes 100]
                                         [--image-size 64] [--k-shot 5] [--inner-steps 10]
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BASE = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
NOVEL = ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def main() -> None:
    import torch
    from common import DATA, arguments, entry, print_table, write_results

    import transferkit
    from transferkit import Classifier
    from transferkit.adapt import TransferModel
    from transferkit.adapt.protonet import meta_evaluate, meta_train_data, read_labelled
    from transferkit.backbones import load_backbone

    ap = arguments(__doc__, seeds=3, per_class=200, episodes=100, image_size=64, k_shot=5)
    ap.add_argument("--inner-steps", type=int, default=0,
                    help="also meta-train and score fo-Proto-MAML with this many inner steps")
    ap.add_argument("--name", default="protonet_images")
    args = ap.parse_args()

    novel = read_labelled(str(DATA / "fashion_mnist.test.npz"), NOVEL, split="test")
    labels = np.array([NOVEL.index(y) for y in novel.labels])
    raw = Classifier(load_backbone("efficientnet_lite0", image_size=args.image_size), "probe")
    raw_feats = raw.context.features(TransferModel(raw.backbone_spec, NOVEL), novel, "raw")
    variants = ["frozen_bn", "updated_bn"] + ["fo_proto_maml"] * bool(args.inner_steps)
    scores: dict[str, list[dict]] = {"raw": [], **{v: [] for v in variants}}
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for seed in range(args.seeds):
        scores["raw"].append(meta_evaluate(raw_feats, labels, NOVEL, k_shot=args.k_shot,
                                           seed=seed))
        data = meta_train_data(str(DATA / "fashion_mnist.train.npz"), BASE,
                               per_class=args.per_class, seed=seed)
        for variant in variants[::-1 if seed % 2 else 1]:
            inner = {"inner_steps": args.inner_steps} if variant == "fo_proto_maml" else {}
            start = time.perf_counter()
            clf = Classifier("efficientnet_lite0", "protonet", seed=seed, cache=False,
                             image_size=args.image_size, strategy_options={
                                 "episodes": args.episodes, "k_shot": args.k_shot,
                                 "freeze_batchnorm": variant != "updated_bn", **inner}
                             ).fit(data)
            seconds[variant].append(time.perf_counter() - start)
            feats = clf.context.features(clf.model, novel, "meta-trained")
            scores[variant].append(meta_evaluate(feats, labels, NOVEL, k_shot=args.k_shot,
                                                 seed=seed, scale=clf.fit_info["scale"],
                                                 **inner))
        print(json.dumps({"seed": seed, **{k: (v[-1]["accuracy"], v[-1]["ci95"])
                                           for k, v in scores.items()}}), flush=True)

    versions = {"transferkit": transferkit.__version__, "torch": torch.__version__}
    mean = {k: statistics.mean(s["accuracy"] for s in v) for k, v in scores.items()}
    common_fields = {"per_seed": {k: [(s["accuracy"], s["ci95"]) for s in v]
                                  for k, v in scores.items()},
                     "seconds": seconds, "per_class": args.per_class, "episodes": args.episodes,
                     "image_size": args.image_size, "n_novel": len(labels)}
    title = f"fashion_mnist 5-way {args.k_shot}-shot on 5 new classes"
    entries = [
        entry(f"{title}: meta-trained vs raw prototypes (mean of {args.seeds} seeds)",
              mean["frozen_bn"], mean["raw"], "accuracy", args.seeds, True, versions,
              **common_fields),
        entry(f"{title}: frozen vs updated batch norm (mean of {args.seeds} seeds)",
              mean["frozen_bn"], mean["updated_bn"], "accuracy", args.seeds, True, versions),
    ]
    if args.inner_steps:
        entries.append(entry(
            f"{title}: fo-Proto-MAML ({args.inner_steps} inner steps) vs protonet (mean of "
            f"{args.seeds} seeds)", mean["fo_proto_maml"], mean["frozen_bn"], "accuracy",
            args.seeds, True, versions, inner_steps=args.inner_steps))
    print_table(entries)
    print(f"results: {write_results(args.name, entries)}")


if __name__ == "__main__":
    main()
