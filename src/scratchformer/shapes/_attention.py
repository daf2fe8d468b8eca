"""Chapters 01-03: scores, masked attention, heads."""

from __future__ import annotations

import torch

from scratchformer.shapes._tensors import (
    fmt,
    require_head_mask,
    require_mask,
    require_tensor,
)

__all__ = [
    "require_last_sizes",
    "require_pool_inputs",
    "require_lengths",
    "require_scores",
    "require_split_heads",
    "require_merge_heads",
    "require_mha_config",
    "require_mha_inputs",
]


# --- chapter 01 ---


def require_last_sizes(owner: str, **inputs: tuple[torch.Tensor, int]) -> None:
    """Check each ``name=(x, size)``: ``x`` a floating tensor ``(..., T, size)``.

    ``owner`` names the caller in the message, e.g.
    ``require_last_sizes("AdditiveScore", q=(q, 6), k=(k, 4))``.
    """
    for name, (x, size) in inputs.items():
        require_tensor(name, x)
        if x.size(-1) != size:
            raise ValueError(
                f"{owner} expects {name} of shape (..., T, {size}), got {name} of shape "
                f"{fmt(x)}: its last axis must be the feature size {size}."
            )


def require_pool_inputs(scores, values) -> None:
    """Check ``scores (..., T, S)`` and ``values (..., S, d_v)`` with the same ``S``."""
    require_tensor("scores", scores)
    require_tensor("values", values)
    if scores.size(-1) != values.size(-2):
        raise ValueError(
            f"attention_pool expects scores (..., T, S) and values (..., S, d_v) with the same "
            f"S; got scores {fmt(scores)} and values {fmt(values)}."
        )

# --- chapter 02 ---


def require_lengths(lengths, max_len) -> None:
    """Check ``lengths``: a 1-D integer tensor ``(B,)`` with values in ``[0, max_len]``."""
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        raise ValueError(f"lengths must be a 1-D tensor of sequence lengths (B,), got {lengths!r}.")
    if lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must hold integers, got dtype {lengths.dtype}.")
    if len(lengths) and (lengths.min() < 0 or lengths.max() > max_len):
        raise ValueError(f"lengths must lie in [0, max_len={max_len}], got {lengths.tolist()}.")


def require_scores(scores, mask=None) -> None:
    """Check ``scores (..., S)`` (floating, at least one axis) and, if given, a boolean ``mask``
    (True = may attend) that broadcasts to the scores' shape."""
    require_tensor("scores", scores, min_dim=1)
    if mask is not None:
        require_mask(mask, scores.shape)

# --- chapter 03 ---
# Validation for scratchformer.multihead: split/merge heads and MultiHeadAttention.



def _is_int(value) -> bool:
    """An integer (Python or NumPy), not a bool."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require_split_heads(x, n_heads) -> None:
    """Check ``x (..., T, D)`` and ``n_heads``: a positive integer that divides ``D``."""
    require_tensor("x", x, min_dim=2, floating=False)
    if not _is_int(n_heads) or n_heads < 1 or x.size(-1) % n_heads:
        raise ValueError(
            f"split_heads: n_heads={n_heads!r} must be a positive integer that divides "
            f"D = {x.size(-1)} (x has shape {fmt(x)}); each head gets D / n_heads features."
        )


def require_merge_heads(x) -> None:
    """Check ``x (..., H, T, Dh)``: at least three axes, heads before time."""
    require_tensor("x", x, min_dim=1, floating=False)
    if x.dim() < 3:
        raise ValueError(f"merge_heads expects x of shape (..., H, T, Dh), as split_heads "
                         f"returns it, got shape {fmt(x)}.")


def require_mha_config(d_model, n_heads, dropout=0.0) -> None:
    """The arguments of ``MultiHeadAttention``: positive integers, ``d_model`` divisible by
    ``n_heads``, a dropout probability in [0, 1)."""
    if not (_is_int(d_model) and _is_int(n_heads)) or d_model < 1 or n_heads < 1:
        raise ValueError(f"d_model and n_heads must be positive integers, got "
                         f"d_model={d_model!r}, n_heads={n_heads!r}.")
    if d_model % n_heads:
        divisors = [h for h in range(1, int(d_model) + 1) if d_model % h == 0]
        raise ValueError(
            f"d_model={d_model} is not divisible by n_heads={n_heads}: every head gets "
            f"d_model / n_heads features. Choose n_heads among the divisors of {d_model}: "
            f"{divisors}."
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")


def require_mha_inputs(module, query, key, value, mask) -> None:
    """Check the inputs of ``module``, a ``MultiHeadAttention`` (it has ``d_model`` and
    ``n_heads``): ``query (B, T, D)``, ``key`` and ``value (B, S, D)``, and ``mask`` None or a
    head mask that fits (B, H, T, S) (see :func:`require_head_mask`). Errors name the shapes."""
    d_model, n_heads = module.d_model, module.n_heads
    this = f"{type(module).__name__}(d_model={d_model}, n_heads={n_heads})"
    for name, x, length in (("query", query, "T"), ("key", key, "S"), ("value", value, "S")):
        require_tensor(name, x, min_dim=3)
        if x.dim() != 3 or x.size(-1) != d_model:
            raise ValueError(f"{this}: {name} has shape {fmt(x)}; expected "
                             f"(B, {length}, {d_model}).")
    if key.shape[:2] != value.shape[:2] or query.size(0) != key.size(0):
        raise ValueError(
            f"{this}: query {fmt(query)}, key {fmt(key)} and value {fmt(value)} must be "
            "(B, T, D), (B, S, D), (B, S, D): the same batch size B, and one value for every key."
        )
    if mask is not None:
        require_head_mask(mask, query.size(0), n_heads, query.size(1), key.size(1))
