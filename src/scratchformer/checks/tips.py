"""Checkers for chapter 15 (``scratchformer.tips``)."""

from __future__ import annotations

__all__: list[str] = []
