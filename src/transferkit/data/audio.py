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


# ---------------------------------------------------------------- validation and table cells


def audio_problem(x: Any) -> tuple[str, str] | None:
    """Why an audio example cannot be used, as ``(issue kind, detail)``, or None.

    Cheap first: the header (``soundfile.info``) gives the format, length and truncation
    hints, so an over-long clip is refused without decoding it; a clip that passes is
    decoded once, which catches corrupt frames and measures its loudness."""
    if x is None or (isinstance(x, str) and not x.strip()):
        return "bad_audio", "no audio file named"
    if isinstance(x, (str, Path)):
        import soundfile as sf

        path = Path(x)
        if not path.is_file():
            return "bad_audio", f"{path}: no such file"
        try:
            info = sf.info(str(path))
        except Exception as exc:  # libsndfile: not audio, unknown format, unreadable header
            why = str(exc).replace(f"Error opening {str(path)!r}: ", "")
            why = (why or type(exc).__name__).splitlines()[0][:160]
            return "bad_audio", f"{path}: not an audio file ({why})"
        if _truncated(info.extra_info):
            return "bad_audio", f"{path}: truncated (the file ends before its audio does)"
        if info.frames <= 0 or info.samplerate <= 0:
            return "bad_audio", f"{path}: empty (0 samples)"
        if info.duration > MAX_CLIP_SECONDS:
            return "long_audio", (f"{path}: {info.duration:.1f} s, over the "
                                  f"{MAX_CLIP_SECONDS:.0f} s limit")
    try:
        clip = read_audio(x)
    except DataError as exc:
        cause = exc.__cause__
        if cause is None:  # read_audio's own finding: empty, NaN samples, a bad shape
            return "bad_audio", str(exc).split(". ")[0]
        return "bad_audio", f"{x}: cannot decode it ({_short(cause)}): truncated or corrupt"
    if clip.seconds > MAX_CLIP_SECONDS:  # an in-memory Clip
        return "long_audio", (f"{clip.name}: {clip.seconds:.1f} s, over the "
                              f"{MAX_CLIP_SECONDS:.0f} s limit")
    rms = float(np.sqrt(np.mean(clip.samples.astype(np.float64) ** 2)))
    if rms < SILENCE_RMS:
        return "silent_audio", f"{clip.name}: RMS {rms:.1e}, below {SILENCE_RMS:.0e}"
    return None


def _truncated(extra_info: str) -> bool:
    """libsndfile's header notes on a cut-off file: a WAV/AIFF ``data : 64000 (should be
    31978)`` with less data than declared, or an OGG stream without its end."""
    import re

    if "ended unexpectedly" in extra_info:
        return True
    found = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", extra_info, re.MULTILINE)
    return found is not None and int(found.group(2)) < int(found.group(1))


def looks_like_audio_paths(cells: list[Any]) -> bool:
    """A table column of audio file paths: most filled cells are one-line strings ending in
    an audio suffix (the others become reported bad rows, not a text column)."""
    filled = [c for c in cells if isinstance(c, str) and c.strip()]
    hits = sum(len(c) < 4096 and "\n" not in c and Path(c.strip()).suffix.lower()
               in AUDIO_SUFFIXES for c in filled)
    return hits > 0 and hits * 2 >= len(filled)


def audio_paths(cells: list[Any], base: Path | None) -> list[Path | None]:
    """Table cells as audio file paths, a relative one resolved against ``base`` (the
    table's folder); an empty cell stays None (a reported bad row)."""
    out: list[Path | None] = []
    for cell in cells:
        if cell is None or not str(cell).strip():
            out.append(None)
            continue
        path = Path(str(cell).strip()).expanduser()
        out.append(path if path.is_absolute() or base is None else base / path)
    return out
