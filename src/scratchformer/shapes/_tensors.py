"""Tensors and masks: the checks every chapter uses."""

from __future__ import annotations

import torch

__all__ = ["fmt", "require_tensor", "require_last_dims_match", "require_mask", "require_head_mask"]


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


def _require_bool_mask(mask) -> None:
    """A boolean tensor, True = may attend; the error says how to get one from what was given."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a boolean torch.Tensor (True = may attend), got {type(mask).__name__}.")
    if mask.dtype != torch.bool:
        raise ValueError(
            f"mask must have dtype torch.bool with True = may attend, got {mask.dtype}. Build it with "
            "a comparison such as `positions < lengths[:, None]`; for a 0/1 mask use mask.bool(); a "
            "mask in nn.MultiheadAttention's convention (True = may NOT attend) must be inverted, "
            "~mask. Additive float masks are not accepted."
        )


def require_mask(mask, scores_shape: torch.Size) -> None:
    """Check a boolean mask that must broadcast to ``scores_shape = (..., T, S)``.

    The convention everywhere in scratchformer: **True means "may attend"**.
    """
    _require_bool_mask(mask)
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


def require_head_mask(mask, B: int, H: int, T: int, S: int) -> None:
    """Check a multi-head attention mask: boolean (True = may attend) of shape (T, S), (B, T, S)
    or (B, H, T, S), where any axis but the last (S) may be 1 (so (B, 1, S) is a key-padding mask)."""
    _require_bool_mask(mask)
    accepted = "(T, S) for every sequence and head, (B, T, S) or (B, 1, S) per sequence, (B, H, T, S) per head"
    expected = {2: (T, S), 3: (B, T, S), 4: (B, H, T, S)}.get(mask.dim())
    if expected is None or mask.size(-1) != S or any(m not in (1, e) for m, e in zip(mask.shape, expected)):
        hint = ""
        if mask.dim() == 2 and tuple(mask.shape) == (B, S):
            hint = " A 2-D mask is read as (T, S); for a (B, S) key-padding mask use mask[:, None, :], (B, 1, S)."
        raise ValueError(
            f"mask of shape {fmt(mask)} does not fit B={B}, H={H}, T={T} (queries), S={S} (keys). "
            f"Accepted: {accepted}; any axis but the last (S) may be 1.{hint}"
        )

