"""The Backbone contract (DESIGN.md): a pretrained model seen as a feature extractor."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ArtifactError, BackboneNotFoundError


class Backbone(nn.Module):
    """A pretrained encoder: examples in, pooled features ``[B, feature_dim]`` out.

    Subclasses set ``modality`` and ``feature_dim`` and implement ``preprocess``, ``forward``,
    ``layer_groups``, ``preprocessing`` (a JSON-able description of ``preprocess``) and
    ``save`` (weights as safetensors + the files needed to rebuild the model offline).
    """

    modality: str = ""
    feature_dim: int = 0
    #: its weights cannot be trained here (a numpy model, static word vectors): only the
    #: strategies that keep the backbone frozen take it (probe, prototypes, ranking)
    frozen_only: bool = False
    #: its forward may run in several threads at once, one core each (``run_batches``); not
    #: for runtimes that are not thread-safe or that pick their own thread count
    parallel_batches: bool = True
    #: its forward is torch ops, which bf16 autocast runs in bf16; False for a backbone on a
    #: runtime of its own (TFLite), whose features are fp32 whatever precision is asked for
    autocasts: bool = True

    def __init__(self, source: str, resolved: str) -> None:
        super().__init__()
        self.source = source  # what the user asked for ("minilm", "hf:bert-base-uncased", ...)
        self.resolved = resolved  # where it was actually loaded from ("bundled package at ...")
        self._fingerprint: str | None = None

    # -- contract ---------------------------------------------------------------------------
    def preprocess(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:  # noqa: D102
        raise NotImplementedError

    def layer_groups(self) -> list[nn.Module]:
        raise NotImplementedError

    def preprocessing(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def prepare(self, examples: list[Any]) -> list[Any]:
        """Per-example work that is cheaper done for all at once (tokenising a whole list).

        ``collate(prepare(xs)) == preprocess(xs)``; the split lets extraction sort by cost and
        pad each batch only to its own longest member.
        """
        return list(examples)

    def collate(self, prepared: list[Any], augment: bool = False) -> dict[str, torch.Tensor]:
        """Batch prepared examples; ``augment`` asks for training-time augmentation."""
        return self.preprocess(prepared)

    def cost(self, prepared_item: Any) -> int:
        """Relative compute cost of one prepared example (token count for text)."""
        return 0

    def source_logits(self, features: torch.Tensor) -> torch.Tensor | None:
        """Logits of the classifier the backbone was pretrained with (ImageNet's 1000 classes)
        for pooled ``features``, or None when it has none. Transferability scores that need
        source-label predictions (LEEP, NCE) use it."""
        return None

    def onnx_problem(self) -> str | None:
        """Why this backbone cannot be written into an ONNX graph (a sentence the export's
        error shows), or None when it can."""
        return None

    def parameter_count(self) -> int:
        """Number of weights (the target-blind "bigger model first" ranking uses it);
        backbones whose weights are not torch parameters override it."""
        return sum(p.numel() for p in self.parameters())

    # -- derived ----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Hash of the weights and the preprocessing: two backbones with the same fingerprint
        give the same features, so caches keyed on it are safe to share."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.preprocessing(), sort_keys=True).encode())
            for name, tensor in sorted(self.state_dict().items()):
                h.update(name.encode())
                t = tensor.detach().cpu().contiguous()
                h.update(str(t.dtype).encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Call after changing the weights (fine-tuning) so caches are not reused wrongly."""
        self._fingerprint = None

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "resolved": self.resolved,
            "modality": self.modality,
            "feature_dim": self.feature_dim,
            "fingerprint": self.fingerprint,
            "preprocessing": self.preprocessing(),
        }


ADAPTER_DIR = "adapter"


def split_adapter(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(base model with the original weights, the peft wrapper or None).

    An unmerged LoRA backbone is saved as the untouched base weights plus the adapter, so a
    reload rebuilds exactly the same modules (and the same fingerprint)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).unload(), model
    return model, None


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def attach_adapter(model: nn.Module, directory: Path) -> nn.Module:
    """Re-wrap a freshly loaded base model with the adapter saved by :func:`split_adapter`."""
    adapter = directory / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        return model
    if not (adapter / ADAPTER_WEIGHTS).is_file():  # peft would fall back to a pickle
        raise ArtifactError(
            f"{adapter} has no {ADAPTER_WEIGHTS}; transferkit loads adapter weights from "
            "safetensors only (never a pickled adapter_model.bin). Re-run the fit.")
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter), is_trainable=False).eval()


def inside(folder: Path, name: Any, file: Path, field: str) -> Path:
    """``folder / name`` for a path that a model file names, refused unless it stays inside
    ``folder`` (after symlinks): a model folder may not make loading read anything else."""
    path = folder / str(name)
    if not isinstance(name, str) or not path.resolve().is_relative_to(folder.resolve()):
        raise ArtifactError(
            f"{file}: {field} is {name!r}, which is not a path inside {folder}; a model "
            "folder may name only its own files. It was edited or is not safe to load: "
            "re-run the fit (or fetch the model again).")
    return path


def largest_module_list(model: nn.Module) -> nn.ModuleList | None:
    """The stack of repeated blocks (encoder layers, decoder blocks) of any architecture."""
    best: nn.ModuleList | None = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best)):
            best = module
    return best


def read_state_dict(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """A bundled ``.pth`` of plain tensors, loaded with ``weights_only=True`` (no unpickling of
    arbitrary objects); an unreadable file or anything but a state dict is an error naming
    ``what`` it should hold and the ``fix``."""
    from collections.abc import Mapping

    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated file or a non-tensor pickle
        raise BackboneNotFoundError(
            f"Could not read the bundled {what} weights at {path}: {exc}. {fix}") from exc
    if not isinstance(source, Mapping):
        raise BackboneNotFoundError(
            f"{path} holds a {type(source).__name__}, not a state dict. {fix}")
    return dict(source)
