"""``logmel-<image backbone>``: a log-mel spectrogram, seen as a picture by an ImageNet model.

The established "ImageNet transfer to audio" recipe: the clip's log-mel spectrogram is
normalised per clip, resized to the image model's input size and given to it as a grey
three-channel image. Everything is one torch module (waveform in, pooled features out), so
every strategy can fine-tune it (the front end has no weights; it sits in the first layer
group with the image model's stem) and the ONNX export holds the front end too.

Front end: 16 kHz, 25 ms Hann window (400 samples), 10 ms hop (160), 64 mel bands
(Slaney, 0-8 kHz), ``log(power + peak * 1e-6)`` (a floor 60 dB below the clip's loudest
cell), then z-scored over the whole clip, the spread never stretched past 1 (a quiet and a
loud recording of one word look alike; silence stays flat). The z-scores become pixels
``0.5 + z / 4`` (so +-2 standard deviations span the 0..1 range of an image) and are then
normalised with the image model's own mean and std, exactly as its pixels were in
pretraining. Mel band 0 (the lowest frequencies) is the image's top row.

``<image backbone>`` is any image backbone name transferkit loads: an alias
(``efficientnet_lite0`` loads offline from its bundled package), a timm name (when its
weights are in the Hugging Face cache or downloadable), or a folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ArtifactError, BackboneNotFoundError
from .audio import FOLDER_KINDS, AudioBackbone, MelSpectrogram, saved_setting
from .base import ADAPTER_DIR, attach_adapter, split_adapter
from .catalogue import register_backbone
from .efficientnet_lite import LITE0, bundled_weights_path
from .text import BACKBONE_FILE

PREFIX = "logmel-"
KIND = "logmel"
RATE, N_FFT, HOP, N_MELS = 16_000, 400, 160, 64
#: the log floor, in dB below the clip's loudest cell (librosa's ``top_db``); also what keeps
#: the DFT's float32 round-off (~110 dB below a pure tone's peak) out of the spectrogram, so
#: the ONNX export matches PyTorch
TOP_DB = 60.0
#: spread (std of the log-mel, natural log) a clip is never stretched beyond: a flat
#: spectrogram (silence, steady noise) stays flat instead of having its noise magnified
MIN_STD = 1.0
WEIGHTS_FILE = "model.safetensors"
#: SpecAugment on training batches: masks per clip, and their widest extent
FREQ_MASKS, TIME_MASKS, MAX_FREQ_FRACTION, MAX_TIME_FRACTION = 2, 2, 0.125, 0.1


class LogMelFrontEnd(nn.Module):
    """``[B, T]`` waveform -> ``[B, 3, H, W]`` normalised image of its log-mel spectrogram."""

    def __init__(self, image_size: tuple[int, int], mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        super().__init__()
        self.mel = MelSpectrogram(RATE, N_FFT, HOP, N_MELS)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Per-clip z-scored log-mel spectrogram ``[B, n_mels, frames]``."""
        power = self.mel(waveform)
        peak = power.amax(dim=(1, 2), keepdim=True)
        spec = torch.log(power + peak * 10 ** (-TOP_DB / 10) + 1e-12)
        mean = spec.mean(dim=(1, 2), keepdim=True)
        std = spec.std(dim=(1, 2), keepdim=True)
        return (spec - mean) / std.clamp_min(MIN_STD)

    def forward(self, waveform: torch.Tensor, spec_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        z = self.log_mel(waveform)
        if spec_mask is not None:  # SpecAugment: masked cells take the clip's mean (0)
            z = z * spec_mask.to(z.dtype)
        image = F.interpolate(z.unsqueeze(1), size=self.image_size, mode="bilinear",
                              align_corners=False)
        pixels = (0.5 + image / 4).expand(-1, 3, -1, -1)
        return (pixels - self.mean) / self.std


class LogmelBackbone(AudioBackbone):
    """A log-mel front end feeding a timm image model (ImageNet weights), globally pooled."""

    def __init__(self, model: nn.Module, architecture: str, image: dict[str, Any], *,
                 source: str, resolved: str, clip_seconds: float | None) -> None:
        super().__init__(source, resolved, rate=RATE, clip_seconds=clip_seconds)
        if hasattr(model, "reset_classifier") and getattr(model, "num_classes", 0):
            model.reset_classifier(0)
        self.model = model.eval()
        self.architecture = architecture
        self.image = {"size": [int(v) for v in image["size"]],
                      "mean": [float(v) for v in image["mean"]],
                      "std": [float(v) for v in image["std"]]}
        self.front_end = LogMelFrontEnd(tuple(self.image["size"]), tuple(self.image["mean"]),
                                        tuple(self.image["std"]))
        self.frames = self.front_end.mel.frames(self.samples)
        self.feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)

    def collate(self, prepared: list[Any], augment: bool = False) -> dict[str, torch.Tensor]:
        batch = super().collate(prepared)
        if augment:
            batch["spec_mask"] = spec_augment_mask(len(prepared), N_MELS, self.frames)
        return batch

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(self.front_end(inputs["waveform"], inputs.get("spec_mask"))).float()

    def layer_groups(self) -> list[nn.Module]:
        """The front end (no weights) with the image model's stem, then timm's own coarse
        groups (stages / blocks, head)."""
        from timm.models import group_modules

        try:
            grouped = group_modules(self.model, self.model.group_matcher(coarse=True))
            groups: list[list[nn.Module]] = [
                mods for _, names in sorted(grouped.items())
                if (mods := [self.model.get_submodule(n) for n in names if n])]
        except (AttributeError, NotImplementedError):
            groups = [list(self.model.children())]
        groups[0] = [self.front_end, *groups[0]]
        return [nn.ModuleList(g) for g in groups]

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": KIND, "architecture": self.architecture, **self.clip_settings(),
                "n_fft": N_FFT, "hop": HOP, "n_mels": N_MELS, "fmin": 0.0,
                "fmax": RATE / 2, "top_db": TOP_DB, "normalise": "per-clip z-score",
                "min_std": MIN_STD,
                "image_size": self.image["size"], "image_mean": self.image["mean"],
                "image_std": self.image["std"], "pixels": "0.5 + z / 4, bilinear"}

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        base, adapter = split_adapter(self.model)
        save_file({k: v.contiguous() for k, v in base.state_dict().items()},
                  str(directory / WEIGHTS_FILE))
        if adapter is not None:
            adapter.save_pretrained(str(directory / ADAPTER_DIR), safe_serialization=True)
        (directory / BACKBONE_FILE).write_text(json.dumps(self.preprocessing(), indent=2))

    @classmethod
    def from_folder(cls, directory: Path, info: dict, *, source: str, resolved: str
                    ) -> LogmelBackbone:
        import timm
        from safetensors.torch import load_file

        file = directory / BACKBONE_FILE
        arch = saved_setting(info, "architecture", (str,), file)
        if not timm.is_model(arch):
            raise ArtifactError(f"{file}: architecture {arch!r} is not a timm model name. The "
                                "folder was edited or damaged: re-run the fit.")
        size = saved_setting(info, "image_size", (list,), file)
        mean = saved_setting(info, "image_mean", (list,), file)
        std = saved_setting(info, "image_std", (list,), file)
        if not (len(size) == 2 and all(isinstance(v, int) and 8 <= v <= 4096 for v in size)
                and len(mean) == len(std) == 3):
            raise ArtifactError(f"{file}: image_size / image_mean / image_std are not an image "
                                "shape and three channel values. Re-run the fit.")
        clip = saved_setting(info, "clip_seconds", (int, float), file)
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
        backbone = cls(model, arch, {"size": size, "mean": mean, "std": std}, source=source,
                       resolved=resolved, clip_seconds=clip)
        backbone.model = attach_adapter(backbone.model, directory)
        return backbone


def spec_augment_mask(batch: int, n_mels: int, frames: int) -> torch.Tensor:
    """``[B, n_mels, frames]`` of ones with a few random mel bands and frame spans zeroed
    (SpecAugment's frequency and time masks; drawn from torch's seeded generator)."""
    mask = torch.ones(batch, n_mels, frames)
    for b in range(batch):
        for size, count, axis in ((n_mels, FREQ_MASKS, 1), (frames, TIME_MASKS, 2)):
            widest = max(1, int(size * (MAX_FREQ_FRACTION if axis == 1 else MAX_TIME_FRACTION)))
            for _ in range(count):
                width = int(torch.randint(0, widest + 1, ()).item())
                start = int(torch.randint(0, max(1, size - width + 1), ()).item())
                if axis == 1:
                    mask[b, start:start + width, :] = 0
                else:
                    mask[b, :, start:start + width] = 0
    return mask


def logmel_from_vision(vision: Any, *, source: str, clip_seconds: float | None
                       ) -> LogmelBackbone:
    """Wrap an image backbone (a loaded ``VisionBackbone``) in the log-mel front end."""
    from .vision import VisionBackbone

    if not isinstance(vision, VisionBackbone):
        raise BackboneNotFoundError(
            f"'{source}': '{source.removeprefix(PREFIX)}' is a {vision.modality} backbone, "
            "not a timm image model; logmel-NAME takes an image backbone (e.g. "
            "logmel-efficientnet_lite0, logmel-mobilenetv2, logmel-resnet18).")
    cfg = vision.data_config
    image = {"size": list(cfg["input_size"][1:]), "mean": cfg["mean"], "std": cfg["std"]}
    return LogmelBackbone(vision.model, vision.architecture, image, source=source,
                          resolved=f"{vision.resolved}, log-mel front end",
                          clip_seconds=clip_seconds)


def create_logmel(timm_name: str, *, pretrained: bool = False, image_size: int | None = None,
                  clip_seconds: float | None = None, source: str | None = None
                  ) -> LogmelBackbone:
    """``logmel-<timm_name>`` built directly by timm (``pretrained=False``: random weights,
    for experiments and tests; pretrained weights come through ``load_backbone``)."""
    from .vision import create_timm_backbone

    source = source or PREFIX + timm_name
    vision = create_timm_backbone(timm_name, source=source, resolved=f"timm {timm_name}",
                                  pretrained=pretrained, image_size=image_size)
    return logmel_from_vision(vision, source=source, clip_seconds=clip_seconds)


FOLDER_KINDS[KIND] = LogmelBackbone


# Listed (and installed by `transferkit models --install`) as an alias; loading routes every
# logmel-NAME through the image backbone NAME (registry.load_backbone), so this one resolves
# exactly as efficientnet_lite0 does: the Hugging Face cache, then the bundled package.
register_backbone(PREFIX + LITE0.alias, "audio", "", "log-mel spectrogram -> EfficientNet-Lite0 "
                  "ImageNet-1k (or any image backbone: logmel-NAME), 3.4M params, 1280-d, "
                  "16 kHz, fine-tunable", package=LITE0.package, pip=LITE0.pip,
                  locate=bundled_weights_path)(None)
