"""ONNX Runtime engine against the PyTorch engine, side by side, on the same saved model.

A MiniLM probe is fitted on rotten_tomatoes (``--per-class`` labels per class), saved to a
temporary folder and exported with ``--int8``; then ``load_engine(run, "onnx"[, int8])`` and
``load_engine(run, "torch")`` predict the same test texts at the same batch size, alternating,
median of ``--runs``. Also measured: a fresh process's time to its first prediction and its
peak RSS (the ONNX engine never imports torch), model size, and the int8 accuracy change on
the full test split (recorded by the export itself).

    python benchmarks/onnx_engine.py [--texts 2000] [--runs 3] [--per-class 1000]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_COLD = """
import sys, time
start = time.perf_counter()
from transferkit.reuse.engines import load_engine
engine = load_engine(sys.argv[1], sys.argv[2], int8=sys.argv[3] == "1", precision="fp32")
engine.predict_proba(["a first prediction"])
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss over fork + exec
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(seconds, int(hwm.split()[1]) / 1024, "torch" in sys.modules)
"""


def cold_start(run: Path, engine: str, int8: bool) -> tuple[float, float, bool]:
    out = subprocess.run([sys.executable, "-c", _COLD, str(run), engine, "1" if int8 else "0"],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), out[2] == "True"


def main() -> None:
    import onnxruntime
    import torch
    from common import DATA, alternate, arguments, entry, median, print_table, write_results

    import transferkit
    from transferkit import Classifier, load_data
    from transferkit.reuse.engines import load_engine
    from transferkit.reuse.onnx_export import export_onnx
    from transferkit.train.device import resolve_precision

    args = arguments(__doc__, texts=2000, runs=3, batch_size=32, per_class=1000).parse_args()
    train_csv, test_csv = DATA / "rotten_tomatoes.train.csv", DATA / "rotten_tomatoes.test.csv"
    texts = pd.read_csv(test_csv, keep_default_na=False)["text"].tolist()[: args.texts]
    versions = {"transferkit": transferkit.__version__, "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__}
    bs = args.batch_size
    with tempfile.TemporaryDirectory(prefix="tk-bench-onnx-") as tmp:
        run = Path(tmp) / "run"
        data = load_data(train_csv, test=test_csv, per_class=args.per_class, seed=0)
        Classifier("minilm", "probe", cache=False).fit(data).save(run)
        info = export_onnx(run, int8=True, eval_data=test_csv, batch_size=bs)
        engines = {
            "onnx fp32": load_engine(run, "onnx", batch_size=bs),
            "onnx int8": load_engine(run, "onnx", int8=True, batch_size=bs),
            "torch fp32": load_engine(run, "torch", precision="fp32", batch_size=bs),
            "torch auto": load_engine(run, "torch", precision="auto", batch_size=bs),
        }
        for e in engines.values():  # warm-up: lazy initialisation on every side
            e.predict_proba(texts[:64])
        times = alternate(args.runs, {k: (lambda e=e: e.predict_proba(texts))
                                      for k, e in engines.items()})
        cold = {k: [cold_start(run, *k) for _ in range(args.runs)]
                for k in (("onnx", False), ("torch", False))}

    rate = {k: len(texts) / median(v) for k, v in times.items()}
    auto = resolve_precision("auto", torch.device("cpu"))
    n, runs = len(texts), args.runs
    q = info["int8"]
    entries = [
        entry("predict throughput, ONNX fp32 vs PyTorch fp32", rate["onnx fp32"],
              rate["torch fp32"], "texts/s", runs, True, versions, texts=n, batch_size=bs,
              parity_max_abs_diff=info["fp32"]["parity_max_abs_diff"]),
        entry("predict throughput, ONNX int8 vs PyTorch fp32", rate["onnx int8"],
              rate["torch fp32"], "texts/s", runs, True, versions, texts=n, batch_size=bs),
        entry(f"predict throughput, ONNX fp32 vs PyTorch default precision ({auto})",
              rate["onnx fp32"], rate["torch auto"], "texts/s", runs, True, versions,
              texts=n, batch_size=bs),
        entry("predict throughput, ONNX int8 vs PyTorch default precision "
              f"({auto})", rate["onnx int8"], rate["torch auto"], "texts/s", runs, True,
              versions, texts=n, batch_size=bs),
        entry("fresh process to first prediction, ONNX fp32 vs PyTorch",
              median([c[0] for c in cold[("onnx", False)]]),
              median([c[0] for c in cold[("torch", False)]]), "s", runs, False, versions,
              onnx_imports_torch=any(c[2] for c in cold[("onnx", False)])),
        entry("peak RSS of that process, ONNX fp32 vs PyTorch",
              median([c[1] for c in cold[("onnx", False)]]),
              median([c[1] for c in cold[("torch", False)]]), "MiB", runs, False, versions),
        entry("model file, ONNX int8 vs ONNX fp32", q["bytes"] / 2**20,
              info["fp32"]["bytes"] / 2**20, "MiB", 1, False, versions),
        entry(f"test accuracy ({q['eval_examples']} texts), ONNX int8 vs fp32",
              q["accuracy_int8"], q["accuracy_fp32"], "accuracy", 1, True, versions,
              accuracy_change=q["accuracy_change"]),
    ]
    print_table(entries)
    print(json.dumps({"export_seconds": info["export_seconds"],
                      "exporter": info["exporter"]}))
    print(f"results: {write_results('onnx_engine', entries)}")


if __name__ == "__main__":
    main()
