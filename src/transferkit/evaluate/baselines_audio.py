"""No-pretraining baselines for audio, so a gain from a pretrained speech encoder is honest.

- ``mfcc-logreg``: the classic keyword-spotting features — 20 MFCCs (and their deltas) per
  10 ms frame, summarised over the clip by mean and standard deviation — into the same
  cross-validated logistic regression as the text and image baselines;
- ``logmel-cnn``: a small CNN on the log-mel spectrogram from random weights, with time-shift
  and SpecAugment masks, trained by the scratch recipe (``train.recipe``: learning rate and
  epochs chosen on a validation part of the budget, then a refit), as the image small CNN.

Both read the clips at 16 kHz, ``DEFAULT_CLIP_SECONDS`` long, as the audio backbones do, and
share the backbones' mel spectrogram (25 ms Hann window, 10 ms hop, 64 mel bands).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy.fft import dct
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..adapt.base import label_indices
from ..adapt.scratch import IMAGE_MIN_STEPS
from ..backbones.audio import MelSpectrogram
from ..data.audio import DEFAULT_CLIP_SECONDS, load_clip
from ..data.examples import Dataset, Examples
from ..train.batches import TensorBatches
from ..train.config import RunSettings
from ..train.recipe import SCRATCH_CONFIG, fit_from_scratch
from .baseline_tools import batch_size_for, forward_flops, logreg_baseline, recipe_result

# The CNN's validation loss sat at chance (2.30) for the recipe's default 20 steps of patience
# at 8 clips per keyword and every learning rate stopped near its start: a from-scratch
# spectrogram CNN needs the longer minimum the Scratch strategy gives deep image networks.
DEEP_MIN_STEPS = (IMAGE_MIN_STEPS["min_patience_steps"], IMAGE_MIN_STEPS["min_cap_steps"])
RATE = 16_000
N_MELS = 64
N_MFCC = 20


def log_mel(ex: Examples, clip_seconds: float = DEFAULT_CLIP_SECONDS) -> torch.Tensor:
    """``[N, 1, N_MELS, frames]`` log-mel spectrograms (natural log of power + 1e-6)."""
    wave = torch.from_numpy(np.stack([load_clip(x, RATE, clip_seconds) for x in ex.inputs]))
    mel = MelSpectrogram(RATE, n_fft=512, hop=RATE // 100, n_mels=N_MELS, win_length=400)
    with torch.inference_mode():
        return torch.log(mel(wave) + 1e-6).unsqueeze(1)


def mfcc_statistics(spectrograms: torch.Tensor) -> np.ndarray:
    """Per clip: mean and standard deviation over time of ``N_MFCC`` MFCCs (DCT-II of the log
    mel bands) and of their frame-to-frame deltas, ``[N, 4 * N_MFCC]``."""
    logmel = spectrograms[:, 0].numpy().astype(np.float64)  # [N, mels, frames]
    mfcc = dct(logmel, type=2, axis=1, norm="ortho")[:, :N_MFCC]
    delta = np.diff(mfcc, axis=2)
    return np.concatenate([mfcc.mean(2), mfcc.std(2), delta.mean(2), delta.std(2)], axis=1)


def mfcc_logreg_baseline(data: Dataset, seed: int = 0) -> dict[str, Any]:
    """MFCC statistics, standardised, + logistic regression (C by cross-validation)."""
    return logreg_baseline(data, seed, "MFCC statistics + logistic regression", StandardScaler(),
                   mfcc_statistics(log_mel(data.train)), mfcc_statistics(log_mel(data.test)))


class AugmentedSpectrograms(TensorBatches):
    """Log-mel tensors ``[N, 1, mels, frames]``; a training batch is shifted in time by up to
    ``shift`` frames (circularly) and gets SpecAugment masks: up to two bands of 8 mels and
    two spans of 10 frames set to the clip's mean. Drawn from torch's seeded generator."""

    def __init__(self, inputs: torch.Tensor, labels: np.ndarray, n_classes: int, *,
                 shift: int = 10) -> None:
        super().__init__(inputs, labels, n_classes)
        self.shift = shift

    def subset(self, idx: np.ndarray) -> AugmentedSpectrograms:
        return AugmentedSpectrograms(self.inputs[torch.as_tensor(idx)], self.labels[idx],
                                     self.n_classes, shift=self.shift)

    def collate(self, idx: list[int], augment: bool = False) -> dict[str, torch.Tensor]:
        x = super().collate(idx)[self.key]
        return {self.key: augment_spectrograms(x, self.shift) if augment else x}


def augment_spectrograms(x: torch.Tensor, shift: int) -> torch.Tensor:
    x = x.clone()
    b, _, mels, frames = x.shape
    fill = x.mean(dim=(2, 3))  # [B, 1]
    for i in range(b):
        if shift:
            x[i] = torch.roll(x[i], int(torch.randint(-shift, shift + 1, ())), dims=-1)
        for size, width, axis in ((mels, 8, 2), (frames, 10, 3)):
            for _ in range(2):
                w = int(torch.randint(0, width + 1, ()))
                start = int(torch.randint(0, max(1, size - w + 1), ()))
                if axis == 2:
                    x[i, :, start:start + w, :] = fill[i]
                else:
                    x[i, :, :, start:start + w] = fill[i]
    return x


class SmallAudioCNN(nn.Module):
    """Three conv blocks on the log-mel standardised per clip, global average pooling, a
    linear layer: the no-pretraining keyword spotter (any clip length, few parameters)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                    nn.MaxPool2d(2)]

        self.net = nn.Sequential(*block(1, 32), *block(32, 64), *block(64, 64),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                                 nn.Linear(64, n_classes))

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (TensorBatches' key)
        # per clip: the clips' gain (0.2-0.9) and noise floor shift the whole log spectrum
        mean = input.mean(dim=(1, 2, 3), keepdim=True)
        std = input.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return self.net((input - mean) / std)


def logmel_cnn_baseline(data: Dataset, seed: int = 0, *, epochs: int = 60,
                        lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3), patience: int = 8,
                        max_examples: int | None = 100_000) -> dict[str, Any]:
    """The small log-mel CNN from random weights, tuned by the recipe (the study's scratch
    recipe), augmentation on its training batches only."""
    start = time.perf_counter()
    n_classes = len(data.classes)
    train = AugmentedSpectrograms(log_mel(data.train),
                                  label_indices(data.train, data.classes), n_classes)
    test = TensorBatches(log_mel(data.test), label_indices(data.test, data.classes), n_classes)

    def build() -> nn.Module:
        return SmallAudioCNN(n_classes)

    flops = forward_flops(build(), train.collate([0]))
    fitted = fit_from_scratch(
        build, train.subset, train.labels, lrs=lrs, max_epochs=epochs, patience=patience,
        seed=seed, max_examples=max_examples, cfg=replace(SCRATCH_CONFIG, weight_decay=1e-4),
        run=RunSettings(precision="fp32", batch_size=batch_size_for(len(train), 16, 128)),
        flops_per_example=flops, min_steps=DEEP_MIN_STEPS)
    return recipe_result("small log-mel CNN from scratch", data, fitted, test, start)
