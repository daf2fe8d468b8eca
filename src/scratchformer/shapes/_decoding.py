"""Chapter 13: the arguments of ``scratchformer.decoding``."""

from __future__ import annotations

__all__: list[str] = []
