"""Checkers for chapter 13 (``scratchformer.decoding``)."""

from __future__ import annotations

__all__: list[str] = []
