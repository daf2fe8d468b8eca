"""Checkers for chapter 14 (``scratchformer.metrics``)."""

from __future__ import annotations

__all__: list[str] = []
