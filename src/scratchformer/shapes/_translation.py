"""Validation for chapter 16: real data, subword vocabularies, checkpoints."""

from __future__ import annotations

__all__: list[str] = []
