"""transferkit: adapt a pretrained model to your labelled task, and measure what it saved."""

from __future__ import annotations

from ._version import __version__, git_commit

# Imported on first use (PEP 562): `import transferkit` stays cheap, and torch-free paths
# (the ONNX engine, the server with --engine onnx) never pull torch in through this module.
_LAZY = {"Classifier": "classifier", "fit_run": "workflows", "study": "workflows",
         "pretrain": "workflows", "rank": "workflows", "load_data": "data"}

__all__ = ["Classifier", "__version__", "fit_run", "git_commit", "load_data", "pretrain", "rank",
           "study"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
