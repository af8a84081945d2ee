"""Feature extraction: transferkit against SentenceTransformer.encode, side by side.

Same model (bundled MiniLM), same texts (rotten_tomatoes), same batch size, alternating runs.
Reports throughput in fp32 (features must equal the peer's to 1e-4) with transferkit's default
engine (``engine="auto"``: ONNX Runtime where it was measured faster, which for text encoders
is not the case, so PyTorch) and with ``engine="onnx"`` forced, and in transferkit's default
precision (bf16 autocast where the CPU has fast bf16, always PyTorch), the probe's test
accuracy in both precisions, and the speed-up of a cached second run. Then EfficientNet-Lite0
on Fashion-MNIST test images, where ``auto`` does pick ONNX Runtime, against transferkit's own
PyTorch engine (the same timm forward any peer runs). One-time ONNX exports (cached on disk by
fingerprint) are made before the timed runs and reported apart.

    python benchmarks/extract.py [--texts 2000] [--runs 3] [--batch-size 32] [--images 512]
        [--image-size 64]
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
    import onnxruntime
    import sentence_transformers
    import timm
    import transformers
    from common import DATA, alternate, arguments, entry, median, print_table, timed, write_results
    from PIL import Image
    from sentence_transformers import SentenceTransformer

    import transferkit
    from transferkit import Classifier, load_data
    from transferkit.backbones import ALIASES, load_backbone
    from transferkit.train.cache import FeatureCache, extract_features
    from transferkit.train.device import resolve_precision

    args = arguments(__doc__, texts=2000, runs=3, batch_size=32, images=512,
                     image_size=64).parse_args()
    train_csv, test_csv = DATA / "rotten_tomatoes.train.csv", DATA / "rotten_tomatoes.test.csv"
    texts = pd.read_csv(train_csv, keep_default_na=False)["text"].tolist()[: args.texts]
    cpu = torch.device("cpu")
    versions = {"transferkit": transferkit.__version__, "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentence-transformers": sentence_transformers.__version__,
                "onnxruntime": onnxruntime.__version__}
    peer = SentenceTransformer(str(ALIASES["minilm"].bundled_path()), device="cpu")
    ours = load_backbone("minilm")
    default_precision = resolve_precision("auto", cpu)
    bs = args.batch_size

    def extract(backbone, inputs, precision="fp32", engine="auto", **kw):
        return extract_features(backbone, inputs, batch_size=bs, precision=precision,
                                device=cpu, engine=engine, **kw)

    # Warm-up (first calls pay for lazy initialisation on both sides); the ONNX export (or,
    # when an earlier run made it, its load and check) happens here, once.
    peer.encode(texts[:64], batch_size=bs)
    extract(ours, texts[:64])
    export_seconds, _ = timed(lambda: extract(ours, texts[:64], engine="onnx"))

    times = alternate(args.runs, {
        "peer": lambda: peer.encode(texts, batch_size=bs),
        "fp32": lambda: extract(ours, texts),
        "fp32 onnx": lambda: extract(ours, texts, engine="onnx"),
        "auto": lambda: extract(ours, texts, precision="auto"),
    })
    n = len(texts)
    rate = {k: n / median(v) for k, v in times.items()}
    reference = peer.encode(texts, batch_size=bs)
    fp32, fp32_stats = extract(ours, texts)
    fp32_onnx, onnx_stats = extract(ours, texts, engine="onnx")
    auto, auto_stats = extract(ours, texts, precision="auto")
    fp32_diff = float(np.abs(fp32 - reference).max())
    onnx_diff = float(np.abs(fp32_onnx - reference).max())
    engines_diff = float(np.abs(fp32_onnx - fp32).max())
    auto_diff = float(np.abs(auto - reference).max())

    # EfficientNet-Lite0 on Fashion-MNIST: auto (ONNX Runtime) against the PyTorch engine.
    pixels = np.load(DATA / "fashion_mnist.test.npz")["images"][: args.images]
    images = [Image.fromarray(p).convert("RGB") for p in pixels]
    lite = load_backbone("efficientnet_lite0", image_size=args.image_size)
    extract(lite, images[:bs], engine="torch")
    image_export_seconds, _ = timed(lambda: extract(lite, images[:bs], engine="onnx"))
    image_times = alternate(args.runs, {
        "auto": lambda: extract(lite, images),
        "torch": lambda: extract(lite, images, engine="torch"),
    })
    image_rate = {k: len(images) / median(v) for k, v in image_times.items()}
    image_auto, image_stats = extract(lite, images)
    image_torch, _ = extract(lite, images, engine="torch")
    image_diff = float(np.abs(image_auto - image_torch).max())

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
              args.runs, True, versions, max_abs_diff=fp32_diff, batch_size=bs, texts=n,
              engine=fp32_stats.engine, threads=torch.get_num_threads()),
        entry("extract MiniLM fp32, engine=onnx (texts/s)", rate["fp32 onnx"], rate["peer"],
              "texts/s", args.runs, True, versions, max_abs_diff=onnx_diff, batch_size=bs,
              texts=n, engine=onnx_stats.engine, max_abs_diff_vs_torch_engine=engines_diff,
              onnx_vs_torch_engine=rate["fp32 onnx"] / rate["fp32"],
              one_time_export_or_load_seconds=export_seconds,
              threads=torch.get_num_threads()),
        entry(f"extract MiniLM default={default_precision} (texts/s)", rate["auto"],
              rate["peer"], "texts/s", args.runs, True, versions, max_abs_diff=auto_diff,
              batch_size=bs, texts=n, engine=auto_stats.engine),
        entry("cached second run vs first run (s)", median(hits), miss, "s", args.runs, False,
              versions, note="peer column = uncached first run of transferkit itself"),
        entry(f"probe test accuracy {default_precision} vs fp32", acc[default_precision],
              acc["fp32"], "accuracy", 1, True, versions,
              delta_points=100 * (acc[default_precision] - acc["fp32"]),
              train=len(data.train), test=len(data.test)),
        entry("extract EfficientNet-Lite0 fp32, default engine vs PyTorch engine (images/s)",
              image_rate["auto"], image_rate["torch"], "images/s", args.runs, True,
              {**versions, "timm": timm.__version__}, engine=image_stats.engine,
              max_abs_diff=image_diff, one_time_export_or_load_seconds=image_export_seconds,
              images=len(images), image_size=args.image_size, batch_size=bs,
              note="peer column = transferkit's PyTorch engine (the timm forward)"),
    ]
    print_table(entries)
    print(f"MiniLM max |feature - SentenceTransformer|: fp32 default ({fp32_stats.engine}) "
          f"{fp32_diff:.2e}, engine=onnx {onnx_diff:.2e} (engines apart {engines_diff:.2e}), "
          f"{default_precision} ({auto_stats.engine}) {auto_diff:.2e}; ONNX Runtime / PyTorch "
          f"fp32: {rate['fp32 onnx'] / rate['fp32']:.2f}x; one-time export or load "
          f"{export_seconds:.1f} s")
    print(f"EfficientNet-Lite0 ({image_stats.engine}) vs PyTorch engine: "
          f"{image_rate['auto'] / image_rate['torch']:.2f}x, max |diff| {image_diff:.2e}; "
          f"one-time export or load {image_export_seconds:.1f} s")
    print(f"probe accuracy: fp32 {acc['fp32']:.4f}, {default_precision} "
          f"{acc[default_precision]:.4f} ({100 * (acc[default_precision] - acc['fp32']):+.2f} "
          "points)")
    print(f"results: {write_results('extract', entries)}")


if __name__ == "__main__":
    main()
