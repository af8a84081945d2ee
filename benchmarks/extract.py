"""Feature extraction: transferkit against SentenceTransformer.encode, side by side.

Same model (bundled MiniLM), same texts (rotten_tomatoes), same batch size, alternating runs.
Reports throughput in fp32 (features must equal the peer's to 1e-4) and in transferkit's
default precision (bf16 autocast where the CPU has fast bf16), the probe's test accuracy in
both precisions, and the speed-up of a cached second run.

    python benchmarks/extract.py [--texts 2000] [--runs 3] [--batch-size 32]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    import sentence_transformers
    import transformers
    from common import DATA, alternate, arguments, entry, median, print_table, timed, write_results
    from sentence_transformers import SentenceTransformer

    import transferkit
    from transferkit import Classifier, load_data
    from transferkit.backbones import ALIASES, load_backbone
    from transferkit.train.cache import FeatureCache, extract_features
    from transferkit.train.device import resolve_precision

    args = arguments(__doc__, texts=2000, runs=3, batch_size=32).parse_args()
    train_csv, test_csv = DATA / "rotten_tomatoes.train.csv", DATA / "rotten_tomatoes.test.csv"
    texts = pd.read_csv(train_csv, keep_default_na=False)["text"].tolist()[: args.texts]
    cpu = torch.device("cpu")
    versions = {"transferkit": transferkit.__version__, "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentence-transformers": sentence_transformers.__version__}
    peer = SentenceTransformer(str(ALIASES["minilm"].bundled_path()), device="cpu")
    ours = load_backbone("minilm")
    default_precision = resolve_precision("auto", cpu)
    bs = args.batch_size

    # Warm-up (first calls pay for lazy initialisation on both sides).
    peer.encode(texts[:64], batch_size=bs)
    extract_features(ours, texts[:64], batch_size=bs, precision="fp32", device=cpu)

    times = alternate(args.runs, {
        "peer": lambda: peer.encode(texts, batch_size=bs),
        "fp32": lambda: extract_features(ours, texts, batch_size=bs, precision="fp32",
                                         device=cpu),
        "auto": lambda: extract_features(ours, texts, batch_size=bs, precision="auto",
                                         device=cpu),
    })
    n = len(texts)
    rate = {k: n / median(v) for k, v in times.items()}
    reference = peer.encode(texts, batch_size=bs)
    fp32, _ = extract_features(ours, texts, batch_size=bs, precision="fp32", device=cpu)
    auto, _ = extract_features(ours, texts, batch_size=bs, precision="auto", device=cpu)
    fp32_diff = float(np.abs(fp32 - reference).max())
    auto_diff = float(np.abs(auto - reference).max())

    # Cached second run: the same extraction through a fresh cache, miss then hit.
    cache = FeatureCache(Path(tempfile.mkdtemp(prefix="tk-bench-")))
    miss, _ = timed(lambda: extract_features(ours, texts, batch_size=bs, cache=cache,
                                             device=cpu))
    hits = [timed(lambda: extract_features(ours, texts, batch_size=bs, cache=cache,
                                           device=cpu))[0] for _ in range(args.runs)]

    # Does the default precision move the probe's test accuracy? Full rotten_tomatoes.
    data = load_data(train_csv, test=test_csv)
    acc = {}
    for precision in ("fp32", default_precision):
        clf = Classifier(ours, "probe", precision=precision, device="cpu", cache=False)
        acc[precision] = clf.fit(data).evaluate(data)["accuracy"]

    entries = [
        entry("extract MiniLM fp32 (texts/s)", rate["fp32"], rate["peer"], "texts/s",
              args.runs, True, versions, max_abs_diff=fp32_diff, batch_size=bs, texts=n),
        entry(f"extract MiniLM default={default_precision} (texts/s)", rate["auto"],
              rate["peer"], "texts/s", args.runs, True, versions, max_abs_diff=auto_diff,
              batch_size=bs, texts=n),
        entry("cached second run vs first run (s)", median(hits), miss, "s", args.runs, False,
              versions, note="peer column = uncached first run of transferkit itself"),
        entry(f"probe test accuracy {default_precision} vs fp32", acc[default_precision],
              acc["fp32"], "accuracy", 1, True, versions,
              delta_points=100 * (acc[default_precision] - acc["fp32"]),
              train=len(data.train), test=len(data.test)),
    ]
    print_table(entries)
    print(f"fp32 max |feature - SentenceTransformer| = {fp32_diff:.2e}; "
          f"{default_precision}: {auto_diff:.2e}")
    print(f"probe accuracy: fp32 {acc['fp32']:.4f}, {default_precision} "
          f"{acc[default_precision]:.4f} ({100 * (acc[default_precision] - acc['fp32']):+.2f} "
          "points)")
    print(f"results: {write_results('extract', entries)}")


if __name__ == "__main__":
    main()
