"""Shared helpers: side-by-side timing and the results-file format of DESIGN.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMS_TEST = DATA / "sms_spam.test.csv"
#: the settings that change how fast PyTorch (and its peers) run on the CPU; the wait
#: policies among them slow the peers' multi-threaded matrix products more than transferkit's
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
THREAD_VARIABLES = (*WAIT_VARIABLES, "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "TOKENIZERS_PARALLELISM")


def thread_environment() -> dict[str, Any]:
    """What a timing depends on besides the code: torch's thread count and the thread
    variables set in the environment (an absent one is at its default). Recorded in every
    results file, because they move peers and transferkit unequally: with
    ``OMP_WAIT_POLICY=PASSIVE``, sentence-transformers' MiniLM extraction (two threads per
    matrix product) ran 11% slower while transferkit's (one batch per thread) did not move."""
    import torch

    return {"torch_threads": torch.get_num_threads(),
            **{k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}}


def warn_if_tuned_threads() -> None:
    """Peer timings are published from the default thread environment; say so when the
    environment differs, so a number measured under it is not mistaken for one of those."""
    tuned = {k: os.environ[k] for k in WAIT_VARIABLES if k in os.environ}
    if tuned:
        print(f"warning: {tuned} is set; it slows the peers' multi-threaded matrix products "
              "more than transferkit's, so peer ratios measured under it are not comparable "
              "with the published ones (measured with these unset).", flush=True)


def arguments(doc: str | None, **defaults: Any) -> argparse.ArgumentParser:
    """A benchmark's argument parser with one ``--name`` option per keyword, typed by its
    default (``batch_size=32`` is ``--batch-size BATCH_SIZE``, an int); the script adds
    the options that need more (choices, help, flags) itself."""
    ap = argparse.ArgumentParser(description=doc)
    for name, default in defaults.items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    return ap


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def alternate(runs: int, contenders: dict[str, Callable[[], Any]]) -> dict[str, list[float]]:
    """Run each contender once per round, in turn: the shared cores' noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, fn in contenders.items():
            times[name].append(timed(fn)[0])
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def entry(name: str, ours: float, peer: float, unit: str, runs: int, higher_is_better: bool,
          versions: dict[str, str], **extra: Any) -> dict[str, Any]:
    """One comparison; ``ratio`` > 1 means transferkit wins whatever the unit's direction."""
    ratio = ours / peer if higher_is_better else peer / ours
    return {"name": name, "ours": ours, "peer": peer, "unit": unit, "ratio": ratio,
            "runs": runs, "versions": versions, **extra}


def write_results(bench: str, entries: list[dict[str, Any]], **details: Any) -> Path:
    """benchmarks/results/<bench>.json, one schema for every script: which code and machine
    made it, ``entries`` (comparisons against a peer: name, ours, peer, unit, ratio, runs,
    versions; empty for a tuning or ablation run) and the script's own ``details``."""
    import torch

    from transferkit import __version__, git_commit

    warn_if_tuned_threads()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{bench}.json"
    payload = {"benchmark": bench, "transferkit": __version__, "commit": git_commit(),
               "torch": torch.__version__, "python": platform.python_version(),
               "machine": platform.machine(), "threads": thread_environment(),
               "entries": entries, **details}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def print_table(entries: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="transferkit vs peer (ratio > 1: transferkit wins)")
    for col in ("comparison", "transferkit", "peer", "unit", "ratio", "runs"):
        table.add_column(col, justify="left" if col == "comparison" else "right")
    for e in entries:
        table.add_row(e["name"], f"{e['ours']:.4g}", f"{e['peer']:.4g}", e["unit"],
                      f"{e['ratio']:.2f}x", str(e["runs"]))
    Console().print(table)


def served_model(directory: Path, run: str | None, n_train: int, *, onnx: bool) -> Path:
    """The serving benchmarks' model: ``run`` when given, else MiniLM + probe fitted on
    n_train SMS messages (seeded) under ``directory``, with ``onnx`` also exported to ONNX
    (fp32 and int8)."""
    print(f"fitting {'and exporting ' if onnx else ''}the served model ...", flush=True)
    if run:
        return Path(run)
    import subprocess
    import sys

    import pandas as pd

    from transferkit import Classifier, load_data

    frame = pd.read_csv(DATA / "sms_spam.train.csv", keep_default_na=False)
    frame = frame.sample(n=min(n_train, len(frame)), random_state=0)
    train = directory / "train.csv"
    frame.to_csv(train, index=False)
    data = load_data(train, test=SMS_TEST)
    out = directory / "sms-minilm"
    Classifier("minilm", strategy="probe").fit(data).save(out)
    if onnx:
        subprocess.run([sys.executable, "-m", "transferkit", "export", str(out), "--onnx",
                        "--int8", "--eval-data", str(SMS_TEST)], check=True,
                       capture_output=True)
    return out


def sms_texts() -> list[str]:
    """What the serving benchmarks send: the sms_spam test texts."""
    import pandas as pd

    return pd.read_csv(SMS_TEST, keep_default_na=False)["text"].tolist()
