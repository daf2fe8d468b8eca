"""Exercise checkers: each compares a learner's implementation with the package's reference.

Hand-written (no notebook exports here). Every checker has three outcomes:

* **pass** — prints one line starting with ``✅``;
* **not attempted** — the learner's function still raises the stub's ``NotImplementedError``:
  raises :class:`ExerciseNotAttempted` with a friendly message;
* **wrong** — raises :class:`ExerciseWrong` (an ``AssertionError``) whose message names the likely
  bug: softmax over the wrong axis, missing ``1/sqrt(d_k)``, mask polarity flipped, NaN from a
  fully masked row, scores computed as ``k @ q.T``, ...

The checkers run the learner's code on fresh random inputs each time, so an implementation
cannot pass by returning memorised numbers. Hints are found by comparing the learner's output
with the outputs of the known buggy variants in ``shared/PITFALLS.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "ExerciseNotAttempted",
    "ExerciseWrong",
    "dot_product_score",
    "attention_pool",
    "additive_score",
    "padding_mask",
    "masked_softmax",
    "scaled_dot_product_attention",
]


class ExerciseNotAttempted(Exception):
    """The exercise still holds its ``raise NotImplementedError`` stub."""


class ExerciseWrong(AssertionError):
    """The learner's code runs but gives a wrong answer; the message holds a hint."""


# --------------------------------------------------------------------------------------------
# Machinery shared by all checkers
# --------------------------------------------------------------------------------------------


def _generator() -> torch.Generator:
    """A generator with a fresh seed, so every check sees new random inputs."""
    g = torch.Generator()
    g.seed()
    return g


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def _call(name: str, fn: Callable, *args, **kwargs):
    """Call the learner's ``fn``; turn the stub's NotImplementedError into 'not attempted'."""
    __tracebackhide__ = True
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise ExerciseNotAttempted(
            f"{name}: not attempted yet. Replace the `raise NotImplementedError` line in the cell "
            "marked `# YOUR CODE HERE` with your code, run that cell, then run this check again."
        ) from None
    except (ExerciseNotAttempted, ExerciseWrong):
        raise
    except Exception as error:  # the learner's code crashed: report it with a hint
        hint = ""
        text = str(error)
        if "shape" in text or "size" in text or "dimension" in text:
            hint = (
                " Hint: a shape error. Write the shape of every intermediate tensor next to the "
                "line that makes it; scores must be (..., T, S) = q @ k.transpose(-2, -1)."
            )
        raise ExerciseWrong(
            f"{name}: your code raised {type(error).__name__}: {text}.{hint}"
        ) from error


def _close(a, b, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol, equal_nan=False)
    )


def _require_tensor(name: str, what: str, x, shape: tuple[int, ...]) -> None:
    __tracebackhide__ = True
    if not isinstance(x, torch.Tensor):
        raise ExerciseWrong(f"{name}: {what} should be a torch.Tensor, got {type(x).__name__}.")
    if tuple(x.shape) != tuple(shape):
        raise ExerciseWrong(
            f"{name}: {what} has shape {tuple(x.shape)}, expected {tuple(shape)}."
        )


def _require_finite(name: str, what: str, x: torch.Tensor, hint: str = "") -> None:
    __tracebackhide__ = True
    if not torch.isfinite(x).all():
        raise ExerciseWrong(f"{name}: {what} contains NaN or inf. {hint}".rstrip())


def _diagnose(name: str, what: str, actual, expected, candidates: dict[str, torch.Tensor],
              generic_hint: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Pass if ``actual`` matches ``expected``; else name the first buggy variant it matches."""
    __tracebackhide__ = True
    if _close(actual, expected, atol, rtol):
        return
    for hint, candidate in candidates.items():
        if _close(actual, candidate, atol, rtol):
            raise ExerciseWrong(f"{name}: {what} is wrong. Likely bug: {hint}")
    error = (actual.float() - expected.float()).abs().max().item()
    raise ExerciseWrong(
        f"{name}: {what} differs from the reference (largest difference {error:.3g}). {generic_hint}"
    )


def _passed(name: str, detail: str) -> None:
    print(f"✅ {name}: passed — {detail}")


def _random_keep_mask(g: torch.Generator, *shape: int) -> torch.Tensor:
    """A random boolean mask (True = may attend) with at least one True and one False per row."""
    mask = torch.rand(*shape, generator=g) < 0.5
    mask[..., 0] = True
    mask[..., -1] = False
    return mask


def _naive_softmax_with_fill(scores: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~mask, fill), dim=-1)


# --------------------------------------------------------------------------------------------
# Chapter 01
# --------------------------------------------------------------------------------------------


def dot_product_score(fn: Callable) -> None:
    """Check ``fn(q, k) -> scores`` with ``q (..., T, d)``, ``k (..., S, d)``, scores ``(..., T, S)``."""
    __tracebackhide__ = True
    name = "dot_product_score"
    g = _generator()
    for shape_q, shape_k in [((2, 3, 8), (2, 5, 8)), ((2, 4, 3, 8), (2, 4, 5, 8)), ((3, 8), (5, 8))]:
        q, k = _randn(g, *shape_q), _randn(g, *shape_k)
        expected = q @ k.transpose(-2, -1)
        actual = _call(name, fn, q, k)
        if isinstance(actual, torch.Tensor) and tuple(actual.shape) == tuple(expected.transpose(-2, -1).shape):
            if _close(actual, expected.transpose(-2, -1)):
                raise ExerciseWrong(
                    f"{name}: scores have shape {tuple(actual.shape)} = (..., S, T). Likely bug: you "
                    "computed k @ q.T; the scores are q @ k.T so that row i holds query i's score "
                    "against every key."
                )
        _require_tensor(name, "the scores", actual, expected.shape)
        _diagnose(
            name, "the scores", actual, expected,
            {
                "you divided by sqrt(d). Plain dot-product scores are unscaled; the scaling comes "
                "in chapter 02.": expected / math.sqrt(q.size(-1)),
                "you computed the elementwise product q * k summed over the wrong axis.": expected * 0,
            },
            "Each entry must be scores[..., i, j] = sum over d of q[..., i, d] * k[..., j, d]. "
            "Transpose only the last two axes of k: k.transpose(-2, -1).",
        )
    _passed(name, "matches q @ kᵀ on 3 random shapes, including extra batch/head axes.")


def attention_pool(fn: Callable) -> None:
    """Check ``fn(scores, values) -> (out, weights)`` (softmax over keys, then weighted sum)."""
    __tracebackhide__ = True
    name = "attention_pool"
    g = _generator()
    B, T, S, Dv = 2, 3, 5, 4
    scores, values = 3 * _randn(g, B, T, S), _randn(g, B, S, Dv)
    expected_w = torch.softmax(scores, dim=-1)
    result = _call(name, fn, scores, values)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ExerciseWrong(f"{name}: return a tuple (out, weights), got {type(result).__name__}.")
    out, weights = result
    _require_tensor(name, "weights", weights, (B, T, S))
    _require_tensor(name, "out", out, (B, T, Dv))
    _diagnose(
        name, "weights", weights, expected_w,
        {
            "softmax over the wrong axis. Each query's weights over the keys must sum to 1: use "
            "dim=-1 (the key axis S), not dim=-2.": torch.softmax(scores, dim=-2),
            "you returned the raw scores. The weights are softmax(scores) over the key axis.": scores,
            "softmax over the batch axis. Use dim=-1.": torch.softmax(scores, dim=0),
        },
        "weights = softmax(scores) along the last axis.",
    )
    _diagnose(
        name, "out", out, expected_w @ values,
        {"you summed the values with the raw scores instead of the weights.": scores @ values},
        "out[..., i, :] = sum over j of weights[..., i, j] * values[..., j, :], i.e. weights @ values.",
    )
    _passed(name, "weights are a softmax over keys and out = weights @ values.")


def additive_score(cls: type) -> None:
    """Check a class ``cls(d_q, d_k, d_hidden)`` whose ``forward(q, k)`` gives additive scores.

    The class must keep its three bias-free linear maps as ``W_q``, ``W_k`` and ``w_v``:
    ``score(q_i, k_j) = w_vᵀ tanh(W_q q_i + W_k k_j)``.
    """
    __tracebackhide__ = True
    name = "AdditiveScore"
    g = _generator()
    d_q, d_k, d_h, B, T, S = 6, 4, 8, 2, 3, 5
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    module = cls(d_q, d_k, d_h)
    for attr in ("W_q", "W_k", "w_v"):
        if not hasattr(module, attr):
            raise ExerciseWrong(f"{name}: keep the linear maps as attributes W_q, W_k and w_v; {attr} is missing.")
    q, k = _randn(g, B, T, d_q), _randn(g, B, S, d_k)
    actual = _call(name, module, q, k)
    with torch.no_grad():
        Wq, Wk, wv = module.W_q.weight, module.W_k.weight, module.w_v.weight  # (h, d_q) (h, d_k) (1, h)
        expected = torch.empty(B, T, S)
        for b in range(B):
            for i in range(T):
                for j in range(S):
                    expected[b, i, j] = (wv @ torch.tanh(Wq @ q[b, i] + Wk @ k[b, j])).squeeze()
        no_tanh = (q @ Wq.T).unsqueeze(2) + (k @ Wk.T).unsqueeze(1)
        candidates = {
            "tanh is missing: without it the score is linear, w_vᵀW_q q + w_vᵀW_k k, and cannot "
            "express any interaction between q and k.": (no_tanh @ wv.T).squeeze(-1),
            "tanh applied after w_v: apply tanh to the hidden features, then w_v.": torch.tanh(no_tanh @ wv.T).squeeze(-1),
        }
    if isinstance(actual, torch.Tensor) and tuple(actual.shape) == (B, S, T) and _close(actual, expected.transpose(-2, -1)):
        raise ExerciseWrong(f"{name}: scores have shape (B, S, T). Likely bug: the query axis and key axis are swapped; "
                            "broadcast W_q q as (B, T, 1, h) and W_k k as (B, 1, S, h).")
    _require_tensor(name, "the scores", actual, (B, T, S))
    _diagnose(name, "the scores", actual.detach(), expected, candidates,
              "score[b, i, j] = w_vᵀ tanh(W_q q[b, i] + W_k k[b, j]): broadcast W_q q to (B, T, 1, h) "
              "and W_k k to (B, 1, S, h), add, tanh, then w_v and squeeze the last axis.")
    _passed(name, "equals wᵥᵀ tanh(W_q qᵢ + W_k kⱼ) computed pair by pair.")


# --------------------------------------------------------------------------------------------
# Chapter 02
# --------------------------------------------------------------------------------------------


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
    nan_hint = (
        "Likely bug: NaN from a fully masked row. softmax over a row of -inf is 0/0. Fill with "
        "torch.finfo(scores.dtype).min instead of -inf and zero the masked weights afterwards "
        "(weights.masked_fill(~mask, 0))."
    )
    _require_finite(name, "the weights of a row whose keys are all masked", actual.detach(), nan_hint)
    row = actual[0, 1].detach()
    if torch.allclose(row, torch.full_like(row, 1 / S)):
        raise ExerciseWrong(
            f"{name}: a query with nothing to attend to got uniform weights 1/S. Likely bug: a "
            "fully masked row. Filling every key with the same big negative number makes softmax "
            "uniform; zero such rows afterwards (weights.masked_fill(~mask, 0))."
        )
    if not torch.equal(row, torch.zeros_like(row)):
        raise ExerciseWrong(f"{name}: a query with nothing to attend to must get weights of exactly 0, got {row.tolist()}.")
    if actual.requires_grad:
        actual.sum().backward()
        _require_finite(name, "the gradient with respect to the scores", scores_g.grad, nan_hint)
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
    nan_hint = (
        "Likely bug: NaN from a fully masked row. softmax over a row that is all -inf is 0/0 = NaN, "
        "and torch.where/nan_to_num after it hides the NaN in the output but not in the gradient. "
        "A query with nothing to attend to must get weights and output 0: fill with "
        "torch.finfo(scores.dtype).min and zero the masked weights after the softmax "
        "(weights.masked_fill(~mask, 0))."
    )
    _require_finite(name, "out for a query whose keys are all masked", out_e.detach(), nan_hint)
    _require_finite(name, "weights for a query whose keys are all masked", w_e.detach(), nan_hint)
    row = w_e[1, 0].detach()
    if torch.allclose(row, torch.full_like(row, 1 / S)):
        raise ExerciseWrong(
            f"{name}: a query with nothing to attend to got uniform weights 1/S, so it averages the "
            "forbidden values. Likely bug: a fully masked row is not zeroed. After the softmax, "
            "zero the masked weights: weights.masked_fill(~mask, 0)."
        )
    if not (torch.equal(row, torch.zeros_like(row)) and torch.equal(out_e[1, 0].detach(), torch.zeros(Dv))):
        raise ExerciseWrong(
            f"{name}: a query with nothing to attend to must get weights and output exactly 0; got "
            f"weights {row.tolist()}."
        )
    out_e.sum().backward()
    for label, t in (("q", qg), ("k", kg), ("v", vg)):
        if t.grad is not None:
            _require_finite(name, f"the gradient with respect to {label}", t.grad, nan_hint)
    _passed(
        name,
        "matches softmax(q kᵀ/√d_k) v without and with masks; fully masked rows give 0 and finite gradients.",
    )
