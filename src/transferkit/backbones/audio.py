"""What the audio backbones share: clips in at the backbone's own rate, a spectrogram in torch.

An audio example (a file path or a ``data.audio.Clip``) is decoded in ``prepare`` by
``load_clip`` at the backbone's sample rate and cut or padded to ``clip_seconds``, so every
prepared clip has the same length and ``collate`` stacks them into one ``waveform`` tensor
``[B, T]`` (float32, -1..1): that tensor is the whole model input, which is what the ONNX
export takes as its one input too.

The spectrogram is a ``conv1d`` with fixed windowed-DFT kernels rather than ``torch.stft``:
it is the same arithmetic, it exports to ONNX as a plain ``Conv`` (ONNX Runtime ran it to
float32 rounding), and it needs no complex tensors. The mel filter bank is librosa's (Slaney
mel scale, Slaney area normalisation: ``librosa.filters.mel`` with its defaults), written out
in numpy so no librosa is needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.audio import DEFAULT_CLIP_SECONDS, MAX_CLIP_SECONDS, load_clip
from ..data.examples import AUDIO
from ..errors import ArtifactError, ConfigError
from .base import Backbone

#: every audio alias, for messages that point from one to the others
AUDIO_ALIASES = ("speech-embedding", "logmel-efficientnet_lite0", "resemblyzer")


def check_clip_seconds(clip_seconds: float | None) -> float:
    """``clip_seconds`` as a float (None: ``DEFAULT_CLIP_SECONDS``), refused outside
    (0, ``MAX_CLIP_SECONDS``]."""
    value = DEFAULT_CLIP_SECONDS if clip_seconds is None else clip_seconds
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not 0 < float(value) <= MAX_CLIP_SECONDS:
        raise ConfigError(f"clip_seconds is {clip_seconds!r}; it must be a number of seconds "
                          f"above 0 and at most {MAX_CLIP_SECONDS:g} (--clip-seconds 1.0).")
    return float(value)


class AudioBackbone(Backbone):
    """Fixed-length mono clips at ``rate``: ``prepare`` decodes, ``collate`` stacks."""

    modality = AUDIO

    def __init__(self, source: str, resolved: str, *, rate: int,
                 clip_seconds: float | None) -> None:
        super().__init__(source, resolved)
        self.rate = int(rate)
        self.clip_seconds = check_clip_seconds(clip_seconds)
        self.samples = max(1, int(round(self.clip_seconds * self.rate)))

    def prepare(self, examples: list[Any]) -> list[np.ndarray]:
        return [load_clip(x, self.rate, self.clip_seconds) for x in examples]

    def collate(self, prepared: list[Any], augment: bool = False) -> dict[str, torch.Tensor]:
        return {"waveform": torch.from_numpy(np.stack(prepared).astype(np.float32, copy=False))}

    def preprocess(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        return self.collate(self.prepare(examples))

    def cost(self, prepared_item: Any) -> int:
        return len(prepared_item)

    def clip_settings(self) -> dict[str, Any]:
        return {"rate": self.rate, "clip_seconds": self.clip_seconds}


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_step = math.log(6.4) / 27.0
    high = hz >= 1000.0
    return np.where(high, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * 200.0 / 3)


def mel_filters(rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                fmax: float | None = None) -> np.ndarray:
    """``[n_mels, n_fft // 2 + 1]`` triangular filters, area-normalised (librosa's defaults)."""
    fmax = rate / 2.0 if fmax is None else fmax
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, freqs)
    weights = np.zeros((n_mels, len(freqs)), dtype=np.float64)
    for i in range(n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[:, None]
    return weights.astype(np.float32)


class MelSpectrogram(nn.Module):
    """``[B, T]`` waveform -> ``[B, n_mels, frames]`` mel power spectrogram.

    A periodic Hann window of ``win_length`` samples centred in ``n_fft``; ``center``: the
    waveform is padded with ``n_fft // 2`` zeros on both sides first (librosa's
    ``center=True, pad_mode="constant"``), so frame ``i`` is centred on sample ``i * hop``.
    The kernels are buffers left out of the state dict: they follow from the settings, which
    every backbone records in its preprocessing (hence in its fingerprint)."""

    def __init__(self, rate: int, n_fft: int, hop: int, n_mels: int, *, win_length: int | None
                 = None, fmin: float = 0.0, fmax: float | None = None, center: bool = True
                 ) -> None:
        super().__init__()
        win_length = win_length or n_fft
        self.n_fft, self.hop, self.center = n_fft, hop, center
        n = np.arange(win_length)
        window = np.zeros(n_fft)
        left = (n_fft - win_length) // 2
        window[left:left + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length)
        k = np.arange(n_fft // 2 + 1)[:, None]
        angle = 2 * np.pi * k * np.arange(n_fft)[None, :] / n_fft
        kernels = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])
        self.register_buffer("kernels", torch.from_numpy(kernels[:, None, :].astype(np.float32)),
                             persistent=False)
        self.register_buffer("filters", torch.from_numpy(
            mel_filters(rate, n_fft, n_mels, fmin, fmax)), persistent=False)

    def frames(self, samples: int) -> int:
        padded = samples + (2 * (self.n_fft // 2) if self.center else 0)
        return max(0, (padded - self.n_fft) // self.hop + 1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = waveform.float().unsqueeze(1)
        if self.center:
            x = F.pad(x, (self.n_fft // 2, self.n_fft // 2))
        spec = F.conv1d(x, self.kernels, stride=self.hop)  # [B, 2 * bins, frames]
        real, imag = spec.chunk(2, dim=1)
        power = real * real + imag * imag
        return torch.matmul(self.filters, power)


def check_clips() -> list[Any]:
    """Clips unlike each other, for export parity checks: short noise, a long stereo tone at
    another rate (resampled, cut to its loudest window), a quiet chirp, near silence."""
    from ..data.audio import Clip

    rng = np.random.default_rng(0)
    t = np.arange(int(2.5 * 22050)) / 22050
    tone = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1) * 0.5
    u = np.arange(16000) / 16000
    chirp = 0.01 * np.sin(2 * np.pi * (200 + 3000 * u) * u)
    return [Clip(rng.normal(0, 0.3, 4800).astype(np.float32), 16000, "noise"),
            Clip(tone.astype(np.float32), 22050, "tone"),
            Clip(chirp.astype(np.float32), 16000, "chirp"),
            Clip(rng.normal(0, 1e-4, 16000).astype(np.float32), 16000, "quiet")]


# -- saved folders: each audio backbone class registers its kind here -------------------------
FOLDER_KINDS: dict[str, Any] = {}


def load_audio_folder(path: Path, info: dict, source: str, resolved: str) -> Backbone | None:
    """The audio backbone saved in ``path`` (``info``: its backbone file), or None when the
    file names no audio kind (the registry asks this before the other folder formats)."""
    kind = info.get("kind")
    cls = FOLDER_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return None
    return cls.from_folder(path, info, source=source, resolved=resolved)


def saved_setting(info: dict, key: str, kinds: tuple[type, ...], file: Path) -> Any:
    """One setting a saved audio backbone recorded, type-checked (a run folder is untrusted)."""
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ArtifactError(f"{file}: {key} is {value!r}, not what this backbone saves. The "
                            "folder was edited or damaged: re-run the fit.")
    return value
