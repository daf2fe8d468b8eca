"""Chapters 04-05: positions, convolutions and recurrences."""

from __future__ import annotations

import torch

from scratchformer.shapes._tensors import (
    fmt,
    require_tensor,
)

__all__ = [
    "require_sizes",
    "require_even_head_dim",
    "require_sequence",
    "require_rotary_input",
    "require_same_length",
    "per_layer",
    "conv_stack",
    "require_rnn_config",
    "padded_batch",
]


# --- chapter 04 ---


def require_sizes(at_least: int = 1, **sizes) -> None:
    """Raise ``ValueError`` unless every keyword argument is an int >= ``at_least``."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
            raise ValueError(f"{name} must be an int >= {at_least}, got {value!r}.")


def require_even_head_dim(head_dim) -> None:
    """Rotary embeddings rotate pairs of coordinates: ``head_dim`` must be an even int >= 2."""
    require_sizes(at_least=2, head_dim=head_dim)
    if head_dim % 2:
        raise ValueError(f"rotary embeddings rotate pairs of coordinates, so the head size must be "
                         f"even; got head_dim={head_dim}.")


def require_sequence(module, x) -> None:
    """Check ``x (..., T, module.d_model)`` for a positional module; if the module has a
    ``max_len`` (a learned table), also ``T <= max_len``."""
    d_model, max_len = module.d_model, getattr(module, "max_len", None)
    owner = type(module).__name__ + (f"(max_len={max_len}, " if max_len else "(")
    owner += f"d_model={d_model})"
    require_tensor("x", x, min_dim=2)
    if x.size(-1) != d_model:
        raise ValueError(f"{owner} got x of shape {fmt(x)}; expected (B, T, {d_model}).")
    T = x.size(-2)
    if max_len is not None and T > max_len:
        raise ValueError(
            f"{owner} got a sequence of length T={T} (x of shape {fmt(x)}): a learned table has "
            f"no row for positions >= {max_len}. Truncate the input to {max_len} tokens, or build "
            f"the module with max_len >= {T} and train it on sequences that long."
        )


def require_rotary_input(x, positions, head_dim: int | None = None) -> None:
    """Check ``x (..., T, Dh)`` with an even ``Dh`` and ``positions``, a tensor that broadcasts
    to ``x.shape[:-1]`` (usually ``(T,)``). With ``head_dim`` (``RotaryEmbedding``), ``Dh`` must
    equal it and ``positions`` may also be None or an int offset."""
    require_tensor("x", x, min_dim=2)
    if head_dim is not None and x.size(-1) != head_dim:
        raise ValueError(f"RotaryEmbedding(head_dim={head_dim}) got a tensor of shape {fmt(x)}; "
                         f"expected (..., T, {head_dim}).")
    if x.size(-1) % 2:
        raise ValueError(f"rotary embeddings rotate pairs of coordinates, so the head size must be "
                         f"even; x has shape {fmt(x)} (head size {x.size(-1)}).")
    if positions is None or (isinstance(positions, int) and not isinstance(positions, bool)):
        if head_dim is not None:                           # RotaryEmbedding: 0.. or offset..
            return
    if not isinstance(positions, torch.Tensor):
        raise ValueError(f"positions must be a tensor of shape (T,), got {type(positions).__name__}; "
                         "for 0 .. T-1 use torch.arange(x.size(-2)).")
    try:
        fits = torch.broadcast_shapes(positions.shape, x.shape[:-1]) == x.shape[:-1]
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"positions of shape {fmt(positions)} do not broadcast to x's (..., T) = "
                         f"{tuple(x.shape[:-1])} (x has shape {fmt(x)}); pass one position per "
                         "token, (T,).")


def require_same_length(q, k) -> None:
    """Queries and keys rotated with one set of positions must have the same length T."""
    require_tensor("q", q, min_dim=2)
    require_tensor("k", k, min_dim=2)
    if q.size(-2) != k.size(-2):
        raise ValueError(f"q of shape {fmt(q)} and k of shape {fmt(k)} have different lengths; "
                         "they share one set of positions here. Rotate each with its own "
                         "positions: rotary.rotate(q, q_positions), rotary.rotate(k, k_positions).")

# --- chapter 05 ---


def per_layer(kernel_sizes, dilations) -> tuple[list[int], list[int]]:
    """Two lists of equal length, one entry per layer, from ints or sequences of positive ints.
    An int is repeated for every layer (two ints describe a single layer)."""
    from collections.abc import Sequence

    def as_list(name, value):
        values = ([value] if isinstance(value, int)
                  else list(value) if isinstance(value, Sequence) else None)
        if values is None or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                     for v in values):
            raise ValueError(f"{name} must be a positive int or a sequence of positive ints, one "
                             f"per layer; got {value!r}.")
        return values

    ks, ds = as_list("kernel_sizes", kernel_sizes), as_list("dilations", dilations)
    if isinstance(kernel_sizes, int) and not isinstance(dilations, int):
        ks = ks * len(ds)
    elif isinstance(dilations, int) and not isinstance(kernel_sizes, int):
        ds = ds * len(ks)
    if len(ks) != len(ds):
        raise ValueError(f"kernel_sizes {list(ks)} and dilations {list(ds)} must have one entry "
                         f"per layer; got {len(ks)} and {len(ds)}.")
    return ks, ds


def conv_stack(kernel_size, n_layers, dilation) -> list[int]:
    """Check a ConvEncoder configuration; return the dilation of each layer."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int (symmetric zero padding), got "
                         f"{kernel_size!r}.")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive int, got {n_layers!r}.")
    return per_layer([kernel_size] * n_layers, dilation)[1]


def require_rnn_config(d_model: int, cell: str, bidirectional: bool, cells) -> None:
    """Check an RNNEncoder configuration: a known cell, an even d_model if bidirectional."""
    if cell not in cells:
        raise ValueError(f"cell must be one of {sorted(cells)}, got {cell!r}.")
    if bidirectional and d_model % 2:
        raise ValueError(f"a bidirectional RNNEncoder gives each direction d_model // 2 units, so "
                         f"d_model must be even; got d_model={d_model}.")


def padded_batch(module, x, mask, right_padded: bool = False):
    """Check ``x (B, T, module.d_model)`` and an optional padding mask, boolean ``(B, T)`` or
    ``(B, 1, T)``, True at the real tokens. Return the mask as ``(B, T)`` (or None). With
    ``right_padded``, the real tokens must come first in every row (``padding_mask``)."""
    d_model = module.d_model
    owner = f"{type(module).__name__}(d_model={d_model})"
    require_tensor("x", x, min_dim=3)
    if x.dim() != 3 or x.size(-1) != d_model:
        raise ValueError(f"{owner} expects x of shape (B, T, {d_model}), got {fmt(x)}.")
    if mask is None:
        return None
    B, T = x.shape[0], x.shape[1]
    name = type(module).__name__
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name}: mask must be a boolean tensor (B, T) or (B, 1, T), True at the "
                         f"real tokens; got {got}. Build it with padding_mask(lengths, T).")
    if mask.dim() == 3 and mask.size(1) == 1:
        mask = mask[:, 0]                                                  # (B, 1, T) -> (B, T)
    if tuple(mask.shape) != (B, T):
        raise ValueError(f"{name}: mask of shape {tuple(mask.shape)} does not fit x of shape "
                         f"{fmt(x)}; expected (B, T) = ({B}, {T}) or (B, 1, T), True at the real "
                         "tokens.")
    if right_padded:
        lengths = mask.sum(dim=-1, keepdim=True)                           # (B, 1)
        if not torch.equal(mask, torch.arange(T, device=mask.device) < lengths):
            raise ValueError(f"{name}: mask must be a right-padding mask (True at the first "
                             "lengths[b] positions of row b, False after them); build it with "
                             "padding_mask(lengths, T).")
    return mask
