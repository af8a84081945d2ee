"""Metrics, plots and reports."""

from __future__ import annotations

from .metrics import compute_metrics

__all__ = ["compute_metrics"]
