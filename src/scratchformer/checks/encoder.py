"""Checkers for chapter 06 (``scratchformer.encoder``): layer normalisation and the sublayer
connection (residual add, LayerNorm placement, dropout)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from scratchformer.checks._common import (
    ExerciseWrong,
    _call,
    _diagnose,
    _generator,
    _passed,
    _randn,
    _require_finite,
    _require_tensor,
)

__all__ = ["layer_norm", "residual"]


# --------------------------------------------------------------------------------------------
# Exercise 6.1: layer_norm(x, weight, bias, eps)
# --------------------------------------------------------------------------------------------

LN_OVER_BATCH = (
    "statistics over the batch axis (dim=0) instead of the features. That is batch normalisation: "
    "each token's output would depend on the other sequences of the batch. LayerNorm takes the "
    "mean and variance over the last axis of each vector: x.mean(dim=-1, keepdim=True)."
)
LN_OVER_SEQUENCE = (
    "statistics over the sequence axis (dim=-2 or dim=1) instead of the features: each token's "
    "output would depend on the other tokens and on the padding. Use dim=-1, the D features of "
    "one token, with keepdim=True."
)
LN_OVER_TWO_AXES = (
    "statistics over the last two axes (sequence and features) together. LayerNorm normalises each "
    "token on its own: mean and variance over dim=-1 only."
)
LN_UNBIASED = (
    "the unbiased variance (divided by D - 1). LayerNorm, like nn.LayerNorm, uses the biased "
    "variance, divided by D: x.var(dim=-1, unbiased=False, keepdim=True), or "
    "((x - mean) ** 2).mean(dim=-1, keepdim=True). torch.var and Tensor.var default to unbiased=True."
)
LN_EPS_OUTSIDE = (
    "eps outside the square root, (x - mean) / (sqrt(var) + eps). It belongs inside: "
    "(x - mean) / sqrt(var + eps). The two differ when the variance is small."
)
LN_NO_EPS = (
    "eps is missing: (x - mean) / sqrt(var) divides by zero for a constant vector (a padding "
    "token, say). Add it inside the square root: sqrt(var + eps)."
)
LN_STD_NOT_SQRT = (
    "divided by the variance instead of the standard deviation. The denominator is sqrt(var + eps)."
)
LN_NO_AFFINE = (
    "the learnable weight and bias are not applied. After normalising, scale and shift: "
    "normalised * weight + bias (weight is gamma, bias is beta, one number per feature)."
)
LN_NO_WEIGHT = "the learnable weight (gamma) is not applied: return normalised * weight + bias."
LN_NO_BIAS = "the learnable bias (beta) is not applied: return normalised * weight + bias."
LN_SWAPPED = "weight and bias swapped: it is normalised * weight + bias, not normalised * bias + weight."
LN_NO_KEEPDIM = (
    "Likely bug: the mean or the variance lost its last axis, so it does not broadcast against x. "
    "Keep it with keepdim=True: x.mean(dim=-1, keepdim=True) has shape (..., 1)."
)
LN_FIXED_AXIS = (
    "Likely bug: the code assumes a fixed number of axes (e.g. dim=2). LayerNorm acts on the last "
    "axis of an input of any shape (..., D): use dim=-1."
)


def _normalise(x: torch.Tensor, dims, *, unbiased: bool = False, eps: float = 1e-5,
               eps_inside: bool = True, power: float = 0.5) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=unbiased, keepdim=True)
    if not eps_inside:
        return (x - mean) / (var.sqrt() + eps)
    return (x - mean) / (var + eps) ** power


def _layer_norm_candidates(x, weight, bias, eps) -> dict[str, torch.Tensor]:
    affine = lambda n: n * weight + bias  # noqa: E731
    normalised = _normalise(x, -1, eps=eps)
    return {
        LN_OVER_BATCH: affine(_normalise(x, 0, eps=eps)),
        LN_OVER_SEQUENCE: affine(_normalise(x, -2, eps=eps)),
        LN_OVER_TWO_AXES: affine(_normalise(x, (-2, -1), eps=eps)),
        LN_UNBIASED: affine(_normalise(x, -1, unbiased=True, eps=eps)),
        LN_EPS_OUTSIDE: affine(_normalise(x, -1, eps=eps, eps_inside=False)),
        LN_NO_EPS: affine(_normalise(x, -1, eps=0.0)),
        LN_STD_NOT_SQRT: affine(_normalise(x, -1, eps=eps, power=1.0)),
        LN_NO_AFFINE: normalised,
        LN_NO_WEIGHT: normalised + bias,
        LN_NO_BIAS: normalised * weight,
        LN_SWAPPED: normalised * bias + weight,
    }


def _call_layer_norm(name: str, fn: Callable, *args):
    """Like ``_call``, with a targeted hint for a lost keepdim (a broadcasting error)."""
    __tracebackhide__ = True
    try:
        return _call(name, fn, *args)
    except ExerciseWrong as error:
        if "must match the size" in str(error) or "broadcast" in str(error):
            raise ExerciseWrong(f"{name}: your code raised {type(error.__cause__).__name__}: "
                                f"{error.__cause__}. {LN_NO_KEEPDIM}") from error
        raise


def layer_norm(fn: Callable) -> None:
    """Check ``fn(x (..., D), weight (D,), bias (D,), eps) -> (..., D)`` against ``F.layer_norm``."""
    __tracebackhide__ = True
    name = "layer_norm"
    g = _generator()
    B, T, D = 3, 5, 8
    weight, bias = 1 + 0.5 * _randn(g, D), _randn(g, D)
    # 1. ordinary inputs, eps = 1e-5: the axis, the variance, the weight and the bias
    x = 2 * _randn(g, B, T, D) + 0.5
    actual = _call_layer_norm(name, fn, x, weight, bias, 1e-5)
    _require_tensor(name, "the output", actual, (B, T, D))
    _require_finite(name, "the output", actual)
    _diagnose(name, "the output", actual, F.layer_norm(x, (D,), weight, bias, 1e-5),
              _layer_norm_candidates(x, weight, bias, 1e-5),
              "Normalise each vector over its last axis: (x - mean) / sqrt(var + eps) * weight + bias, "
              "with the biased variance.")
    # 2. tiny variance: where eps sits matters, and a missing eps shows
    small = 1e-3 * _randn(g, B, T, D)
    actual = _call_layer_norm(name, fn, small, weight, bias, 1e-5)
    _require_tensor(name, "the output for inputs of tiny variance", actual, (B, T, D))
    _diagnose(name, "the output for inputs of tiny variance (about 1e-6)", actual,
              F.layer_norm(small, (D,), weight, bias, 1e-5), _layer_norm_candidates(small, weight, bias, 1e-5),
              "With a variance close to eps the result depends on where eps is: sqrt(var + eps).")
    # 3. the eps argument is used (not a hard-coded 1e-5)
    actual = _call_layer_norm(name, fn, x, weight, bias, 0.5)
    _diagnose(name, "the output for eps=0.5", actual, F.layer_norm(x, (D,), weight, bias, 0.5),
              {"the eps argument is ignored (a hard-coded eps?). Use the eps passed in: sqrt(var + eps).":
                  F.layer_norm(x, (D,), weight, bias, 1e-5), **_layer_norm_candidates(x, weight, bias, 0.5)},
              "Use the eps argument inside the square root.")
    # 4. a constant vector (e.g. a zero padding vector): no NaN, output = bias
    constant = torch.zeros(2, D)
    constant[1] = 3.0
    try:
        actual = _call_layer_norm(name, fn, constant, weight, bias, 1e-5)
    except ExerciseWrong as error:
        raise ExerciseWrong(f"{name}: fails on a 2-D input of shape (2, {D}). {LN_FIXED_AXIS} "
                            f"({error})") from error
    _require_tensor(name, f"the output for a 2-D input (2, {D})", actual, (2, D))
    _require_finite(name, "the output for a constant vector", actual, f"Likely bug: {LN_NO_EPS}")
    _diagnose(name, "the output for constant vectors", actual, bias.expand(2, D), {},
              "A constant vector normalises to 0, so the output is the bias.")
    # 5. other shapes: 2-D and 4-D inputs
    for shape in [(6, D), (2, 3, 4, D)]:
        z = _randn(g, *shape) + 1
        try:
            actual = _call_layer_norm(name, fn, z, weight, bias, 1e-5)
        except ExerciseWrong as error:
            raise ExerciseWrong(f"{name}: fails on an input of shape {shape}. {LN_FIXED_AXIS} ({error})") from error
        _require_tensor(name, f"the output for an input of shape {shape}", actual, shape)
        _diagnose(name, f"the output for an input of shape {shape}", actual,
                  F.layer_norm(z, (D,), weight, bias, 1e-5), {}, LN_FIXED_AXIS)
    _passed(name, "equals F.layer_norm over the last axis, with tiny variances, eps, constant vectors, 2-D to 4-D.")


# --------------------------------------------------------------------------------------------
# Exercise 6.2: residual(x, sublayer, norm, norm_first=False, dropout=None)
# --------------------------------------------------------------------------------------------

FLAG_SWAPPED = (
    "norm_first read the wrong way round. norm_first=False is post-LN, the paper: "
    "norm(x + dropout(sublayer(x))); norm_first=True is pre-LN: x + dropout(sublayer(norm(x)))."
)
PRE_NORMALISED_RESIDUAL = (
    "in pre-LN the residual is taken from the normalised x, norm(x) + sublayer(norm(x)) (e.g. "
    "`x = norm(x)` before the add). The residual path must carry x itself: "
    "x + dropout(sublayer(norm(x))). Normalising the stream itself, in every layer, is post-LN."
)
PRE_NORM_AFTER_ADD = (
    "pre-LN also normalises after the add. In pre-LN the norm goes only on the sublayer's input: "
    "x + dropout(sublayer(norm(x))), nothing after the add (the stack's final LayerNorm does that once)."
)
POST_NORM_ON_SUBLAYER = (
    "the norm is applied to the sublayer's output instead of the sum, x + norm(sublayer(x)). In "
    "post-LN it normalises the sum: norm(x + dropout(sublayer(x)))."
)
POST_NORM_BEFORE = (
    "post-LN normalises x before the add, norm(x) + sublayer(x). It normalises the sum: "
    "norm(x + dropout(sublayer(x)))."
)
NO_RESIDUAL = "the residual add is missing: the input x must be added to the sublayer's output."
NO_NORM = "the norm is never applied: post-LN is norm(x + dropout(sublayer(x))), pre-LN x + dropout(sublayer(norm(x)))."
DROPOUT_ON_SUM = (
    "dropout is applied to the sum (or after the norm), so it also drops the residual path. "
    "Dropout goes on the sublayer's output, before the add: x + dropout(sublayer(...))."
)
DROPOUT_ON_INPUT = (
    "dropout is applied to the sublayer's input. It goes on the sublayer's output, before the "
    "add: dropout(sublayer(...))."
)
DROPOUT_IGNORED = "the dropout argument is not used. Apply it to the sublayer's output, before the add."


class _MarkedDropout:
    """A deterministic stand-in for dropout: multiplies by a fixed 0/2 mask, so its place shows."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.mask


def _residual_candidates(x, sub, norm, drop, norm_first: bool) -> dict[str, torch.Tensor]:
    if norm_first:
        return {
            FLAG_SWAPPED: norm(x + drop(sub(x))),
            PRE_NORMALISED_RESIDUAL: norm(x) + drop(sub(norm(x))),
            PRE_NORM_AFTER_ADD: norm(x + drop(sub(norm(x)))),
            NO_RESIDUAL: drop(sub(norm(x))),
            NO_NORM: x + drop(sub(x)),
            DROPOUT_ON_SUM: drop(x + sub(norm(x))),
            DROPOUT_ON_INPUT: x + sub(drop(norm(x))),
            DROPOUT_IGNORED: x + sub(norm(x)),
        }
    return {
        FLAG_SWAPPED: x + drop(sub(norm(x))),
        POST_NORM_ON_SUBLAYER: x + norm(drop(sub(x))),
        POST_NORM_BEFORE: norm(x) + drop(sub(x)),
        NO_RESIDUAL: norm(drop(sub(x))),
        NO_NORM: x + drop(sub(x)),
        DROPOUT_ON_SUM: drop(norm(x + sub(x))),
        "dropout is applied to the sum, before the norm, so it also drops the residual path. Dropout "
        "goes on the sublayer's output: norm(x + dropout(sublayer(x))).": norm(drop(x + sub(x))),
        DROPOUT_ON_INPUT: norm(x + sub(drop(x))),
        DROPOUT_IGNORED: norm(x + sub(x)),
    }


def residual(fn: Callable) -> None:
    """Check ``fn(x, sublayer, norm, norm_first=False, dropout=None) -> (B, S, D)`` for both placements."""
    __tracebackhide__ = True
    name = "residual"
    g = _generator()
    B, S, D = 2, 5, 6
    W = _randn(g, D, D) / D ** 0.5
    gamma, beta = 1 + 0.5 * _randn(g, D), 0.5 * _randn(g, D)
    sub = lambda t: torch.tanh(t @ W) + 0.3  # noqa: E731  a sublayer that is not the identity
    norm = lambda t: F.layer_norm(t, (D,), gamma, beta)  # noqa: E731
    x = 2 * _randn(g, B, S, D) + 1
    mask = 2.0 * (torch.rand(B, S, D, generator=g) < 0.5)
    for norm_first, label in ((False, "post-LN (norm_first=False)"), (True, "pre-LN (norm_first=True)")):
        drop = _MarkedDropout(mask)
        actual = _call(name, fn, x, sub, norm, norm_first=norm_first, dropout=drop)
        _require_tensor(name, f"the output, {label}", actual, (B, S, D))
        _require_finite(name, f"the output, {label}", actual)
        expected = x + drop(sub(norm(x))) if norm_first else norm(x + drop(sub(x)))
        _diagnose(name, f"the output, {label}, with dropout", actual, expected,
                  _residual_candidates(x, sub, norm, drop, norm_first),
                  "post-LN: norm(x + dropout(sublayer(x))); pre-LN: x + dropout(sublayer(norm(x))).")
        # dropout=None means no dropout; the default of norm_first is False (post-LN)
        identity = lambda t: t  # noqa: E731
        try:
            actual = _call(name, fn, x, sub, norm, norm_first=norm_first, dropout=None)
        except ExerciseWrong as error:
            if "NoneType" in str(error):
                raise ExerciseWrong(
                    f"{name}: fails with dropout=None ({error.__cause__}). Likely bug: dropout=None is "
                    "called like a function. None means no dropout: replace it by the identity, "
                    "`if dropout is None: dropout = nn.Identity()`."
                ) from error
            raise
        _require_tensor(name, f"the output, {label}, dropout=None", actual, (B, S, D))
        expected = x + sub(norm(x)) if norm_first else norm(x + sub(x))
        _diagnose(name, f"the output, {label}, dropout=None", actual, expected,
                  _residual_candidates(x, sub, norm, identity, norm_first),
                  "dropout=None means no dropout at all.")
    actual = _call(name, fn, x, sub, norm)
    _diagnose(name, "the output with the default arguments", actual, norm(x + sub(x)),
              {"the default is not post-LN: norm_first must default to False, the paper's placement.":
                  x + sub(norm(x))}, "residual(x, sublayer, norm) is post-LN without dropout.")
    _passed(name, "post-LN norm(x + dropout(sublayer(x))) and pre-LN x + dropout(sublayer(norm(x))), "
                  "dropout on the sublayer output only.")
