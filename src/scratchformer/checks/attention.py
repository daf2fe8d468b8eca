"""Checkers for chapter 02 (``scratchformer.attention``): padding masks, masked softmax, attention."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from scratchformer.checks._common import (
    NAN_FROM_EMPTY_ROW,
    ExerciseNotAttempted,
    ExerciseWrong,
    _call,
    _close,
    _diagnose,
    _generator,
    _passed,
    _randn,
    _random_keep_mask,
    _require_empty_row_is_zero,
    _require_finite,
    _require_tensor,
)

__all__ = ["padding_mask", "masked_softmax", "scaled_dot_product_attention"]



def padding_mask(fn: Callable) -> None:
    """Check ``fn(lengths, max_len) -> mask`` of shape ``(B, max_len)``, True at real tokens."""
    __tracebackhide__ = True
    name = "padding_mask"
    lengths = torch.tensor([3, 0, 5, 1])
    max_len = 5
    expected = torch.arange(max_len)[None, :] < lengths[:, None]
    actual = _call(name, fn, lengths, max_len)
    _require_tensor(name, "the mask", actual, expected.shape)
    if actual.dtype != torch.bool:
        raise ExerciseWrong(
            f"{name}: the mask has dtype {actual.dtype}; it must be torch.bool. An integer or float "
            "mask is read as an additive bias by torch, not as keep/drop. Compare with `<` to get booleans."
        )
    if torch.equal(actual, ~expected):
        raise ExerciseWrong(
            f"{name}: the mask is inverted. Likely bug: mask polarity flipped. In this book True "
            "means 'may attend', so real tokens are True and padding is False."
        )
    if torch.equal(actual, torch.arange(max_len)[None, :] <= lengths[:, None]):
        raise ExerciseWrong(
            f"{name}: one position too many is True. Likely bug: off by one, `<=` instead of `<`. "
            "A sequence of length L occupies positions 0 .. L-1."
        )
    if not torch.equal(actual, expected):
        raise ExerciseWrong(
            f"{name}: for lengths {lengths.tolist()} and max_len {max_len} expected\n{expected.int()}\ngot\n{actual.int()}"
        )
    _passed(name, "True exactly at the real tokens, for lengths 0, 1, 3 and max_len.")


def masked_softmax(fn: Callable) -> None:
    """Check ``fn(scores, mask) -> weights``: zeros where masked, rows of zeros if fully masked."""
    __tracebackhide__ = True
    name = "masked_softmax"
    g = _generator()
    B, T, S = 2, 4, 6
    scores = 3 * _randn(g, B, T, S)
    mask = _random_keep_mask(g, B, T, S)
    from scratchformer.attention import masked_softmax as reference

    expected = reference(scores, mask)
    actual = _call(name, fn, scores, mask)
    _require_tensor(name, "the weights", actual, (B, T, S))
    _require_finite(name, "the weights", actual)
    masked_weight = actual.masked_select(~mask)
    if masked_weight.abs().max() > 1e-6:
        if _close(actual, reference(scores, ~mask), atol=1e-6) or masked_weight.sum() > actual.masked_select(mask).sum():
            raise ExerciseWrong(
                f"{name}: keys the mask forbids get the weight. Likely bug: mask polarity flipped. "
                "In this book True means 'may attend': fill the scores where the mask is False, "
                "scores.masked_fill(~mask, ...)."
            )
        raise ExerciseWrong(
            f"{name}: masked keys still get weight up to {masked_weight.abs().max().item():.3g}. "
            "Likely bug: masking with a finite fill too small to matter (e.g. -10). Fill with "
            "torch.finfo(scores.dtype).min."
        )
    _diagnose(
        name, "the weights", actual, expected,
        {"softmax over the wrong axis. Normalise over the keys, dim=-1.":
            torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-2).masked_fill(~mask, 0)},
        "weights = softmax over the last axis of the scores with masked keys filled.", atol=1e-6,
    )
    # Fully masked rows: weights exactly zero, finite gradients.
    mask_empty = mask.clone()
    mask_empty[0, 1] = False
    scores_g = scores.clone().requires_grad_(True)
    actual = _call(name, fn, scores_g, mask_empty)
    _require_finite(name, "the weights of a row whose keys are all masked", actual.detach(), NAN_FROM_EMPTY_ROW)
    _require_empty_row_is_zero(name, actual[0, 1].detach(), None)
    if actual.requires_grad:
        actual.sum().backward()
        _require_finite(name, "the gradient with respect to the scores", scores_g.grad, NAN_FROM_EMPTY_ROW)
    # Low precision: -1e9 overflows float16; a finite fill like -1e4 is not negligible there.
    for dtype in (torch.float16, torch.bfloat16):
        low = scores.to(dtype)
        try:
            out = fn(low, mask)
        except NotImplementedError:
            raise ExerciseNotAttempted(f"{name}: not attempted yet.") from None
        except RuntimeError as error:
            raise ExerciseWrong(
                f"{name}: fails in {dtype}: {error}. Likely bug: a fill value such as -1e9 that "
                "does not fit in float16 (its largest magnitude is 65504). Use "
                "torch.finfo(scores.dtype).min, which fits every dtype."
            ) from error
        if not torch.isfinite(out).all() or out.masked_select(~mask).abs().max() > 0:
            raise ExerciseWrong(
                f"{name}: in {dtype} masked positions must get weight exactly 0 and no NaN. Use "
                "torch.finfo(scores.dtype).min as the fill value."
            )
    _passed(name, "masked keys get 0, fully masked rows give 0 with finite gradients, fp32/fp16/bf16.")


def scaled_dot_product_attention(fn: Callable) -> None:
    """Check ``fn(q, k, v, mask=None) -> (out, weights)`` against the reference and known bugs."""
    __tracebackhide__ = True
    name = "scaled_dot_product_attention"
    g = _generator()
    B, T, S, Dk, Dv = 2, 3, 5, 16, 4
    q, k, v = _randn(g, B, T, Dk), _randn(g, B, S, Dk), _randn(g, B, S, Dv)
    raw = q @ k.transpose(-2, -1)
    scale = 1 / math.sqrt(Dk)

    def unpack(result, mask_text=""):
        __tracebackhide__ = True
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ExerciseWrong(f"{name}: return a tuple (out, weights), got {type(result).__name__}.")
        out, weights = result
        if isinstance(weights, torch.Tensor) and tuple(weights.shape) == (B, S, T):
            raise ExerciseWrong(
                f"{name}: weights have shape (B, S, T) = {tuple(weights.shape)}. Likely bug: scores "
                "transposed, computed as k @ qᵀ. They are q @ kᵀ, shape (B, T, S)."
            )
        _require_tensor(name, f"weights{mask_text}", weights, (B, T, S))
        _require_tensor(name, f"out{mask_text}", out, (B, T, Dv))
        return out, weights

    # 1. no mask, T != S
    try:
        result = fn(q, k, v)
    except NotImplementedError:
        raise ExerciseNotAttempted(
            f"{name}: not attempted yet. Replace the `raise NotImplementedError` line in the cell "
            "marked `# YOUR CODE HERE` with your code, run that cell, then run this check again."
        ) from None
    except RuntimeError as error:
        # Shape errors are typical for the transposed-scores bug; confirm on square inputs.
        qs, ks = _randn(g, B, S, Dk), _randn(g, B, S, Dk)
        try:
            square = fn(qs, ks, v)
        except Exception:
            square = None
        if isinstance(square, tuple) and _close(
            square[1], torch.softmax(ks @ qs.transpose(-2, -1) * scale, dim=-1)
        ):
            raise ExerciseWrong(
                f"{name}: fails when T != S and matches softmax(k @ qᵀ) when T == S. Likely bug: "
                "scores transposed. Compute q @ k.transpose(-2, -1), shape (B, T, S)."
            ) from error
        raise ExerciseWrong(f"{name}: your code raised RuntimeError: {error}") from error
    out, weights = unpack(result)
    _require_finite(name, "the weights", weights)
    expected_w = torch.softmax(raw * scale, dim=-1)
    _diagnose(
        name, "weights (no mask)", weights, expected_w,
        {
            "softmax over the wrong axis. Each query's weights over the keys must sum to 1: "
            "softmax(..., dim=-1).": torch.softmax(raw * scale, dim=-2),
            "the 1/sqrt(d_k) scaling is missing. Without it the scores' spread grows like sqrt(d_k) "
            "and the softmax saturates.": torch.softmax(raw, dim=-1),
            "scaled by 1/d_k instead of 1/sqrt(d_k).": torch.softmax(raw / Dk, dim=-1),
            "multiplied by sqrt(d_k) instead of dividing.": torch.softmax(raw * math.sqrt(Dk), dim=-1),
            "scaled by 1/sqrt(d_v) (the value size) instead of 1/sqrt(d_k) (the query/key size).":
                torch.softmax(raw / math.sqrt(Dv), dim=-1),
        },
        "weights = softmax(q @ kᵀ / sqrt(d_k)) along the last axis.",
    )
    _diagnose(name, "out (no mask)", out, expected_w @ v, {}, "out = weights @ v.")

    # 2. transposed scores on square inputs (T == S) run without error: catch them here.
    qs, ks, vs = _randn(g, B, S, Dk), _randn(g, B, S, Dk), _randn(g, B, S, Dv)
    out_s, w_s = _call(name, fn, qs, ks, vs)
    expected_s = torch.softmax(qs @ ks.transpose(-2, -1) * scale, dim=-1)
    _diagnose(
        name, "weights (T == S)", w_s, expected_s,
        {"scores transposed, computed as k @ qᵀ. Row i must hold query i's scores, q @ kᵀ.":
            torch.softmax(ks @ qs.transpose(-2, -1) * scale, dim=-1)},
        "weights = softmax(q @ kᵀ / sqrt(d_k)).",
    )

    # 3. a boolean mask, True = may attend, at least one key per row
    mask = _random_keep_mask(g, B, T, S)
    from scratchformer.attention import scaled_dot_product_attention as reference

    ref_out, ref_w = reference(q, k, v, mask)
    out_m, w_m = unpack(_call(name, fn, q, k, v, mask=mask), " (with a mask)")
    _require_finite(
        name, "the weights with a mask", w_m,
        "Likely bug: NaN from masking. Fill masked scores before the softmax and make sure no row "
        "is all -inf.",
    )
    flipped_mask = ~mask
    flipped_mask[..., 0] = True  # keep rows non-empty so the flipped reference is finite
    masked_weight = w_m.masked_select(~mask)
    if masked_weight.numel() and masked_weight.abs().max() > 1e-6:
        allowed_weight = w_m.masked_select(mask)
        if _close(w_m, reference(q, k, v, flipped_mask)[1]) or allowed_weight.abs().max() < 1e-6 or \
                masked_weight.sum() > allowed_weight.sum():
            raise ExerciseWrong(
                f"{name}: keys the mask forbids get the weight. Likely bug: mask polarity flipped. "
                "True means 'may attend' (the F.scaled_dot_product_attention convention); fill the "
                "scores where the mask is False: scores.masked_fill(~mask, ...)."
            )
        raise ExerciseWrong(
            f"{name}: masked keys still get weight up to {masked_weight.abs().max().item():.3g}. "
            "Likely bug: masking with a finite fill too small to matter (e.g. -10 or -100 is not "
            "far enough below the other scores). Fill with float('-inf') or "
            "torch.finfo(scores.dtype).min."
        )
    _diagnose(name, "weights (with a mask)", w_m, ref_w, {}, "Mask the scores, then softmax over keys.")
    _diagnose(name, "out (with a mask)", out_m, ref_out, {}, "out = weights @ v.")

    # 4. a query with nothing to attend to: zeros, and finite gradients
    mask_empty = mask.clone()
    mask_empty[1, 0] = False
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    out_e, w_e = unpack(_call(name, fn, qg, kg, vg, mask=mask_empty), " (fully masked row)")
    _require_finite(name, "out for a query whose keys are all masked", out_e.detach(), NAN_FROM_EMPTY_ROW)
    _require_finite(name, "weights for a query whose keys are all masked", w_e.detach(), NAN_FROM_EMPTY_ROW)
    _require_empty_row_is_zero(name, w_e[1, 0].detach(), out_e[1, 0].detach())
    out_e.sum().backward()
    for label, t in (("q", qg), ("k", kg), ("v", vg)):
        if t.grad is not None:
            _require_finite(name, f"the gradient with respect to {label}", t.grad, NAN_FROM_EMPTY_ROW)
    _passed(
        name,
        "matches softmax(q kᵀ/√d_k) v without and with masks; fully masked rows give 0 and finite gradients.",
    )
