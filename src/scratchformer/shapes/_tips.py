"""Chapter 15: the arguments of ``scratchformer.tips``."""

from __future__ import annotations

__all__: list[str] = []
