"""Chapter 14: the arguments of ``scratchformer.metrics``."""

from __future__ import annotations

__all__: list[str] = []
