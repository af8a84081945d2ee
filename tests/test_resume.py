"""A run killed with SIGKILL mid-epoch and resumed ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file


def _fit_cmd(train: Path, backbone: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "transferkit", "fit", str(train), "--backbone", str(backbone),
            "--strategy", "full", "--epochs", "3", "--lr", "1e-3", "--batch-size", "8",
            "--precision", "fp32", "--device", "cpu", "--checkpoint-every", "10",
            "--eval-every", "15", "--seed", "7", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    good, bad = ["great", "lovely", "superb", "fun"], ["awful", "dull", "boring", "weak"]
    rows = []
    for i in range(240):
        label = i % 2
        words = rng.choice(good if label else bad, 3).tolist() + rng.choice(
            ["the", "film", "plot", "cast", "was", "very"], int(rng.integers(2, 12))).tolist()
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if label else "neg"})
    path = tmp_path_factory.mktemp("resume") / "train.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_killed_run_resumes_to_identical_weights(train_csv, tiny_bert_dir, tmp_path):
    env = dict(os.environ)
    reference = tmp_path / "reference"
    r = subprocess.run(_fit_cmd(train_csv, tiny_bert_dir, reference), capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr

    out = tmp_path / "killed"
    checkpoints = out.with_name("killed.checkpoints")
    proc = subprocess.Popen(_fit_cmd(train_csv, tiny_bert_dir, out), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not list(checkpoints.glob("step-*0030")):
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave a finished-looking run folder"
    assert list(checkpoints.glob("step-*")), "the checkpoint must survive the kill"

    r = subprocess.run(_fit_cmd(train_csv, tiny_bert_dir, out, "--resume"), capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert not checkpoints.exists()  # finished: nothing left to resume

    for name in ("head.safetensors", "backbone/model.safetensors"):
        a, b = load_file(str(reference / name)), load_file(str(out / name))
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")
    ma = json.loads((reference / "metrics.json").read_text())
    mb = json.loads((out / "metrics.json").read_text())
    assert ma == mb
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    ref_log = [json.loads(line) for line in
               (reference / "train_log.jsonl").read_text().splitlines()]
    assert [e.get("loss") for e in log] == [e.get("loss") for e in ref_log]
