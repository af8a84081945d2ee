"""SimCLR pretraining of a tiny random timm model on real Fashion-MNIST images: the output
is a backbone folder a probe can use, the held-out loss falls, and resume is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from transferkit.errors import ConfigError
from transferkit.pretrain.image import nt_xent
from transferkit.workflows import pretrain

ARCH = "test_resnet"  # timm's 0.4M-parameter test ResNet: seconds per run on a CPU


class Interrupted(Exception):
    pass


OPTIONS = dict(modality="image", source=ARCH, scratch=True, image_size=24, epochs=2,
               batch_size=32, lr=2e-3, eval_every=4, patience=None, valid_fraction=0.2,
               checkpoint_every=3, precision="fp32", device="cpu", seed=3)


@pytest.fixture(scope="module")
def corpus(data_dir, tmp_path_factory) -> Path:
    """160 Fashion-MNIST training images and nothing else: no labels to read."""
    path = tmp_path_factory.mktemp("corpus") / "unlabelled.npz"
    np.savez(path, images=np.load(data_dir / "fashion_mnist.train.npz")["images"][:160])
    return path


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("simclr") / "out"
    summary = pretrain(corpus, out=out, **OPTIONS)
    assert not out.with_name("out.checkpoints").exists()  # finished: nothing to resume
    return out, summary


def test_heldout_loss_falls_and_summary_is_complete(reference):
    _, s = reference
    assert s["objective"] == "simclr" and s["architecture"] == ARCH and s["image_size"] == 24
    assert s["train_images"] == 128 and s["valid_images"] == 32
    assert s["steps"] == 8  # 2 epochs x 4 batches of 32
    assert s["images_seen"] == 256 and s["images_per_second"] > 0
    assert s["valid_loss_best"] < s["valid_loss_start"]
    assert [e["step"] for e in s["evaluations"]] == [0, 4, 8]
    assert s["valid_loss_best"] == min(e["valid_loss"] for e in s["evaluations"])
    assert 0 <= s["valid_accuracy_start"] <= 1


def test_output_is_a_backbone_a_probe_can_use(reference, data_dir, tmp_path):
    from transferkit import Classifier
    from transferkit.backbones import load_backbone
    from transferkit.backbones.vision import VisionBackbone

    out, _ = reference
    backbone = load_backbone(str(out))
    assert isinstance(backbone, VisionBackbone) and backbone.architecture == ARCH
    assert backbone.data_config["input_size"] == (3, 24, 24)
    weights = load_file(str(out / "model.safetensors"))
    assert not any(k.startswith("projector") for k in weights)  # the head is not kept

    test = np.load(data_dir / "fashion_mnist.test.npz")
    keep = np.flatnonzero(np.isin(test["labels"], [1, 8]))[:80]  # trousers vs bags
    path = tmp_path / "two_classes.npz"
    np.savez(path, images=test["images"][keep], labels=test["labels"][keep],
             classes=test["classes"])
    clf = Classifier(str(out), "probe", device="cpu").fit(path)
    assert clf.evaluate(path)["accuracy"] > 0.8


def test_interrupted_run_resumes_to_identical_weights(corpus, reference, tmp_path):
    out, summary = reference
    calls = [0]

    def crash_at_step_5(*_args, **_kwargs) -> None:
        calls[0] += 1
        if calls[0] == 5:  # epoch 2; the last checkpoint is step 3's, in epoch 1
            raise Interrupted

    run, checkpoints = tmp_path / "run", tmp_path / "run.checkpoints"
    with pytest.raises(Interrupted):
        pretrain(corpus, out=run, progress=crash_at_step_5, **OPTIONS)
    assert not run.exists()  # an interrupted run leaves no finished-looking folder
    assert sorted(p.name for p in checkpoints.glob("step-*"))[-1] == "step-00000003"

    resumed = pretrain(corpus, out=run, resume=True, **OPTIONS)
    assert not checkpoints.exists()
    a = load_file(str(out / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert resumed["evaluations"] == summary["evaluations"]
    assert resumed["steps"] == summary["steps"]


def test_nt_xent_is_the_textbook_loss():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=-1)
    logits = (z @ z.T / 0.2).fill_diagonal_(-float("inf"))
    target = torch.cat([torch.arange(6, 12), torch.arange(6)])
    expected = torch.nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(nt_xent(0.2)(z1, z2), expected)


def test_a_text_backbone_is_refused(corpus, tiny_bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="timm image backbone"):
        pretrain(corpus, out=tmp_path / "out", **{**OPTIONS, "scratch": False,
                                                  "source": str(tiny_bert_dir)})
    assert not (tmp_path / "out").exists()
