"""A frozen backbone's pooled features through ONNX Runtime (``onnx_graph`` writes the graph,
as it does for ``transferkit export --onnx``).

On CPU in fp32, ORT runs convolutional backbones (images, log-mel audio) 1.1-4.4x faster than
PyTorch, features within 1e-4 (``prefers_onnx`` has the measurements, and why text stays on
PyTorch under ``engine="auto"``): what ranking many candidates needs. The backbone alone
(inputs = what its ``collate`` returns, output = pooled features ``[B, D]``) is exported once
per fingerprint to ``<cache root>/onnx/<fingerprint>.onnx`` (temp file + rename: no half file
survives a kill), dynamic batch and sequence axes. Each session is checked against PyTorch on
inputs of very different lengths before use; a damaged or wrong file is re-exported, and what
cannot be exported or checked runs on PyTorch (logged once, never an error).

Weights that move: caches trust ``Backbone.fingerprint``, which training refreshes only when
it ends. A tensor's version counter moves with every in-place update, so a backbone whose
weights changed since its last extraction under the same fingerprint (an evaluation amid a
contrastive or prototypical training run) is run by PyTorch; an export is named by a
fingerprint computed afresh from the very copy exported.
"""

from __future__ import annotations

import copy
import json
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_path, write_json
from ..errors import ArtifactError
from .onnx_graph import export_graph, is_peft, make_exportable

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
FEATURES_OUTPUT = "features"
PARITY_TOLERANCE = 1e-4
MAX_EXPORT_BYTES = 2**31 - 2**26  # protobuf's 2 GB, less room for the graph itself


class FeatureGraph(nn.Module):
    """Positional inputs (the exporter's calling convention) -> pooled fp32 features."""

    def __init__(self, backbone: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.backbone(**dict(zip(self.names, tensors, strict=True))).float()


# -- which backbones, and where ------------------------------------------------------------
def exportable(backbone: Any) -> str | None:
    """Why ``backbone`` cannot run on ORT here, or None when it can be exported."""
    from ..backbones import AudioBackbone, TextBackbone, VisionBackbone

    if getattr(backbone, "frozen_only", False):
        return "a frozen-only backbone (its weights are not torch modules)"
    if (problem := backbone.onnx_problem()) is not None:
        return problem
    if not isinstance(backbone, TextBackbone | VisionBackbone | AudioBackbone):
        return f"{type(backbone).__name__} has no ONNX export"
    if is_peft(getattr(backbone, "model", None)):
        return "an unmerged LoRA adapter"
    if any(p.dtype != torch.float32 for p in backbone.parameters()):
        return "weights not in float32"
    if sum(4 * p.numel() for p in backbone.parameters()) > MAX_EXPORT_BYTES:
        return "over 2 GB of weights (one ONNX file holds at most 2 GB)"
    return None


def prefers_onnx(backbone: Any) -> bool:
    """Where ``engine="auto"`` takes ORT: where it was measured faster than PyTorch fp32 on
    this project's CPU (2 cores, AVX-512; batch 32, alternating in one process):

    - convolutional timm models: EfficientNet-Lite0 3.3x at 224 px and 2.1x at 64 px one batch
      at a time, 1.6-1.8x at 64 px with batches side by side (``run_batches``), ResNet-18 1.7x,
      MobileNetV3-S 2.4x, ConvNeXt-atto 1.1x; as ``logmel-NAME`` on spectrograms (100
      keywords_espeak clips, side by side) Lite0 3.4x, MobileNetV2 4.4x: yes;
    - timm vision transformers (ViT-Ti 0.8x, DeiT-Ti 0.8x), resemblyzer's LSTM (1.01x): no;
    - text transformers: no. MiniLM ran 1.04-1.05x side by side (2,000 texts): both engines
      spend ~75-80% of the time in fp32 GEMMs (MKL, MLAS) and neither kernel beats the other
      here; a few percent do not pay for an export. ``engine="onnx"`` still runs them on ORT.
    """
    modules = list(backbone.modules())  # convolutional: 2-d convolutions and no attention
    return any(isinstance(m, nn.Conv2d) for m in modules) and not any(
        type(m).__name__.endswith("Attention") or isinstance(m, nn.MultiheadAttention)
        for m in modules)


# -- per-backbone state -----------------------------------------------------------------------
@dataclass
class _Bound:
    """What this process decided for one backbone object at one state of its weights."""

    signature: tuple[int, ...]
    fingerprint: str
    state: str = "pending"  # "onnx", "torch", or "pending": not decided yet (no export)
    #: its weights changed in this process (trained here): auto spends no export on them
    trained: bool = False
    #: its checked sessions by intra-op thread count (1 where batches run side by side), and
    #: the file they were opened from (the cache root may have moved since)
    sessions: dict[int, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    path: Path | None = None


#: ``engine="auto"`` makes a missing export only for an extraction at least this large: a
#: smaller one is over on PyTorch before the export would be
AUTO_EXPORT_MIN = 256
_BOUND: weakref.WeakKeyDictionary[nn.Module, _Bound] = weakref.WeakKeyDictionary()
_LOGGED: set[str] = set()
#: how many exports this process ran (tests check that a cached export is reused)
EXPORTS = {"count": 0}


def _log_once(key: str, message: str) -> None:
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning(message)


def weight_signature(module: nn.Module) -> tuple[int, ...]:
    """Moves whenever a weight is changed in place (an optimizer step) or replaced: each
    tensor's storage address and version counter."""
    out: list[int] = []
    for t in (*module.parameters(), *module.buffers()):
        try:
            version = t._version
        except RuntimeError:  # an inference-mode tensor: it cannot be updated in place
            version = -1
        out += (t.data_ptr(), version)
    return tuple(out)


def _versions() -> str:
    import onnxruntime
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, " \
           f"onnxruntime {onnxruntime.__version__}"


def feature_session(backbone: Any, root: Path, *, auto: bool, n: int, threads: int
                    ) -> tuple[Any, list[str]] | None:
    """An ORT session computing ``backbone``'s features and its input names, or None (then
    PyTorch runs it) -- for an extraction of ``n`` inputs with ``engine="auto"`` (``auto``) or
    ``"onnx"``. A missing export costs seconds (~5 s for MiniLM) and ~4 bytes per weight on
    disk: ``auto`` spends them only on weights as this process first saw them (a pretrained
    candidate, not weights trained here) and on at least ``AUTO_EXPORT_MIN`` inputs.
    ``threads``: the session's intra-op threads (1 where batches run side by side)."""
    signature = weight_signature(backbone)
    fingerprint = backbone.fingerprint
    bound = _BOUND.get(backbone)
    trained = bound is not None and (bound.trained or bound.fingerprint != fingerprint)
    if bound is not None and bound.fingerprint == fingerprint:
        if bound.signature != signature:
            # weights changed in place, fingerprint not refreshed: training is under way
            _BOUND[backbone] = _Bound(signature, fingerprint, "torch", trained=True)
            return None
        if bound.state == "torch":
            return None
        if bound.state == "onnx":
            try:  # the file was checked when first opened
                if threads not in bound.sessions:
                    bound.sessions[threads] = _open(bound.path, threads)
                return bound.sessions[threads], bound.inputs
            except Exception:  # noqa: BLE001 - deleted since (a cleared cache): resolve afresh
                bound.sessions.clear()
    may_export = not auto or (n >= AUTO_EXPORT_MIN and not trained)
    if not may_export and not _path(root, fingerprint).is_file():
        _BOUND[backbone] = _Bound(signature, fingerprint, "pending", trained=trained)
        return None
    bound = _Bound(signature, fingerprint, "torch", trained=trained)
    _BOUND[backbone] = bound
    try:
        opened = _resolve(backbone, root, fingerprint, threads)
    except Exception as e:  # noqa: BLE001 - never fail an extraction over the fast path
        _log_once(f"{fingerprint}:error", f"ONNX Runtime is not used for {backbone.source} "
                  f"features ({type(e).__name__}: {str(e)[:300]}); PyTorch runs them.")
        return None
    if opened is not None:
        bound.state, bound.path = "onnx", _path(root, fingerprint)
        bound.sessions[threads], bound.inputs = opened
    return opened


def _path(root: Path, fingerprint: str) -> Path:
    return root / "onnx" / f"{fingerprint}.onnx"


def _resolve(backbone: Any, root: Path, fingerprint: str, threads: int
             ) -> tuple[Any, list[str]] | None:
    path = _path(root, fingerprint)
    failed = path.with_suffix(".failed.json")
    versions = _versions()
    if failed.is_file():
        try:
            record = json.loads(failed.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        if isinstance(record, dict) and record.get("versions") == versions:
            _log_once(f"{fingerprint}:failed", f"ONNX Runtime is not used for "
                      f"{backbone.source} features: an earlier export failed "
                      f"({record.get('reason', '?')}; delete {failed} to retry).")
            return None
    if path.is_file():
        try:
            session = _open(path, threads)
            diff = _parity(backbone, session)
            if diff <= PARITY_TOLERANCE:
                return session, _input_names(session)
            reason = f"differs from PyTorch by {diff:.2e}"
        except Exception as e:  # noqa: BLE001 - ORT's own Fail/InvalidProtobuf/... classes
            reason = f"unreadable ({type(e).__name__})"
        if _fresh_fingerprint(backbone) != fingerprint:
            # the file may be right: this backbone's weights moved without a new fingerprint
            return None
        _log_once(f"{fingerprint}:damaged", f"{path} is {reason}; exporting it again.")
        path.unlink(missing_ok=True)
    return _export(backbone, path, failed, versions, threads)


def _export(backbone: Any, path: Path, failed: Path, versions: str, threads: int
            ) -> tuple[Any, list[str]] | None:
    clone = make_exportable(copy.deepcopy(backbone).float().eval())
    clone.invalidate_fingerprint()
    if clone.fingerprint != path.stem:  # the weights are not what the fingerprint says
        return None
    sample = dict(clone.collate(clone.prepare(_check_inputs(clone)[:2])))
    names = list(sample)
    graph = FeatureGraph(clone, names).eval()
    try:
        with atomic_path(path) as tmp:
            export_graph(graph, sample, tmp, text=clone.modality == "text",
                         output=FEATURES_OUTPUT)
            EXPORTS["count"] += 1
            session = _open(tmp, threads)
            diff = _parity(backbone, session)
            if not diff <= PARITY_TOLERANCE:
                raise ArtifactError(f"the export differs from PyTorch by {diff:.2e} "
                                    f"(> {PARITY_TOLERANCE:g})")
    except Exception as e:  # noqa: BLE001 - recorded, so later runs do not retry in vain
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        write_json(failed, {"reason": reason, "versions": versions})
        _log_once(f"{path.stem}:failed", f"ONNX Runtime is not used for {backbone.source} "
                  f"features: the export failed ({reason}). PyTorch runs them.")
        return None
    return session, _input_names(session)


def _fresh_fingerprint(backbone: Any) -> str:
    """The fingerprint of the weights as they are now, leaving the memo alone."""
    clone = copy.copy(backbone)  # shares the weights; only the memo is its own
    clone.invalidate_fingerprint()
    return clone.fingerprint


def _open(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # no spinning between runs: on shared cores a spinning pool steals the time of the next
    # batch's collate and of other processes (MiniLM: 0.73-0.84x PyTorch spinning, 1.0-1.5x not)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _input_names(session: Any) -> list[str]:
    return [i.name for i in session.get_inputs()]


def _check_inputs(backbone: Any) -> list[Any]:
    """A short and a long input (padding inside one batch), and a one-word one."""
    if backbone.modality == "text":
        words = ("transfer learning ranks candidate backbones by their frozen features " * 8)
        return ["a short sample", words.strip(), "ok"]
    if backbone.modality == "audio":
        from ..backbones.audio import check_clips

        return check_clips()
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for h, w in ((37, 91), (250, 333), (64, 64))]


def _parity(backbone: Any, session: Any) -> float:
    """Max |ORT - PyTorch fp32| over the check inputs, run as one padded batch."""
    batch = dict(backbone.collate(backbone.prepare(_check_inputs(backbone))))
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            ref = backbone(**{k: v.to(device) for k, v in batch.items()}).float().cpu().numpy()
    finally:
        backbone.train(was_training)
    ours = run_session(session, _input_names(session), batch)
    if ours.shape != ref.shape:
        return float("inf")
    return float(np.abs(ours - ref).max())


def run_session(session: Any, names: list[str], batch: dict[str, torch.Tensor]) -> np.ndarray:
    feeds = {n: batch[n].detach().cpu().numpy() for n in names}
    return session.run(None, feeds)[0]
