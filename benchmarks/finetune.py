"""Fine-tuning: transferkit against transformers.Trainer, side by side.

Same model (bundled MiniLM), same data (a seeded subset of rotten_tomatoes train, the full
test split), same batch size, epochs and learning rate. Each run is its own subprocess (so its
peak memory is its own), and the contenders alternate round by round on the shared cores.

    python benchmarks/finetune.py [--train 2000] [--epochs 1] [--runs 3]
    python benchmarks/finetune.py --prefix --backbone mpnet --epochs 2   # the prefix cache

Contenders: transferkit ``full`` (default precision: bf16 autocast where the CPU runs it
fast), ``transformers.Trainer`` in its default fp32 and with ``bf16=True``, and transferkit
``lora``. Reported: training wall time per epoch, total wall time (model load to test
metrics), test accuracy, trainable parameters and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent


def _data(n_train: int, seed: int):
    import pandas as pd
    from common import DATA

    train = pd.read_csv(DATA / "rotten_tomatoes.train.csv", keep_default_na=False)
    test = pd.read_csv(DATA / "rotten_tomatoes.test.csv", keep_default_na=False)
    train = train.sample(n=min(n_train, len(train)), random_state=seed).reset_index(drop=True)
    return train, test


def worker_transferkit(args: argparse.Namespace, strategy: str, **extra: object) -> dict:
    from transferkit import Classifier
    from transferkit.data.examples import Dataset, Examples

    start = time.perf_counter()
    train, test = _data(args.train, args.seed)
    classes = sorted(train["label"].unique())
    tr = Examples(train["text"].tolist(), train["label"].tolist(),
                  [str(i) for i in range(len(train))], "text")
    te = Examples(test["text"].tolist(), test["label"].tolist(),
                  [str(i) for i in range(len(test))], "text")
    data = Dataset(train=tr, test=te, classes=classes)
    options = {"epochs": args.epochs, "valid_fraction": 0.0, "patience": None,
               "warmup_ratio": 0.0, "weight_decay": 0.0}
    if strategy in ("full", "partial"):
        options["lr"] = args.lr
    options.update(extra)
    clf = Classifier(args.backbone, strategy, strategy_options=options, batch_size=args.batch_size,
                     seed=args.seed, cache=False)
    clf.fit(data)
    acc = clf.evaluate(data)["accuracy"]
    info = clf.fit_info
    later = info["epoch_seconds"][1:] or info["epoch_seconds"]
    return {"train_seconds_per_epoch": info["train_seconds"] / args.epochs,
            "later_epoch_seconds": sum(later) / len(later),
            "prefix_cache_seconds": info.get("prefix_cache_seconds", 0.0),
            "total_seconds": time.perf_counter() - start, "accuracy": acc,
            "trainable_params": info["trainable_params"], "total_params": info["total_params"],
            "precision": info["precision"]}


def worker_trainer(args: argparse.Namespace, bf16: bool) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset as HFDataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from transferkit.backbones import ALIASES

    hf_logging.set_verbosity_error()
    start = time.perf_counter()
    train, test = _data(args.train, args.seed)
    classes = sorted(train["label"].unique())
    index = {c: i for i, c in enumerate(classes)}
    path = str(ALIASES["minilm"].bundled_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(classes))

    def encode(frame):
        ds = HFDataset.from_dict({"text": frame["text"].tolist(),
                                  "label": [index[c] for c in frame["label"]]})
        return ds.map(lambda b: tok(b["text"], truncation=True, max_length=256), batched=True,
                      remove_columns=["text"])

    targs = TrainingArguments(
        output_dir=str(Path(args.tmp) / "trainer"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, num_train_epochs=args.epochs,
        learning_rate=args.lr, warmup_steps=0, weight_decay=0.0, lr_scheduler_type="linear",
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[],
        use_cpu=True, bf16=bf16, seed=args.seed, dataloader_num_workers=0,
        disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=encode(train),
                      data_collator=DataCollatorWithPadding(tok))
    result = trainer.train()
    pred = trainer.predict(encode(test))
    acc = float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())
    n_params = sum(p.numel() for p in model.parameters())
    del torch
    return {"train_seconds_per_epoch": result.metrics["train_runtime"] / args.epochs,
            "total_seconds": time.perf_counter() - start, "accuracy": acc,
            "trainable_params": n_params, "total_params": n_params,
            "precision": "bf16" if bf16 else "fp32"}


CONTENDERS = {
    "transferkit full": lambda a: worker_transferkit(a, "full"),
    "transferkit lora": lambda a: worker_transferkit(a, "lora"),
    "Trainer fp32": lambda a: worker_trainer(a, False),
    "Trainer bf16": lambda a: worker_trainer(a, True),
    "transferkit partial": lambda a: worker_transferkit(a, "partial", train_layers=2),
    "transferkit partial, no prefix cache": lambda a: worker_transferkit(
        a, "partial", train_layers=2, cache_prefix=False),
}
MAIN = ["transferkit full", "transferkit lora", "Trainer fp32", "Trainer bf16"]
PREFIX = ["transferkit partial", "transferkit partial, no prefix cache"]


def main() -> None:
    from common import arguments

    ap = arguments(__doc__, train=2000, epochs=1, runs=3, batch_size=32, lr=5e-5, seed=0)
    ap.add_argument("--worker", choices=sorted(CONTENDERS))
    ap.add_argument("--tmp", default="/tmp/tk-bench-finetune")
    ap.add_argument("--prefix", action="store_true",
                    help="compare partial top-2 with and without the frozen-prefix cache "
                         "(writes results/finetune_prefix.json)")
    ap.add_argument("--backbone", default="minilm",
                    help="transferkit's backbone (the Trainer contenders always run MiniLM; "
                         "with --prefix: e.g. mpnet, 12 layers, writing "
                         "results/finetune_prefix_mpnet.json)")
    args = ap.parse_args()
    if args.backbone != "minilm" and not (args.prefix or args.worker):
        raise SystemExit("--backbone is for --prefix: the Trainer contenders run MiniLM")
    sys.path.insert(0, str(HERE))

    if args.worker:
        out = CONTENDERS[args.worker](args)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(out))
        return

    import statistics

    import torch
    import transformers
    from common import entry, print_table, write_results

    import transferkit

    names = PREFIX if args.prefix else MAIN
    runs: dict[str, list[dict]] = {n: [] for n in names}
    base = [sys.executable, str(Path(__file__).resolve()), "--train", str(args.train),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr",
            str(args.lr), "--seed", str(args.seed), "--tmp", args.tmp,
            "--backbone", args.backbone]
    for r in range(args.runs):
        for name in names:
            proc = subprocess.run([*base, "--worker", name], capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            runs[name].append(json.loads(line[0][7:]))
            print(f"round {r + 1} {name}: {runs[name][-1]}", flush=True)

    def med(name: str, key: str) -> float:
        return float(statistics.median(x[key] for x in runs[name]))

    versions = {"transferkit": transferkit.__version__, "transformers": transformers.__version__,
                "torch": torch.__version__}
    n = args.runs
    entries = []
    for peer in ("Trainer fp32", "Trainer bf16"):
        if peer in runs and "transferkit full" in runs:
            entries.append(entry(f"full FT train s/epoch vs {peer}",
                                 med("transferkit full", "train_seconds_per_epoch"),
                                 med(peer, "train_seconds_per_epoch"), "s", n, False, versions,
                                 ours_accuracy=med("transferkit full", "accuracy"),
                                 peer_accuracy=med(peer, "accuracy")))
            entries.append(entry(f"full FT total wall s vs {peer}",
                                 med("transferkit full", "total_seconds"),
                                 med(peer, "total_seconds"), "s", n, False, versions))
            entries.append(entry(f"full FT test accuracy vs {peer}",
                                 med("transferkit full", "accuracy"), med(peer, "accuracy"),
                                 "accuracy", n, True, versions))
    if "transferkit lora" in runs and "transferkit full" in runs:
        for key, unit, label in (("trainable_params", "params", "trainable parameters"),
                                 ("peak_rss_mb", "MiB", "peak RSS"),
                                 ("train_seconds_per_epoch", "s", "train s/epoch")):
            entries.append(entry(f"lora vs full: {label}", med("transferkit lora", key),
                                 med("transferkit full", key), unit, n, False, versions,
                                 note="peer column = transferkit full"))
        entries.append(entry("lora vs full: test accuracy", med("transferkit lora", "accuracy"),
                             med("transferkit full", "accuracy"), "accuracy", n, True,
                             versions, note="peer column = transferkit full"))
    if args.prefix:
        a, b = PREFIX
        entries.append(entry("partial top-2: s per epoch after the first, cached vs not",
                             med(a, "later_epoch_seconds"), med(b, "later_epoch_seconds"), "s",
                             n, False, versions,
                             prefix_cache_seconds=med(a, "prefix_cache_seconds"),
                             ours_accuracy=med(a, "accuracy"), peer_accuracy=med(b, "accuracy"),
                             note="peer column = transferkit partial without the cache"))
        entries.append(entry("partial top-2: total wall s, cached vs not",
                             med(a, "total_seconds"), med(b, "total_seconds"), "s", n, False,
                             versions, note="peer column = transferkit partial without the cache"))
    print_table(entries)
    for name in names:
        print(f"{name}: accuracy {med(name, 'accuracy'):.4f}, "
              f"train {med(name, 'train_seconds_per_epoch'):.1f} s/epoch, total "
              f"{med(name, 'total_seconds'):.1f} s, peak RSS {med(name, 'peak_rss_mb'):.0f} MiB")
    name = "finetune" if not args.prefix else "finetune_prefix" + (
        "" if args.backbone == "minilm" else f"_{args.backbone}")
    print(f"results: {write_results(name, entries, backbone=args.backbone)}")


if __name__ == "__main__":
    main()
