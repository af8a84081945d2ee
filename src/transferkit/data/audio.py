"""Audio clips: decoding (soundfile), mono mix-down, resampling (soxr) and fixing the length.

An audio example is a file path or a :class:`Clip` (samples already in memory: an upload, a
Python caller's array). Nothing is decoded when a dataset is read; a backbone decodes each
clip at its own sample rate with :func:`load_clip`, so one dataset serves backbones of
different rates.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga"}
#: clips longer than this are bad rows (``long_audio``): a mislabelled recording or a whole
#: session, not a clip; split long recordings before training
MAX_CLIP_SECONDS = 60.0
#: below this RMS (-80 dBFS) a clip holds no signal (``silent_audio``)
SILENCE_RMS = 1e-4
DEFAULT_CLIP_SECONDS = 1.0


@dataclass(frozen=True, eq=False)
class Clip:
    """Decoded audio: ``samples`` float32, mono ``[T]`` or multi-channel ``[T, C]``."""

    samples: np.ndarray
    rate: int
    name: str = "<audio>"

    @property
    def seconds(self) -> float:
        return len(self.samples) / float(self.rate)

    def content_bytes(self) -> bytes:
        s = np.ascontiguousarray(self.samples, dtype=np.float32)
        return f"clip{self.rate}{s.shape}".encode() + s.tobytes()


def read_audio(x: Any) -> Clip:
    """Decode a path, raw bytes or a :class:`Clip` into a mono float32 clip.

    Raises DataError naming the file (or upload) and what is wrong with it."""
    if isinstance(x, Clip):
        clip = x
    else:
        import soundfile as sf

        name = str(x) if isinstance(x, (str, Path)) else "<upload>"
        source = io.BytesIO(x) if isinstance(x, (bytes, bytearray)) else x
        try:
            samples, rate = sf.read(source, dtype="float32", always_2d=True)
        except Exception as exc:  # libsndfile's errors: not audio, truncated, unknown format
            raise DataError(
                f"{name}: not readable as audio ({_short(exc)}). Use WAV, FLAC or OGG files "
                "(re-export it, or drop it from the data).") from exc
        clip = Clip(samples, int(rate), name)
    samples = np.asarray(clip.samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)  # mono: the average of the channels
    if samples.ndim != 1:
        raise DataError(f"{clip.name}: audio samples must be [time] or [time, channels]; "
                        f"got shape {tuple(clip.samples.shape)}.")
    if samples.size == 0 or clip.rate <= 0:
        raise DataError(f"{clip.name}: the audio is empty (0 samples). Drop it from the data.")
    if not np.isfinite(samples).all():
        raise DataError(f"{clip.name}: the audio holds NaN or infinite samples. Re-export it.")
    return Clip(samples, clip.rate, clip.name)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """``samples`` at ``target_rate`` (soxr's high-quality polyphase resampler)."""
    if rate == target_rate:
        return samples
    import soxr

    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def fix_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Exactly ``length`` samples: a shorter clip is centred in zeros; a longer one keeps its
    loudest window (a keyword anywhere in a long clip stays in), found on a 10 ms grid."""
    n = len(samples)
    if n == length:
        return samples
    if n < length:
        left = (length - n) // 2
        return np.pad(samples, (left, length - n - left))
    hop = max(1, length // 100)
    energy = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    starts = np.arange(0, n - length + 1, hop)
    best = int(starts[np.argmax(energy[starts + length] - energy[starts])])
    return samples[best:best + length]


def load_clip(x: Any, rate: int, clip_seconds: float | None = DEFAULT_CLIP_SECONDS
              ) -> np.ndarray:
    """One example as float32 mono samples at ``rate``, ``clip_seconds`` long (None: as is)."""
    clip = read_audio(x)
    samples = resample(clip.samples, clip.rate, rate)
    if clip_seconds is None:
        return samples
    return fix_length(samples, max(1, int(round(clip_seconds * rate))))


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
