"""``resemblyzer``: the GE2E speaker encoder (Wan et al. 2018) of the ``resemblyzer`` package
(Resemble AI, 0.1.4): a 3-layer LSTM (256) and a linear layer on 40-band mel spectrograms.

Only its weights are read (``resemblyzer/pretrained.pt``, ``torch.load(weights_only=True)``);
its modules are never imported (they need librosa and webrtcvad, a C build). The front end is
rebuilt in torch with the package's parameters (``resemblyzer/hparams.py``, ``audio.py``):
16 kHz, 25 ms window (n_fft 400), 10 ms hop, 40 mel bands, ``librosa.feature.melspectrogram``
defaults (power 2, periodic Hann, ``center=True`` with zero padding, Slaney mels) and no log.
``VoiceEncoder.embed_utterance`` is reproduced for the clip's length: volume raised (never
lowered) to -30 dBFS, the clip cut into 1.6 s partials (160 frames) at 1.3 partials a
second, zero-padded where the last one overhangs; each partial's last hidden state through
linear + ReLU, L2-normalised; the mean of the partials, L2-normalised again (256-d). Not
reproduced: ``preprocess_wav``'s voice-activity trimming of long silences (webrtcvad),
which changes a clip's length per recording; fixed-length clips keep their pauses.

The LSTM is split into three one-layer LSTMs (the same weights, renamed; the same
arithmetic) so that partial fine-tuning can train the top layers only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BackboneNotFoundError
from .audio import FOLDER_KINDS, AudioBackbone, MelSpectrogram, saved_setting
from .base import read_state_dict
from .catalogue import package_file, register_backbone
from .text import BACKBONE_FILE

PACKAGE, KIND, WEIGHTS = "resemblyzer", "resemblyzer", "pretrained.pt"
PIP = "--no-deps resemblyzer==0.1.4"  # its declared deps (webrtcvad, librosa) are not needed
RATE, N_FFT, HOP, N_MELS = 16_000, 400, 160, 40
PARTIAL_FRAMES, PARTIALS_PER_SECOND, MIN_COVERAGE = 160, 1.3, 0.75
HIDDEN, LAYERS = 256, 3
TARGET_DBFS = -30.0
WEIGHTS_FILE = "model.safetensors"
_FIX = f"Fix: pip install --force-reinstall {PIP}."


def weights_path() -> Path | None:
    return package_file(PACKAGE, WEIGHTS)


def partial_slices(n_samples: int) -> tuple[list[int], int]:
    """(first frame of each 160-frame partial, samples the clip is zero-padded to): what
    ``VoiceEncoder.compute_partial_slices(n_samples, rate=1.3, min_coverage=0.75)`` gives."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round((RATE / PARTIALS_PER_SECOND) / HOP))
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
    coverage = (n_samples - starts[-1] * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_COVERAGE and len(starts) > 1:
        starts = starts[:-1]
    return starts, max(n_samples, (starts[-1] + PARTIAL_FRAMES) * HOP)


class ResemblyzerBackbone(AudioBackbone):
    """Whole-clip GE2E speaker embedding (256-d, L2-normalised, non-negative)."""

    def __init__(self, state: dict[str, torch.Tensor], *, source: str, resolved: str,
                 clip_seconds: float | None) -> None:
        super().__init__(source, resolved, rate=RATE, clip_seconds=clip_seconds)
        self.mel = MelSpectrogram(RATE, N_FFT, HOP, N_MELS)
        self.layers = nn.ModuleList(
            nn.LSTM(N_MELS if i == 0 else HIDDEN, HIDDEN, 1, batch_first=True)
            for i in range(LAYERS))
        self.linear = nn.Linear(HIDDEN, HIDDEN)
        self.load_state_dict(state, strict=True)
        self.feature_dim = HIDDEN
        self.starts, self.padded = partial_slices(self.samples)
        self.eval()

    @staticmethod
    def remap(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The package's ``model_state`` -> this module's names (``lstm.weight_ih_l2`` ->
        ``layers.2.weight_ih_l0``); its GE2E similarity scale and bias are left out."""
        out: dict[str, torch.Tensor] = {}
        for key, tensor in source.items():
            if key.startswith("lstm."):
                name, layer = key.removeprefix("lstm.").rsplit("_l", 1)
                out[f"layers.{int(layer)}.{name}_l0"] = tensor
            elif key.startswith("linear."):
                out[key] = tensor
            elif not key.startswith("similarity_"):
                raise BackboneNotFoundError(f"Unexpected tensor {key!r} in the resemblyzer "
                                            f"weights. {_FIX}")
        return out

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        wav = inputs["waveform"].float()
        # normalize_volume(wav, -30, increase_only=True): quiet clips are raised, loud kept
        rms = wav.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-8)
        wav = wav * (10 ** (TARGET_DBFS / 20) / rms).clamp_min(1.0)
        if self.padded > wav.shape[1]:
            wav = nn.functional.pad(wav, (0, self.padded - wav.shape[1]))
        mel = self.mel(wav).transpose(1, 2)  # [B, frames, 40]
        x = torch.stack([mel[:, s:s + PARTIAL_FRAMES] for s in self.starts], dim=1)
        batch, partials = x.shape[:2]
        x = x.reshape(batch * partials, PARTIAL_FRAMES, N_MELS)
        for lstm in self.layers:
            x, _ = lstm(x)
        embeds = torch.relu(self.linear(x[:, -1]))
        embeds = embeds / embeds.norm(dim=1, keepdim=True).clamp_min(1e-12)
        mean = embeds.reshape(batch, partials, HIDDEN).mean(dim=1)
        return mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def layer_groups(self) -> list[nn.Module]:
        """The front end (no weights) with the first LSTM layer, the other two, the linear."""
        return [nn.ModuleList([self.mel, self.layers[0]]), self.layers[1], self.layers[2],
                self.linear]

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": KIND, **self.clip_settings(), "n_fft": N_FFT, "hop": HOP,
                "n_mels": N_MELS, "mel": "power, slaney, center zero-padded",
                "volume_dbfs": TARGET_DBFS, "partial_frames": PARTIAL_FRAMES,
                "partials_per_second": PARTIALS_PER_SECOND, "min_coverage": MIN_COVERAGE}

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  str(directory / WEIGHTS_FILE))
        (directory / BACKBONE_FILE).write_text(json.dumps(self.preprocessing(), indent=2))

    @classmethod
    def from_folder(cls, directory: Path, info: dict, *, source: str, resolved: str
                    ) -> ResemblyzerBackbone:
        from safetensors.torch import load_file

        clip = saved_setting(info, "clip_seconds", (int, float), directory / BACKBONE_FILE)
        return cls(load_file(str(directory / WEIGHTS_FILE)), source=source, resolved=resolved,
                   clip_seconds=clip)


FOLDER_KINDS[KIND] = ResemblyzerBackbone


@register_backbone(KIND, "audio", "", "Resemblyzer GE2E speaker encoder (3-layer LSTM), 1.4M "
                   "params, 256-d, 16 kHz, fine-tunable", package=PACKAGE, pip=PIP,
                   locate=weights_path)
def load_resemblyzer(alias: Any, path: Path, options: dict, image_size: int | None
                     ) -> ResemblyzerBackbone:
    checkpoint = read_state_dict(path, "resemblyzer", _FIX)
    state = checkpoint.get("model_state")
    if not isinstance(state, dict):
        raise BackboneNotFoundError(f"{path} has no model_state. {_FIX}")
    return ResemblyzerBackbone(ResemblyzerBackbone.remap(state), source=alias.name,
                               resolved=f"bundled package resemblyzer ({path})",
                               clip_seconds=options.get("clip_seconds"))
