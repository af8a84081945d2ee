"""Two-process DDP on CPU (gloo) through torchrun: a partially frozen model trains, only rank 0
writes the run, and the accuracy matches a single-process run within noise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def csvs(tmp_path_factory) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    good, bad = ["great", "lovely", "superb", "fun"], ["awful", "dull", "boring", "weak"]

    def rows(n):
        out = []
        for i in range(n):
            words = rng.choice(good if i % 2 else bad, 2).tolist() + rng.choice(
                ["the", "film", "plot", "cast", "was"], int(rng.integers(2, 8))).tolist()
            rng.shuffle(words)
            out.append({"text": " ".join(words), "label": "pos" if i % 2 else "neg"})
        return pd.DataFrame(out)

    root = tmp_path_factory.mktemp("ddp")
    rows(320).to_csv(root / "train.csv", index=False)
    rows(120).to_csv(root / "test.csv", index=False)
    return root / "train.csv", root / "test.csv"


def _args(train: Path, test: Path, backbone: Path, out: Path) -> list[str]:
    return ["fit", str(train), "--test", str(test), "--backbone", str(backbone), "--strategy",
            "partial", "--train-layers", "1", "--epochs", "3", "--lr", "2e-3", "--batch-size",
            "8", "--precision", "fp32", "--device", "cpu", "--no-cache", "--out", str(out)]


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(
    sys.executable).with_name("torchrun").exists(), reason="torchrun not installed")
def test_two_process_ddp_matches_single_process(csvs, tiny_bert_dir, tmp_path):
    train, test = csvs
    single = tmp_path / "single"
    r = subprocess.run([sys.executable, "-m", "transferkit", *_args(train, test, tiny_bert_dir,
                                                                   single)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    ddp = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m",
                        "transferkit", *_args(train, test, tiny_bert_dir, ddp)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((ddp / "run.json").read_text())
    assert run["fit_info"]["processes"] == 2
    assert json.loads((single / "run.json").read_text())["fit_info"]["processes"] == 1
    # every rank trained on half the batches: half the optimizer steps of the single run
    assert run["fit_info"]["steps"] * 2 == pytest.approx(
        json.loads((single / "run.json").read_text())["fit_info"]["steps"], abs=2)
    acc_ddp = json.loads((ddp / "metrics.json").read_text())["accuracy"]
    acc_single = json.loads((single / "metrics.json").read_text())["accuracy"]
    assert acc_ddp > 0.85 and abs(acc_ddp - acc_single) < 0.1
    leftovers = [p for p in tmp_path.iterdir() if p.name not in ("single", "ddp")]
    assert not leftovers, leftovers  # no rank wrote a second run folder
