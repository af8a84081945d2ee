"""Content-addressed feature cache, the one feature-extraction routine and its batch loop.

A frozen backbone is run once per dataset, never once per epoch or per run: features are
stored under ``$TRANSFERKIT_CACHE`` (default ``~/.cache/transferkit``) keyed by the backbone
fingerprint (weights + preprocessing), the numeric precision and the data's content hash.
The key does not name the engine that ran the backbone (PyTorch or ONNX Runtime, see
``onnx_features``): both give the same features (checked to 1e-4), so they share entries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_path
from ..backbones.base import Backbone
from ..errors import ConfigError
from .device import autocast_for, default_device, resolve_precision
from .onnx_features import ENGINES, exportable, feature_session, prefers_onnx, run_session

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("TRANSFERKIT_CACHE", Path.home() / ".cache" / "transferkit"))


@dataclass
class ExtractionStats:
    n: int = 0
    seconds: float = 0.0
    from_cache: bool = False
    batches: int = 0
    precision: str = "fp32"
    #: what ran the backbone: "torch" or "onnx" (ONNX Runtime); "" when nothing ran (cache)
    engine: str = ""


class FeatureCache:
    """``.npy`` files named by a hash; written atomically, read without pickle."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or cache_root()) / "features"

    @staticmethod
    def key(backbone: Backbone, data_fingerprint: str, precision: str) -> str:
        h = hashlib.sha256(f"{backbone.fingerprint}|{precision}|{data_fingerprint}".encode())
        return h.hexdigest()[:40]

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):  # a damaged entry is a miss, and gets rewritten
            return None

    def save(self, key: str, features: np.ndarray) -> None:
        with atomic_path(self.path(key)) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, features, allow_pickle=False)


def extract_features(
    backbone: Backbone,
    inputs: list[Any],
    *,
    batch_size: int = 32,
    precision: str = "auto",
    device: torch.device | None = None,
    cache: FeatureCache | None = None,
    data_fingerprint: str | None = None,
    progress: Any = None,
    engine: str = "auto",
) -> tuple[np.ndarray, ExtractionStats]:
    """Pooled features ``[N, feature_dim]`` (float32) in input order.

    Examples are sorted by cost (token count) so each batch pads only to its own longest
    member; the backbone runs under ``torch.inference_mode`` and, with ``bf16``, under
    autocast. ``progress`` is an optional callable ``(done, total)``.

    ``engine``: ``torch``; ``onnx``: ONNX Runtime (``onnx_features``) for an exportable
    backbone on the CPU in fp32, PyTorch for anything else or when the export fails;
    ``auto`` (the default): ``onnx`` where ORT was measured faster (convolutional image
    models; not text encoders, see ``onnx_features.prefers_onnx``), sparing a missing export
    on a small extraction or on weights trained in this process. ``stats.engine`` says which
    ran. Both engines give the same features (checked to 1e-4), so they share cache entries.
    """
    if engine not in ENGINES:
        raise ConfigError(f"Unknown engine '{engine}'. Choose one of: {', '.join(ENGINES)}.")
    device = device or default_device()
    resolved = resolve_precision(precision, device)
    stats = ExtractionStats(n=len(inputs), precision=resolved)
    start = time.perf_counter()
    key = None
    if cache is not None:
        key = FeatureCache.key(backbone, data_fingerprint or _fingerprint(backbone, inputs),
                               resolved)
        hit = cache.load(key)
        if hit is not None and hit.shape == (len(inputs), backbone.feature_dim):
            stats.from_cache = True
            stats.seconds = time.perf_counter() - start
            return hit, stats

    out = np.empty((len(inputs), backbone.feature_dim), dtype=np.float32)

    def keep(idx: np.ndarray, features: torch.Tensor | np.ndarray) -> None:
        out[idx] = features if isinstance(features, np.ndarray) else \
            features.float().cpu().numpy()

    backbone.to(device)
    forward = None
    stats.engine = "torch"
    if inputs and _wants_onnx(backbone, engine, resolved, device):
        session = feature_session(backbone, cache_root(), auto=engine == "auto", n=len(inputs))
        if session is not None:
            stats.engine = "onnx"
            forward = partial(run_session, *session)
    stats.batches = run_batches(backbone, backbone.prepare(inputs), keep, batch_size=batch_size,
                                device=device, autocast=autocast_for(resolved, device),
                                forward=forward, progress=progress)
    stats.seconds = time.perf_counter() - start
    if cache is not None and key is not None:
        cache.save(key, out)
    return out, stats


def _wants_onnx(backbone: Backbone, engine: str, precision: str, device: torch.device
                ) -> bool:
    """ORT computes fp32 on the CPU; ``auto`` takes it only where it is measured faster."""
    if engine == "torch":
        return False
    why = None
    if device.type != "cpu":
        why = f"the backbone runs on {device.type}"
    elif precision != "fp32":
        why = f"precision is {precision} (ONNX Runtime runs fp32)"
    else:
        why = exportable(backbone)
    if why is None:
        return engine == "onnx" or prefers_onnx(backbone)
    if engine == "onnx":
        log.info("engine=onnx: PyTorch computes %s features, because %s.", backbone.source, why)
    return False


def run_batches(
    backbone: Backbone,
    prepared: list[Any],
    keep: Callable[[np.ndarray, Any], None],
    *,
    batch_size: int,
    device: torch.device,
    autocast: Any,
    forward: Callable[[dict[str, torch.Tensor]], Any] | None = None,
    costs: Sequence[float] | None = None,
    progress: Any = None,
) -> int:
    """The one batched inference loop: ``forward`` (default: the backbone's pooled features)
    over ``prepared`` examples, and ``keep(indices, output)`` for each batch; returns the
    number of batches.

    Examples run most costly first (``costs``, default ``backbone.cost``) so each batch pads
    only to its own longest member; the loop runs in eval mode under ``torch.inference_mode``
    and ``autocast``, and restores the backbone's train/eval mode afterwards. ``progress`` is
    an optional callable ``(done, total)``, called after each batch is kept."""
    costs = [backbone.cost(p) for p in prepared] if costs is None else costs
    order = np.argsort([-c for c in costs], kind="stable")
    run = forward if forward is not None else (lambda batch: backbone(**batch))
    batches = 0
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode(), autocast:
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                batch = backbone.collate([prepared[i] for i in idx])
                keep(idx, run({k: v.to(device, non_blocking=True) for k, v in batch.items()}))
                batches += 1
                if progress is not None:
                    progress(min(s + batch_size, len(order)), len(order))
    finally:
        backbone.train(was_training)
    return batches


def _fingerprint(backbone: Backbone, inputs: list[Any]) -> str:
    from ..data.examples import Examples

    return Examples(inputs=list(inputs), labels=None, origins=[], modality=backbone.modality
                    ).fingerprint()
