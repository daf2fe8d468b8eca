"""Checkers for chapter 03 (``scratchformer.multihead``)."""

from __future__ import annotations

__all__: list[str] = []
