"""Chapter 15: the arguments of ``scratchformer.tips``."""

from __future__ import annotations

import numbers

import torch

from scratchformer.shapes._tensors import fmt

__all__ = [
    "require_decay_arguments",
    "require_gold_prob",
    "require_pointer_inputs",
    "require_guided_arguments",
]


# --- chapter 15 ---
# Training tips (scratchformer.tips): the scheduled-sampling decay and probability, the
# pointer-generator's final distribution, the guided-attention weights. One call each.


def require_decay_arguments(step, k) -> None:
    """``step`` a non-negative number (or tensor of them), ``k >= 1``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or not k >= 1:
        raise ValueError(f"k must be a number >= 1 (the decay's speed), got {k!r}.")
    if isinstance(step, torch.Tensor):
        if step.is_complex() or step.dtype == torch.bool or bool((step < 0).any()):
            raise ValueError("step must hold non-negative training steps.")
    elif isinstance(step, bool) or not isinstance(step, numbers.Real) or step < 0:
        raise ValueError(f"step must be a non-negative number, got {step!r}.")


def require_gold_prob(gold_prob) -> None:
    """A probability in [0, 1]."""
    if isinstance(gold_prob, bool) or not isinstance(gold_prob, numbers.Real) or not (
            0.0 <= gold_prob <= 1.0):
        raise ValueError(f"gold_prob must be a probability in [0, 1], got {gold_prob!r}.")


def require_pointer_inputs(vocab_logits, copy_scores, p_gen, src) -> None:
    """vocab_logits (B, T, V), copy_scores (B, T, S), p_gen (B, T, 1) floats; src (B, S) ids."""
    for name, x in (("vocab_logits", vocab_logits), ("copy_scores", copy_scores),
                    ("p_gen", p_gen)):
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point():
            got = fmt(x) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a 3-D floating-point tensor, got {got}.")
    if not isinstance(src, torch.Tensor) or src.dim() != 2 or src.is_floating_point() \
            or src.dtype == torch.bool:
        got = fmt(src) if isinstance(src, torch.Tensor) else type(src).__name__
        raise ValueError(f"src must be a (B, S) tensor of integer ids, got {got}.")
    B, T, _ = vocab_logits.shape
    S = src.shape[1]
    if copy_scores.shape != (B, T, S) or p_gen.shape != (B, T, 1) or src.shape[0] != B:
        raise ValueError(f"expected vocab_logits (B, T, V), copy_scores (B, T, S), p_gen "
                         f"(B, T, 1), src (B, S); got {fmt(vocab_logits)}, "
                         f"{fmt(copy_scores)}, {fmt(p_gen)}, {fmt(src)}.")
    if src.numel() and int(src.min()) < 0:
        raise ValueError("src holds a negative id.")


def require_guided_arguments(src_lengths, tgt_lengths, S, T, g) -> None:
    """(B,) positive lengths at most S and T; S, T positive ints; g > 0."""
    for name, n in (("S", S), ("T", T)):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}.")
    if isinstance(g, bool) or not isinstance(g, numbers.Real) or not g > 0:
        raise ValueError(f"g must be a positive number, got {g!r}.")
    for name, lengths, most in (("src_lengths", src_lengths, S),
                                ("tgt_lengths", tgt_lengths, T)):
        x = torch.as_tensor(lengths)
        if x.dim() != 1 or x.is_floating_point() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be a (B,) sequence of integer lengths, got "
                             f"{fmt(x)} {x.dtype}.")
        if x.numel() and (int(x.min()) < 1 or int(x.max()) > most):
            raise ValueError(f"{name} must lie in 1..{most}, got {x.tolist()}.")
    if len(torch.as_tensor(src_lengths)) != len(torch.as_tensor(tgt_lengths)):
        raise ValueError("src_lengths and tgt_lengths must have the same length B.")
