"""Checkers for chapter 05 (``scratchformer.baselines``)."""

from __future__ import annotations

__all__: list[str] = []
