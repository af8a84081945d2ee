"""The audio baselines without pretraining: MFCC statistics + logistic regression, and the small
log-mel CNN trained by the scratch recipe, on real keyword clips (keywords_espeak)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.data import load_data
from transferkit.evaluate.baselines import classic_baseline, no_pretraining_baselines
from transferkit.evaluate.baselines_audio import (
    N_MFCC,
    augment_spectrograms,
    log_mel,
    logmel_cnn_baseline,
    mfcc_statistics,
)


@pytest.fixture(scope="module")
def keywords8(keywords):
    """8 training clips a keyword (seed 0), all 300 test clips."""
    return load_data(keywords, per_class=8, seed=0)


def test_mfcc_statistics_are_the_dct_of_the_log_mel_summarised_over_time(keywords8):
    from scipy.fft import dct

    spec = log_mel(keywords8.train.subset([0, 1]))
    stats = mfcc_statistics(spec)
    assert stats.shape == (2, 4 * N_MFCC)
    first = dct(spec[0, 0].numpy().astype(np.float64), type=2, axis=0, norm="ortho")[:N_MFCC]
    np.testing.assert_allclose(stats[0, :N_MFCC], first.mean(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats[0, N_MFCC:2 * N_MFCC], first.std(1), rtol=1e-6, atol=1e-6)


def test_mfcc_logreg_learns_keywords_from_eight_clips_each(keywords8):
    result = classic_baseline(keywords8)  # the fit report's baseline for audio
    assert result["name"].startswith("MFCC")
    # chance is 0.10; measured 0.383 at 8 clips a keyword (unseen voices in the test split)
    assert result["metrics"]["accuracy"] > 0.25
    assert result["chosen"]["C"] > 0 and result["cost"]["trainable_params"] == 10 * 81


def test_logmel_cnn_runs_the_recipe_and_counts_its_cost(keywords8):
    small = keywords8.__class__(train=keywords8.train.subset(range(0, 80, 2)),
                                test=keywords8.test.subset(range(0, 300, 10)),
                                classes=keywords8.classes)
    result = logmel_cnn_baseline(small, 0, epochs=2, lrs=(1e-3,))
    assert result["chosen"]["lr"] == 1e-3 and 1 <= result["chosen"]["epochs"]
    assert result["cost"]["steps"] > 0 and result["cost"]["train_flops"] > 0
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert list(no_pretraining_baselines("audio")) == ["mfcc-logreg", "logmel-cnn"]


def test_spectrogram_augmentation_moves_in_time_and_masks_but_keeps_the_shape():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 64, 101)
    y = augment_spectrograms(x, shift=10)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert torch.equal(x, x.clone())  # the input batch is not modified in place
