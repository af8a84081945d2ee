"""Fine-tuning an image backbone: timm's training transforms, mixup/cutmix, partial freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from weight_helpers import changed_tensors

from transferkit import Classifier
from transferkit.data.examples import Dataset, Examples

BN_STATS = ("running_mean", "running_var")


@pytest.fixture(scope="module")
def fmnist_small(data_dir):
    arrays = np.load(data_dir / "fashion_mnist.test.npz")
    classes = [str(c) for c in arrays["classes"]]
    keep = np.flatnonzero(arrays["labels"] < 3)[:240]
    ex = Examples(list(arrays["images"][keep]), [classes[i] for i in arrays["labels"][keep]],
                  [f"i{i}" for i in keep], "image")
    train, test = ex.subset(range(0, 160)), ex.subset(range(160, 240))
    return Dataset(train=train, test=test, classes=sorted(set(ex.labels)))


def test_partial_finetune_with_mixup_trains_top_groups_only(fmnist_small):
    from transferkit.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0", image_size=64)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    clf = Classifier(backbone, "partial", batch_size=16, strategy_options={
        "epochs": 1, "lr": 1e-3, "train_layers": 2, "mixup": 0.2, "cutmix": 0.2,
        "restore_best": False}).fit(fmnist_small)
    after = clf.model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed
    top = clf.model.backbone.layer_groups()[-2:]
    top_ids = {id(p) for g in top for p in g.parameters()} | \
        {id(b) for g in top for b in g.buffers()}
    tensors = dict(clf.model.backbone.named_parameters()) | dict(
        clf.model.backbone.named_buffers())
    assert all(id(tensors[k]) in top_ids for k in changed if k in tensors)
    assert clf.evaluate(fmnist_small)["accuracy"] > 0.6  # 3 classes: chance is 0.33


def test_augmentation_is_used_only_for_training():
    from transferkit.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0", image_size=64)
    image = np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)
    torch.manual_seed(0)
    a = backbone.collate([image], augment=True)["pixel_values"]
    b = backbone.collate([image], augment=True)["pixel_values"]
    c = backbone.collate([image])["pixel_values"]
    d = backbone.collate([image])["pixel_values"]
    assert not torch.equal(a, b)  # random crops / flips differ
    torch.testing.assert_close(c, d)


def test_image_contrastive_tunes_on_two_views_and_never_ends_below_its_start(fmnist_small):
    """Images hold out 20% of train for phase 1 (augmentation makes tuning riskier); the
    untuned start is scored too, so the kept encoder is never worse on it than the start;
    batch-norm statistics stay as pretrained."""
    from transferkit.adapt.contrastive import centroid_accuracy, embed, label_groups
    from transferkit.adapt.finetune import _train_valid
    from transferkit.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0", image_size=64)
    pristine = {k: v.clone() for k, v in backbone.state_dict().items()}
    train, valid = _train_valid(fmnist_small, 0.2, 0)  # the split phase 1 makes at seed 0
    groups, group_of = label_groups(train)
    start = centroid_accuracy(embed(backbone.eval(), train.inputs), groups,
                              embed(backbone, valid.inputs), label_groups(valid, group_of)[0])
    clf = Classifier(backbone, "contrastive", batch_size=16, cache=False, strategy_options={
        "pair_batch": 16, "max_steps": 6, "eval_every": 2, "lr": 1e-4}).fit(fmnist_small)
    phase1 = clf.fit_info["phase1"]
    assert phase1["n_valid"] == len(valid) == 32 and phase1["steps"] <= 6
    assert phase1["best_valid"] >= start
    changed = changed_tensors(pristine, clf.model.backbone)
    assert bool(changed) == (phase1["best_step"] > 0)  # best weights kept, the start if it won
    # batch norm keeps its pretrained statistics: few-shot augmented batches would skew them
    assert not any(k.endswith(BN_STATS) for k in changed)
    assert clf.evaluate(fmnist_small)["accuracy"] > 0.6  # 3 classes: chance is 0.33


def test_protonet_episodes_keep_batchnorm_statistics(fmnist_small):
    """Episodes of a few images skew batch norm's running statistics (on Fashion-MNIST's new
    classes that cost 5-way 5-shot accuracy: benchmarks/protonet_images.py), so they stay as
    pretrained by default; the affine weights and the rest of the encoder still train.
    (With ``freeze_batchnorm=False`` the statistics assertion fails.)"""
    from transferkit.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0", image_size=64)
    pristine = {k: v.clone() for k, v in backbone.state_dict().items()}
    clf = Classifier(backbone, "protonet", cache=False, strategy_options={
        "n_way": 3, "k_shot": 2, "n_query": 2, "episodes": 3, "lr": 1e-3}).fit(fmnist_small)
    changed = changed_tensors(pristine, clf.model.backbone)
    stats = {k for k in changed if k.endswith(BN_STATS)}
    assert changed - stats  # the encoder trained
    assert not stats
    # EfficientNet's features are far from unit norm (squared norms in the thousands): the
    # softmax scale follows them, or meta-training collapses
    assert clf.fit_info["scale"] < 0.1
