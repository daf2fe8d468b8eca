"""Chapter 13: the arguments of ``scratchformer.decoding``."""

from __future__ import annotations

import numbers

import torch

from scratchformer.shapes._tensors import fmt
from scratchformer.shapes._training import require_token_batch

__all__ = [
    "require_decoding_arguments",
    "require_step_tokens",
    "require_length_penalty",
]


# --- chapter 13 ---
# Decoding (scratchformer.decoding): one call per decoding function, made once per call, never
# once per step, so that the cached step stays cheap.


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive(name: str, value) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")


def require_decoding_arguments(src, max_len, src_mask=None, *, beam_size=None, temperature=None,
                               top_k=None, top_p=None, alpha=None) -> None:
    """Raise ``ValueError`` naming the argument: ``src`` a (B, S) tensor of token ids,
    ``max_len`` >= 1, ``src_mask`` None or bool (B, 1, S), ``beam_size`` >= 1, ``temperature``
    > 0, ``top_k`` None or >= 1, ``top_p`` None or in (0, 1], ``alpha`` a real >= 0."""
    require_token_batch("src", src)
    _positive("max_len", max_len)
    if src_mask is not None:
        B, S = src.shape
        if not isinstance(src_mask, torch.Tensor) or src_mask.dtype != torch.bool:
            raise ValueError("src_mask must be a bool tensor (B, 1, S), True at the real source "
                             f"tokens, got {type(src_mask).__name__}"
                             f"{' of dtype ' + str(src_mask.dtype) if isinstance(src_mask, torch.Tensor) else ''}.")
        if tuple(src_mask.shape) != (B, 1, S):
            raise ValueError(f"src_mask must have shape (B, 1, S) = {(B, 1, S)} for src of shape "
                             f"{fmt(src)}, got {fmt(src_mask)}.")
    if beam_size is not None:
        _positive("beam_size", beam_size)
    if temperature is not None and (not _is_real(temperature) or not temperature > 0):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r} (for greedy "
                         "decoding use greedy_decode).")
    if top_k is not None:
        _positive("top_k", top_k)
    if top_p is not None and (not _is_real(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}.")
    if alpha is not None and (not _is_real(alpha) or not alpha >= 0):
        raise ValueError(f"length_penalty (alpha) must be a number >= 0, got {alpha!r}.")


def require_step_tokens(tokens, cache, vocab_size: int) -> None:
    """``tokens``: (B,) integer ids in [0, vocab_size) for a cache of batch size B."""
    B = cache.keep.shape[0]
    if (not isinstance(tokens, torch.Tensor) or tokens.shape != (B,) or tokens.is_floating_point()
            or tokens.dtype == torch.bool):
        raise ValueError(f"tokens must be (B,) = ({B},) integer ids, one per row of the cache, got "
                         f"{fmt(tokens) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}.")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"tokens must be ids in [0, {vocab_size}), got values from "
                         f"{int(tokens.min())} to {int(tokens.max())}.")


def require_length_penalty(length, alpha) -> None:
    """``length``: an int >= 1 or an integer/float tensor of lengths >= 1; ``alpha`` >= 0."""
    if isinstance(length, torch.Tensor):
        if length.dtype == torch.bool or length.is_complex():
            raise ValueError(f"length must hold numbers of tokens, got dtype {length.dtype}.")
        if length.numel() and bool((length < 1).any()):
            raise ValueError("length must be >= 1 (the generated tokens, </s> included).")
    elif not _is_int(length) or length < 1:
        raise ValueError(f"length must be an int >= 1 or a tensor of them, got {length!r}.")
    if not _is_real(alpha) or not alpha >= 0:
        raise ValueError(f"alpha must be a number >= 0, got {alpha!r}.")
