"""What every engine offers, shared by the torch and ONNX engines (torch-free)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..artifact.schema import ArtifactConfig, labels_from_proba


class Engine(Protocol):
    """What every engine offers (the server and ``predict`` need nothing else)."""

    config: ArtifactConfig
    classes: list[str]
    modality: str
    multilabel: bool
    name: str

    def predict_proba(self, inputs: list[Any]) -> np.ndarray: ...

    def labels_from_proba(self, proba: np.ndarray) -> list[str]: ...


class _Base:
    name = ""

    def __init__(self, config: ArtifactConfig) -> None:
        self.config = config
        self.classes = list(config.labels)
        self.modality = config.modality
        self.multilabel = config.multilabel

    def labels_from_proba(self, proba: np.ndarray) -> list[str]:
        return labels_from_proba(self.config, proba)

    def predict(self, inputs: list[Any]) -> list[str]:
        return self.labels_from_proba(self.predict_proba(inputs))

    def predict_proba(self, inputs: list[Any]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError
