"""Frozen-prefix activation cache: run the frozen lower layers once per dataset, not per epoch.

When the bottom layers of a text backbone are frozen (and run in eval mode, so they are
deterministic), their output for a given text never changes during training. We compute it
once, keep it per example (on disk through the feature cache, keyed by the backbone
fingerprint, the prefix depth, the precision and the data), and during training the first
frozen layer *returns* the cached output while the other frozen layers pass it through:
the model's own code still builds masks and runs the trainable top layers, so nothing
architecture-specific is re-implemented. Embedding look-ups still run (they are cheap).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import numpy as np
import torch
from torch import nn

from .cache import FeatureCache, run_batches


def static_prefix(backbone: Any, frozen: list[nn.Module]) -> list[nn.Module] | None:
    """The leading run of ``frozen`` repeated layers (input side first) whose outputs can be
    computed once, or None. Only a text backbone's prefix is static: image training augments
    its inputs, so frozen image layers see new pixels every epoch."""
    from ..backbones.base import largest_module_list

    if backbone.modality != "text":
        return None
    layers = largest_module_list(backbone.model)
    if layers is None:
        return None
    frozen_ids = {id(m) for m in frozen}
    prefix = []
    for layer in layers:
        if id(layer) not in frozen_ids:
            break
        prefix.append(layer)
    return prefix or None


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the frozen prefix has run."""


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _like(output_template: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output_template, tuple):
        return (hidden, *([None] * (len(output_template) - 1)))
    return hidden


class PrefixCache:
    """Replays the output of ``layers[:depth]`` (the frozen repeated layers of a text model)."""

    def __init__(self, layers: list[nn.Module], per_example: list[torch.Tensor],
                 template: Any) -> None:
        self.layers = layers
        self.per_example = per_example
        self.template = template  # a frozen layer's output structure (tensor or tuple)
        self.batch: list[int] | None = None
        self._originals = [layer.forward for layer in layers]
        for i, layer in enumerate(layers):
            layer.forward = self._make_forward(i)  # instance attribute: wrapping-proof

    def _make_forward(self, position: int):
        original = self._originals[position]

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.batch is None:
                return original(*args, **kwargs)
            hidden_in = args[0] if args else kwargs["hidden_states"]
            if position == 0:
                hidden_in = self._replay(hidden_in)
            return _like(self.template, hidden_in)

        return forward

    def _replay(self, like: torch.Tensor) -> torch.Tensor:
        rows = [self.per_example[i] for i in self.batch or []]
        out = torch.zeros(like.shape[0], like.shape[1], rows[0].shape[-1], dtype=rows[0].dtype,
                          device=like.device)
        for r, value in enumerate(rows):
            out[r, : value.shape[0]] = value.to(like.device)
        return out.to(like.dtype) if like.is_floating_point() else out

    def activate(self, batch: list[int]) -> None:
        self.batch = list(batch)

    def deactivate(self) -> None:
        self.batch = None

    def remove(self) -> None:
        for layer, original in zip(self.layers, self._originals, strict=True):
            layer.forward = original


def _output_of(backbone: Any, layer: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    """``layer``'s output for ``batch``; the forward pass stops there (upper layers skipped)."""
    captured: dict[str, Any] = {}
    caller = threading.get_ident()  # batches run side by side: each catches only its own

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if threading.get_ident() == caller:
            captured["out"] = output
            raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        backbone.model(**batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["out"]


def build_prefix_cache(
    backbone: Any, layers: list[nn.Module], prepared: list[Any], *, batch_size: int,
    device: torch.device, precision: str, cache: FeatureCache | None, key_parts: list[str],
) -> PrefixCache:
    """Run the backbone up to the last frozen layer once, keep each example's hidden states."""
    lengths = [len(p["input_ids"]) for p in prepared]
    key = None
    if cache is not None:
        h = hashlib.sha256("|".join(key_parts).encode())
        for p in prepared:
            h.update(np.asarray(p["input_ids"], dtype=np.int64).tobytes() + b"|")
        key = "prefix-" + h.hexdigest()[:36]
        hit = cache.load(key)
        if hit is not None and hit.shape[0] == sum(lengths):
            with torch.inference_mode():
                one = {k: v.to(device) for k, v in backbone.collate(prepared[:1]).items()}
                template = _output_of(backbone, layers[-1], one)
            return PrefixCache(layers, list(torch.from_numpy(hit).split(lengths)), template)

    per_example: list[torch.Tensor] = [torch.empty(0)] * len(prepared)
    last: list[Any] = [None]  # the last batch's output: the structure replays imitate

    def keep(idx: np.ndarray, output: Any) -> None:
        last[0] = output
        hidden = _hidden(output).float().cpu()
        for r, i in enumerate(idx):
            per_example[i] = hidden[r, : lengths[i]].clone()

    run_batches(backbone, prepared, keep, batch_size=batch_size, device=device,
                precision=precision, costs=lengths,
                forward=lambda batch: _output_of(backbone, layers[-1], batch))
    if cache is not None and key is not None:
        cache.save(key, torch.cat(per_example).numpy())
    return PrefixCache(layers, per_example, last[0])
