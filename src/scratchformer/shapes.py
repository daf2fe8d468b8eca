"""Input validation shared by the public functions: clear errors that name the shapes."""

# Hand-written (no notebook exports here). Every check raises before the input reaches torch,
# so a user sees *which* argument is wrong and what shape was expected, instead of a matmul
# error from deep inside torch. (Module docstrings stay at most 3 lines: longer ones make
# nbdev-export rewrite the package docstring in __init__.py.)

from __future__ import annotations

import torch

__all__ = ["fmt", "require_tensor", "require_last_dims_match", "require_mask"]


def fmt(x: torch.Tensor) -> str:
    """``(2, 3, 4)``-style text for a tensor's shape."""
    return str(tuple(x.shape))


def require_tensor(name: str, x, min_dim: int = 2, floating: bool = True) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor with at least ``min_dim`` axes."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} axes (..., length, features), got shape {fmt(x)}. "
            "Add a batch axis with x.unsqueeze(0) if you have a single sequence."
        )
    if floating and not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}. Convert it with x.float()."
        )


def require_last_dims_match(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
    """Check ``q (..., T, d_k)``, ``k (..., S, d_k)`` and, if given, ``v (..., S, d_v)``."""
    require_tensor("q", q)
    require_tensor("k", k)
    if q.size(-1) != k.size(-1):
        raise ValueError(
            f"q and k must have the same feature size d_k (last axis): q has shape {fmt(q)}, "
            f"k has shape {fmt(k)}. Project them to a common size first."
        )
    if v is not None:
        require_tensor("v", v)
        if v.size(-2) != k.size(-2):
            raise ValueError(
                f"k and v must have the same length S (second-to-last axis): k has shape {fmt(k)}, "
                f"v has shape {fmt(v)}. Every key needs exactly one value."
            )
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], *([] if v is None else [v.shape[:-2]]))
    except RuntimeError:
        shapes = f"q {fmt(q)}, k {fmt(k)}" + ("" if v is None else f", v {fmt(v)}")
        raise ValueError(
            f"the leading (batch/head) axes of {shapes} do not broadcast. Use the same batch size "
            "for all of them."
        ) from None


def require_mask(mask, scores_shape: torch.Size) -> None:
    """Check a boolean mask that must broadcast to ``scores_shape = (..., T, S)``.

    The convention everywhere in scratchformer: **True means "may attend"**.
    """
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a boolean torch.Tensor, got {type(mask).__name__}.")
    if mask.dtype != torch.bool:
        raise ValueError(
            f"mask must have dtype torch.bool (True = may attend), got {mask.dtype}. "
            "Build it with a comparison such as `positions < lengths[:, None]`; for 0/1 tensors use "
            "mask.bool()."
        )
    try:
        broadcast = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(scores_shape):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
            f"{tuple(scores_shape)} = (..., T, S). A key-padding mask is (B, 1, S); a causal mask is "
            "(T, S); a full mask is (B, T, S)."
        )
