"""Checkers for chapter 04 (``scratchformer.positional``)."""

from __future__ import annotations

__all__: list[str] = []
