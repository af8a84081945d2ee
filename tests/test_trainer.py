"""The one Trainer on ready tensors: early stopping, exact resume, and the two callers that
used to have loops of their own (the probe's torch head, the small-CNN baseline)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from transferkit.train.batches import TensorBatches
from transferkit.train.config import RunSettings, TrainConfig
from transferkit.train.optim import ParamGroup
from transferkit.train.trainer import Hooks, Trainer


def _blobs(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 8)).astype(np.float32) + np.eye(3, 8, dtype=np.float32)[y] * 2
    return x, y


def _fit(x, y, cfg, run, valid=None, hooks=None):
    torch.manual_seed(0)
    layer = nn.Linear(x.shape[1], 3)
    result = Trainer(layer, [ParamGroup(list(layer.parameters()), cfg.lr)], cfg,
                     TensorBatches(x, y, 3), valid=valid, hooks=hooks, run=run).fit()
    return layer, result


def test_tensors_train_stop_early_and_keep_the_best_weights():
    x, y = _blobs()
    cfg = TrainConfig(epochs=200, lr=0.05, warmup_ratio=0.0, schedule="constant",
                      metric="loss", patience=3)
    valid = TensorBatches(x[200:], y[200:], 3)
    layer, result = _fit(x[:200], y[:200], cfg, RunSettings(batch_size=50, device=torch.device(
        "cpu"), precision="fp32"), valid=valid)
    assert result["stopped_early"] and result["epochs_completed"] < 200
    assert result["steps"] == 4 * result["epochs_completed"]
    assert result["best_step"] < result["steps"]  # it ran past its best, then went back
    with torch.no_grad():
        loss = nn.functional.cross_entropy(layer(torch.from_numpy(x[200:])),
                                           torch.from_numpy(y[200:])).item()
    assert loss == pytest.approx(result["best_valid"], abs=1e-5)
    assert (layer(torch.from_numpy(x)).argmax(1).numpy() == y).mean() > 0.8


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    x, y = _blobs()
    cfg = TrainConfig(epochs=3, lr=0.05, checkpoint_every=5, eval_every=4, patience=None)
    valid = TensorBatches(x[200:], y[200:], 3)

    def run(name: str, **changes) -> RunSettings:
        (tmp_path / f"{name}-log").mkdir(exist_ok=True)
        return RunSettings(seed=3, batch_size=16, precision="fp32", device=torch.device("cpu"),
                           run_dir=tmp_path / f"{name}-log", checkpoint_dir=tmp_path / name,
                           **changes)

    reference, ref_result = _fit(x[:200], y[:200], cfg, run("a"), valid=valid)

    def crash(_stage, done, _total, **_numbers):
        if done == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(x[:200], y[:200], cfg, run("b", progress=crash), valid=valid)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["step-00000005",
                                                                  "step-00000010"]
    resumed, result = _fit(x[:200], y[:200], cfg, run("b", resume=True), valid=valid)
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert {k: result[k] for k in ("steps", "best_step", "best_valid")} == \
        {k: ref_result[k] for k in ("steps", "best_step", "best_valid")}
    assert not (tmp_path / "b").exists()  # finished: nothing left to resume
    logs = [(tmp_path / f"{n}-log" / "train_log.jsonl").read_text() for n in "ab"]
    assert logs[0] == logs[1]


def test_hooks_replace_the_batches_and_the_loss():
    x, y = _blobs(64)
    seen: list[list[int]] = []

    def sampler(epoch: int) -> list[list[int]]:
        batches = [list(range(i, i + 8)) for i in range(0, 32, 8)]  # the first half only
        seen.extend(batches)
        return batches

    cfg = TrainConfig(epochs=2, lr=0.01)
    _, result = _fit(x, y, cfg, RunSettings(precision="fp32", device=torch.device("cpu")),
                     hooks=Hooks(sampler=sampler, criterion=lambda out, _: out.pow(2).mean()))
    assert result["steps"] == 8 and max(max(b) for b in seen) < 32


def test_run_settings_come_from_any_context_by_name():
    ctx = SimpleNamespace(seed=5, batch_size=7, precision="fp32", resume=True, other=1)
    run = RunSettings.of(ctx, batch_size=9)
    assert (run.seed, run.batch_size, run.precision, run.resume, run.run_dir) == \
        (5, 9, "fp32", True, None)


def test_probe_linear_head_trains_on_the_trainer_with_its_patience():
    from transferkit.adapt.base import FitContext
    from transferkit.adapt.probe import Probe

    x, y = _blobs(400)
    ctx = FitContext(seed=0, device=torch.device("cpu"))
    w, b, info = Probe(head="linear")._fit_torch(x, y, 3, ctx)
    assert ((x @ w.T + b).argmax(1) == y).mean() > 0.8
    assert info["valid_loss"] is not None and info["epochs"] >= 1
    label_sets = np.stack([y == 0, y != 0, y == 2], 1).astype(np.float32)  # multi-label: BCE
    w, b, info = Probe(head="linear")._fit_torch(x, label_sets, 3, ctx)
    assert len(info["thresholds"]) == 3 and (((x @ w.T + b) > 0) == label_sets).mean() > 0.8
    # random labels on wide features: the held-out loss soon rises, and patience ends it
    rng = np.random.default_rng(1)
    noise, labels = rng.normal(size=(100, 256)).astype(np.float32), rng.integers(0, 3, 100)
    _, _, info = Probe(head="linear", patience=2)._fit_torch(noise, labels, 3, ctx)
    assert info["stopped_early"] and info["epochs"] < 300
    assert info["best_step"] == info["steps"] - 2


def test_small_cnn_baseline_learns_fashion_mnist(data_dir):
    from transferkit.data.examples import Dataset, Examples
    from transferkit.evaluate.baselines import small_cnn_baseline

    arrays = np.load(data_dir / "fashion_mnist.test.npz")
    classes = [str(c) for c in arrays["classes"]]
    images, labels = arrays["images"][:600], [classes[i] for i in arrays["labels"][:600]]

    def examples(rows: slice) -> Examples:
        return Examples(inputs=list(images[rows]), labels=labels[rows],
                        origins=[f"fmnist {i}" for i in range(600)][rows], modality="image")

    data = Dataset(train=examples(slice(0, 400)), test=examples(slice(400, 600)),
                   classes=sorted(set(labels)))
    result = small_cnn_baseline(data, seed=0, epochs=4)
    assert result["name"] == "small CNN from scratch"
    assert result["metrics"]["accuracy"] > 0.5  # ten classes: chance is 0.1
