"""Checkers for chapter 16 (``scratchformer.translation``)."""

from __future__ import annotations

__all__: list[str] = []
