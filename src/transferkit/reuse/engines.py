"""One way to run a saved model: ``load_engine(run_dir, engine=...)``.

``predict``, ``predict_file`` and the HTTP server all go through the object this returns, so
the torch and ONNX Runtime paths answer the same question (``predict_proba``) the same way.
The ONNX engine never imports torch: a server with ``--engine onnx`` runs on onnxruntime,
tokenizers, numpy and pillow alone. This module therefore imports nothing heavy at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.schema import read_config
from ..config import PRECISIONS
from ..errors import ConfigError
from .engine_base import Engine, _Base

ENGINES = ("torch", "onnx")


class TorchEngine(_Base):
    """The PyTorch model as ``Classifier.load`` rebuilds it (any device, bf16 autocast)."""

    name = "torch"

    def __init__(self, run_dir: Path, *, precision: str = "auto", batch_size: int = 32,
                 device: str | None = "auto") -> None:
        from ..classifier import Classifier

        super().__init__(read_config(run_dir))
        self.classifier = Classifier.load(run_dir, batch_size=batch_size, precision=precision,
                                          device=device)

    def predict_proba(self, inputs: list[Any]) -> np.ndarray:
        if not len(inputs):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if self.modality == "image":  # PIL images as RGB arrays: the same pixels, hashable
            from PIL import Image

            inputs = [np.asarray(x.convert("RGB")) if isinstance(x, Image.Image) else x
                      for x in inputs]
        return np.asarray(self.classifier.predict_proba(list(inputs)), dtype=np.float32)


def load_engine(run_dir: str | Path, engine: str = "torch", *, int8: bool = False,
                precision: str = "auto", batch_size: int = 32,
                device: str | None = "auto") -> Engine:
    """The saved model in ``run_dir`` behind the chosen runtime.

    ``engine="onnx"`` needs ``transferkit export RUN --onnx`` (``--int8`` for ``int8=True``)
    first; it runs fp32 (or int8) on ONNX Runtime's CPU provider and does not import torch.
    """
    run_dir = Path(run_dir)
    if engine not in ENGINES:
        raise ConfigError(f"Unknown engine '{engine}'. Choose one of: {', '.join(ENGINES)}.")
    if precision not in PRECISIONS:
        raise ConfigError(
            f"Unknown precision '{precision}'. Choose one of: {', '.join(PRECISIONS)}.")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}.")
    if engine == "torch":
        if int8:
            raise ConfigError(
                "--int8 runs the int8 ONNX export: pass --engine onnx as well (and export it "
                "first with `transferkit export RUN --onnx --int8`).")
        return TorchEngine(run_dir, precision=precision, batch_size=batch_size, device=device)
    if precision not in ("auto", "fp32"):
        raise ConfigError(
            f"--precision {precision} is a torch option; the ONNX engine runs fp32, or int8 "
            "with --int8. Drop --precision or use --engine torch.")
    from .onnx_runtime import OnnxEngine

    return OnnxEngine(run_dir, int8=int8, batch_size=batch_size)
