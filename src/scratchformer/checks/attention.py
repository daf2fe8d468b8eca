"""Checkers for chapter 02 (``scratchformer.attention``): padding masks, masked softmax,
scaled dot-product attention and the ``SelfAttention`` module."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from scratchformer.checks._common import (
    NAN_FROM_EMPTY_ROW,
    ExerciseNotAttempted,
    ExerciseWrong,
    _call,
    _generator,
    _passed,
)
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import LOW_PRECISION, distinct_ints, mask_variants
from scratchformer.checks.scores import (
    _float64,
    _gradients,
    _match,
    _pair,
    _Probe,
    _require_dtypes,
    _run,
    _seeded,
    _shape,
    _verdict,
)

__all__ = ["padding_mask", "masked_softmax", "scaled_dot_product_attention", "self_attention"]


# --------------------------------------------------------------------------------------------
# Known bugs, computed in float64
# --------------------------------------------------------------------------------------------


def _attend(q, k, v, mask, scale, *, dim=-1, flip=False, transpose=False, after=False):
    """``(out, weights)`` of attention and of its known bugs: softmax over ``dim``, mask polarity
    flipped, scores computed as ``k @ qᵀ``, mask applied after the softmax."""
    scores = (k @ q.transpose(-2, -1) if transpose else q @ k.transpose(-2, -1)) * scale
    weights = _softmax(scores, mask, dim=dim, flip=flip, after=after)
    return weights @ v, weights


def _softmax(scores, mask, *, dim=-1, flip=False, after=False):
    """The book's masked softmax (fill with the dtype's minimum, then zero) and its known bugs."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    keep = ~mask if flip else mask
    if after:
        return torch.softmax(scores, dim=-1) * keep
    filled = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=dim).masked_fill(~keep, 0.0)


def _with_empty_row(mask: torch.Tensor) -> torch.Tensor:
    """The mask with its first row all False: a query with nothing to attend to (for a key-padding
    mask ``(B, 1, S)``, a whole sequence of length 0)."""
    mask = mask.clone()
    mask[(0,) * (mask.dim() - 1)] = False
    return mask


def _mask_bug_predicates(mask, weights_of, expected) -> dict[str, object]:
    """Hints for mask bugs that show as a property of the output, not as one exact tensor.
    ``weights_of(actual)`` picks the weights out of the learner's output; ``expected`` are the
    right weights (float64)."""
    if mask is None:
        return {FILL_TOO_SMALL: None, NAN_FROM_EMPTY_ROW_HINT: None, UNIFORM_ROW: None}
    empty = ~mask.any(-1, keepdim=True)  # rows with nothing to attend to
    has_empty = bool(empty.any())
    S = expected.size(-1)

    def leak(actual) -> bool:
        """The mask lowered the masked scores, but not far enough: masked keys keep some weight
        (where a row has both kinds of key), a row with nothing to attend to is uniform or 0,
        and renormalising the allowed keys' weights gives the right answer."""
        w = weights_of(actual).detach().double()
        keep, rows = mask.expand_as(w), ~empty.expand_as(w)
        leaked = w.masked_fill(keep, 0.0).masked_select(rows)
        if bool((~keep & rows).any()) and not leaked.abs().max() > 0:
            return False
        allowed = w.masked_fill(~keep, 0.0)
        renormalised = allowed / allowed.sum(-1, keepdim=True)
        empty_rows = w.masked_select(empty.expand_as(w))
        return (uniform(actual) or not empty_rows.any()) and bool(torch.allclose(
            renormalised.masked_select(rows), expected.expand_as(w).masked_select(rows),
            atol=5e-2, rtol=5e-2))

    def uniform(actual) -> bool:
        w = weights_of(actual).detach().double()
        rows = w.masked_select(empty.expand_as(w))
        return bool(torch.allclose(rows, torch.full_like(rows, 1 / S), atol=1e-2))

    def non_finite(actual) -> bool:
        return not all(torch.isfinite(t).all() for t in (actual if isinstance(actual, tuple)
                                                         else (actual,)))

    return {
        FILL_TOO_SMALL: leak,
        NAN_FROM_EMPTY_ROW_HINT: non_finite if has_empty else None,
        UNIFORM_ROW: uniform if has_empty else None,
    }


FILL_TOO_SMALL = (
    "masking with a finite fill too small to matter (e.g. -10 or -100 is not far enough below "
    "the other scores, so masked keys keep a little weight). Fill with "
    "torch.finfo(scores.dtype).min, the most negative number of the scores' own dtype."
)
NAN_FROM_EMPTY_ROW_HINT = NAN_FROM_EMPTY_ROW.removeprefix("Likely bug: ")
UNIFORM_ROW = (
    "a fully masked row is not zeroed: a query with nothing to attend to got uniform weights 1/S, "
    "so it averages keys it may not see. Filling every key of a row with the same big negative "
    "number makes its softmax uniform; after the softmax, zero the masked weights: "
    "weights.masked_fill(~mask, 0)."
)
FLIPPED = (
    "mask polarity flipped: keys the mask forbids get the weight. In this book True means 'may "
    "attend' (the F.scaled_dot_product_attention convention); fill the scores where the mask is "
    "False: scores.masked_fill(~mask, ...)."
)
MASK_IGNORED = "the mask is ignored: masked keys get the same weight as without a mask."
AFTER_SOFTMAX = (
    "the mask is applied after the softmax: zeroing weights afterwards leaves rows that no longer "
    "sum to 1. Fill the masked scores before the softmax, then zero the masked weights."
)
OVERFLOW = (
    "exp overflows for large scores (e^100 is inf in float32, e^12 in float16), and inf/inf is "
    "NaN. Subtract each row's maximum before exp, or use torch.softmax, which does."
)
INDEXING = (
    "boolean indexing (`s[~mask] = ...`) needs a mask of the scores' full shape, but masks "
    "broadcast: (T, S), (B, 1, S), (B, 1, 1, S). Use scores.masked_fill(~mask, value), which "
    "broadcasts."
)
CRASH_HINTS = {
    "overflow": "a fill value such as -1e9 that does not fit in float16 (its largest magnitude "
                "is 65504). Use torch.finfo(scores.dtype).min, which fits every dtype.",
    "shape of the mask": INDEXING,
}


def _mask_plan(g, leads, T: int, S: int, dtype=torch.float32, empty: bool = True):
    """``(lead, mask label, mask)`` for every mask shape of every rank in ``leads``, each mask with
    a fully masked row, plus no mask."""
    plan = []
    for lead in leads:
        plan.append((lead, "no mask", None, dtype))
        for label, mask in mask_variants(g, lead, T, S).items():
            if empty:
                mask, label = _with_empty_row(mask), f"{label} with a fully masked row"
            plan.append((lead, f"mask {label}", mask, dtype))
    return plan


def _low_precision_plan(g, B: int, H: int, T: int, S: int):
    """float16 and bfloat16 probes with masks: a key-padding mask with an empty sequence and a
    full 4-D mask with a fully masked row."""
    plan = []
    for dtype in LOW_PRECISION:
        keys = _with_empty_row(mask_variants(g, (B,), T, S)[f"key padding {(B, 1, S)}"])
        full = _with_empty_row(mask_variants(g, (B, H), T, S)[f"full {(B, H, T, S)}"])
        plan += [((B,), f"key-padding mask {tuple(keys.shape)} with an empty sequence", keys, dtype),
                 ((B, H), f"mask {tuple(full.shape)} with a fully masked row", full, dtype)]
    return plan


def _require_exact_zeros(name: str, probes, masks, weights_of) -> None:
    """Masked keys get weight exactly 0 (the contract), not merely a tiny one."""
    __tracebackhide__ = True
    leaks = []
    for p, mask in zip(probes, masks):
        if mask is not None:
            w = weights_of(p.actual)
            leaks.append((p, w.detach().masked_select(~mask.expand_as(w)).abs().max().item()))
    bad = [(p, leak) for p, leak in leaks if leak > 0]
    if bad:
        hint = f" Likely bug: {FILL_TOO_SMALL}" if len(bad) == len(leaks) else ""
        raise ExerciseWrong(
            f"{name}: masked keys must get weight exactly 0; for {bad[0][0].label} they get up to "
            f"{bad[0][1]:.3g}.{hint}"
        )


# --------------------------------------------------------------------------------------------
# Exercise 2.1: padding mask
# --------------------------------------------------------------------------------------------


@exercise("2.1", reference="scratchformer.attention")
def padding_mask(fn: Callable) -> None:
    """Check ``fn(lengths, max_len) -> mask`` of shape ``(B, max_len)``, True at real tokens.

    Probes: lengths 0, 1 and max_len, a batch of one, max_len longer than every sequence, int32
    and int64 lengths; the lengths tensor is left unchanged.
    """
    __tracebackhide__ = True
    from scratchformer.attention import padding_mask as reference

    name = "padding_mask"
    g = _generator()
    B, max_len = distinct_ints(g, 2, 3, 9)
    cases = [
        torch.cat([torch.tensor([0, 1, max_len]), torch.randint(0, max_len + 1, (B,), generator=g)]),
        torch.tensor([int(torch.randint(1, max_len + 1, (1,), generator=g))]),
        torch.randint(0, max_len - 1, (B,), generator=g),           # all shorter than max_len
        torch.randint(0, max_len + 1, (B,), generator=g).to(torch.int32),
    ]
    probes = []
    for lengths in cases:
        label = f"lengths {lengths.tolist()} ({lengths.dtype}) and max_len {max_len}"
        expected = reference(lengths, max_len)
        positions = torch.arange(max_len)
        longest = torch.arange(int(lengths.max()))
        probe = _Probe(label, torch.float32, expected, {
            "mask polarity flipped: the mask is inverted. In this book True means 'may attend', "
            "so real tokens are True and padding is False.": ~expected,
            "off by one, `<=` instead of `<`: one position too many is True. A sequence of length "
            "L occupies positions 0 .. L-1.": positions[None, :] <= lengths[:, None],
            "off by one: one position too few is True. A sequence of length L occupies positions "
            "0 .. L-1, all of them real tokens.": positions[None, :] < lengths[:, None] - 1,
            "the mask is not boolean. It must be torch.bool: an integer or float mask is read as "
            "an additive bias by torch, not as keep/drop. A comparison such as `<` gives "
            "booleans.": expected.double(),
            "the width comes from the lengths (lengths.max()) instead of max_len: the mask must "
            "have max_len columns even when every sequence is shorter.":
                longest[None, :] < lengths[:, None],
            "you returned shape (B, 1, max_len); return (B, max_len): the caller adds the axis "
            "it needs.": expected[:, None, :],
            "the mask is transposed, (max_len, B); rows are sequences: (B, max_len).": expected.T,
        })
        probes.append(probe)
        probe.actual = _run(name, label, fn, lengths, max_len, inputs=("lengths",))
    _verdict(name, probes, "mask[b] must be True at the first lengths[b] positions and False after.",
             ("the mask",))
    _passed(name, f"True exactly at the real tokens on {len(probes)} batches (lengths 0, 1 and "
                  "max_len, int32 and int64); lengths unchanged.")


# --------------------------------------------------------------------------------------------
# Exercise 2.2: masked softmax
# --------------------------------------------------------------------------------------------


@exercise("2.2", reference="scratchformer.attention")
def masked_softmax(fn: Callable) -> None:
    """Check ``fn(scores, mask) -> weights``: zeros where masked, rows of zeros if fully masked.

    Probes: 2-D, 3-D and 4-D scores with every mask shape ((T, S), key padding, broadcast over
    heads, full), each with a fully masked row; no mask; scores around 1000; float16 and bfloat16
    with masks (weights keep the dtype); scores unchanged; finite gradients.
    """
    __tracebackhide__ = True
    from scratchformer.attention import masked_softmax as reference

    name = "masked_softmax"
    g = _generator()
    B, H, T, S = distinct_ints(g, 4, 2, 9)
    plan = _mask_plan(g, [(), (B,), (B, H)], T, S)
    offset_mask = mask_variants(g, (B,), T, S)[f"full {(B, T, S)}"]
    plan.append(((B,), "a full mask, scores around 1000", offset_mask, torch.float32))
    plan += _low_precision_plan(g, B, H, T, S)
    probes, masks = [], []
    for lead, mask_label, mask, dtype in plan:
        offset = 1000.0 if "1000" in mask_label else 0.0
        scores = (offset + 3 * torch.randn(*lead, T, S, generator=g)).to(dtype)
        label = f"scores {_shape(scores)} in {dtype}, {mask_label}"
        (s64,) = _float64(scores)
        candidates = {  # without a mask the given lines run, not the learner's
            FLIPPED: _softmax(s64, mask, flip=True),
            "softmax over the wrong axis. Normalise over the keys: dim=-1.":
                _softmax(s64, mask, dim=-2),
            MASK_IGNORED: torch.softmax(s64, dim=-1),
            AFTER_SOFTMAX: _softmax(s64, mask, after=True),
            **_mask_bug_predicates(mask, lambda a: a, _softmax(s64, mask)),
            OVERFLOW: lambda a: not torch.isfinite(a).all(),
        } if mask is not None else {}
        probe = _Probe(label, dtype, reference(scores, mask), candidates, exact=not offset)
        probes.append(probe)
        masks.append(mask)
        probe.actual = _run(name, label, fn, scores, mask, hints=CRASH_HINTS, inputs=("scores",))
    _verdict(name, probes, "weights = softmax over the last axis of the scores, masked keys "
                           "filled before the softmax and zeroed after it.", ("the weights",))
    _require_exact_zeros(name, probes, masks, lambda a: a)
    _require_dtypes(name, probes, ("the weights",))
    scores = torch.randn(B, T, S, generator=g, requires_grad=True)
    mask = _with_empty_row(mask_variants(g, (B,), T, S)[f"key padding {(B, 1, S)}"])
    weights = _run(name, "an empty sequence, scores that require gradients", fn, scores, mask)
    _gradients(name, weights, {"scores": scores}, NAN_FROM_EMPTY_ROW)
    _passed(name, f"matches on {len(probes)} inputs: 2-D to 4-D scores, every mask shape, fully "
                  "masked rows give 0, scores around 1000, float32/float16/bfloat16; finite "
                  "gradients.")


# --------------------------------------------------------------------------------------------
# Exercise 2.3: scaled dot-product attention
# --------------------------------------------------------------------------------------------


def _sdpa_probe(g, lead, T, S, d_k, d_v, mask_label, mask, dtype, reference) -> tuple:
    """Inputs, label and expected output of one attention probe, with its known bugs."""
    offset = 100.0 if "100" in mask_label else 0.0
    q = torch.randn(*lead, T, d_k, generator=g)
    k = torch.randn(*lead, S, d_k, generator=g)
    if offset:  # a constant key feature shifts every score of a row by the same +100
        q[..., 0], k[..., 0] = offset, math.sqrt(d_k)
    v = torch.randn(*lead, S, d_v, generator=g)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    label = f"q {_shape(q)}, k {_shape(k)}, v {_shape(v)} in {dtype}, {mask_label}"
    q64, k64, v64 = _float64(q, k, v)
    scale = 1 / math.sqrt(d_k)
    right = _attend(q64, k64, v64, mask, scale)
    candidates = {
        "softmax over the wrong axis. Each query's weights over the keys must sum to 1: "
        "softmax(..., dim=-1).": _attend(q64, k64, v64, mask, scale, dim=-2),
        "the 1/sqrt(d_k) scaling is missing. Without it the scores' spread grows like "
        "sqrt(d_k) and the softmax saturates.": _attend(q64, k64, v64, mask, 1.0),
        "scaled by 1/d_k instead of 1/sqrt(d_k).": _attend(q64, k64, v64, mask, 1 / d_k),
        "multiplied by sqrt(d_k) instead of dividing.": _attend(q64, k64, v64, mask, math.sqrt(d_k)),
        "scaled by 1/sqrt(d_v) (the value size) instead of 1/sqrt(d_k) (the query/key size).":
            _attend(q64, k64, v64, mask, 1 / math.sqrt(d_v)),
        FLIPPED: None if mask is None else _attend(q64, k64, v64, mask, scale, flip=True),
        MASK_IGNORED: None if mask is None else _attend(q64, k64, v64, None, scale),
        AFTER_SOFTMAX: None if mask is None else _attend(q64, k64, v64, mask, scale, after=True),
        **_mask_bug_predicates(mask, lambda a: a[1], right[1]),
        OVERFLOW: lambda a: not all(torch.isfinite(t).all() for t in a),
        "you returned (weights, out); return (out, weights).": (right[1], right[0]),
        "scores transposed, computed as k @ qᵀ. They are q @ kᵀ, shape (..., T, S): row i holds "
        "query i's scores.": _attend(q64, k64, v64, mask, scale, transpose=True) if T == S else None,
    }
    expected = reference(q, k, v, mask)
    return (q, k, v, mask), label, _Probe(label, dtype, expected, candidates, exact=not offset)


def _run_sdpa(name, fn, g, plan, T, S, d_k, d_v):
    __tracebackhide__ = True
    from scratchformer.attention import scaled_dot_product_attention as reference

    probes, masks = [], []
    for lead, mask_label, mask, dtype in plan:
        args, label, probe = _sdpa_probe(g, lead, T, S, d_k, d_v, mask_label, mask, dtype, reference)
        probes.append(probe)
        masks.append(mask)
        result = _run(name, label, fn, *args[:3], mask=mask, hints=CRASH_HINTS,
                      inputs=("q", "k", "v"))
        probe.actual = _pair(name, result)
    return probes, masks


@exercise("2.3", reference="scratchformer.attention")
def scaled_dot_product_attention(fn: Callable) -> None:
    """Check ``fn(q, k, v, mask=None) -> (out, weights)`` against the reference and known bugs.

    Probes: T ≠ S and d_k ≠ d_v; 2-D, 3-D and 4-D inputs, each with no mask and every mask shape
    (each with a fully masked row); scores around 100; float16 and bfloat16 with masks (outputs
    keep the dtype); inputs unchanged; finite gradients with an empty sequence.
    """
    __tracebackhide__ = True
    name = "scaled_dot_product_attention"
    g = _generator()
    B, H, T, S, d_k, d_v = distinct_ints(g, 6, 2, 12)
    plan = _mask_plan(g, [(), (B,), (B, H)], T, S)
    offset_mask = mask_variants(g, (B,), T, S)[f"full {(B, T, S)}"]
    plan.append(((B,), "a full mask, scores around 100", offset_mask, torch.float32))
    plan += _low_precision_plan(g, B, H, T, S)
    try:
        probes, masks = _run_sdpa(name, fn, g, plan, T, S, d_k, d_v)
    except ExerciseWrong as crash:
        # Transposed scores crash when T != S; with T == S they run. Name the bug if they then
        # match it on every probe.
        try:
            square, _ = _run_sdpa(name, fn, g, _mask_plan(g, [(), (B,), (B, H)], T, T), T, T, d_k, d_v)
        except (ExerciseWrong, ExerciseNotAttempted):
            raise crash from None
        hint = next(h for h in square[0].candidates if h.startswith("scores transposed"))
        if all(_match(p.actual, p.candidates[hint], p.dtype) for p in square):
            raise ExerciseWrong(f"{crash} Likely bug: {hint} It fails when T ≠ S and matches "
                                "softmax(k qᵀ/√d_k) when T = S.") from None
        raise
    _verdict(name, probes, "weights = masked_softmax(q @ kᵀ / sqrt(d_k), mask) over the keys; "
                           "out = weights @ v.", ("out", "weights"))
    _require_exact_zeros(name, probes, masks, lambda a: a[1])
    _require_dtypes(name, probes, ("out", "weights"))
    q, k, v = (torch.randn(B, n, d, generator=g, requires_grad=True)
               for n, d in [(T, d_k), (S, d_k), (S, d_v)])
    mask = _with_empty_row(mask_variants(g, (B,), T, S)[f"key padding {(B, 1, S)}"])
    out, _ = _pair(name, _run(name, "an empty sequence, inputs that require gradients", fn,
                              q, k, v, mask=mask))
    _gradients(name, out, {"q": q, "k": k, "v": v}, NAN_FROM_EMPTY_ROW)
    _passed(name, f"matches softmax(q kᵀ/√d_k) v on {len(probes)} inputs: 2-D to 4-D, every mask "
                  "shape, fully masked rows give 0, float32/float16/bfloat16; finite gradients.")


# --------------------------------------------------------------------------------------------
# Exercise 2.4: the SelfAttention module
# --------------------------------------------------------------------------------------------


def _self_attend(x, W, mask, scale, *, roles=("q", "k", "v"), bias=True, transposed=False):
    """``(out, weights)`` of single-head self-attention from float64 copies of the module's weights
    ``W = {"q": (weight, bias), ...}``, with known bugs: ``roles`` says which projection makes the
    queries, keys and values; ``bias=False`` ignores the biases; ``transposed`` multiplies by the
    nn.Linear weight itself instead of its transpose."""
    def project(role):
        weight, b = W[role]
        y = x @ (weight if transposed else weight.T)
        return y + b if (bias and b is not None) else y

    q, k, v = (project(r) for r in roles)
    return _attend(q, k, v, mask, scale)


SWAPS = {
    ("k", "q", "v"): "the query and key projections are swapped: queries come from W_q, keys "
                     "from W_k.",
    ("q", "q", "v"): "the keys come from W_q; they come from W_k.",
    ("k", "k", "v"): "the queries come from W_k; they come from W_q.",
    ("q", "k", "q"): "the values come from W_q; they come from W_v (size d_v).",
    ("q", "k", "k"): "the values come from W_k; they come from W_v (size d_v).",
    ("v", "k", "q"): "the query and value projections are swapped: queries from W_q, values "
                     "from W_v.",
    ("q", "v", "k"): "the key and value projections are swapped: keys from W_k, values from W_v.",
}


def _self_attention_probes(name, cls, g, dims, bias, plan):
    __tracebackhide__ = True
    from scratchformer.attention import SelfAttention as Reference

    D, d_k, d_v = dims
    modules = {}
    probes, masks = [], []
    for lead, T, mask_label, mask, dtype in plan:
        if dtype not in modules:
            learner = _seeded(g, lambda: _call(name, cls, D, d_k, d_v, bias=bias))
            reference = _seeded(g, lambda: Reference(D, d_k, d_v, bias=bias))
            try:
                reference.load_state_dict(learner.state_dict())
            except RuntimeError:
                raise ExerciseWrong(
                    f"{name}: keep the projections created in __init__ (W_q, W_k, W_v) and add no "
                    "parameters of your own."
                ) from None
            modules[dtype] = (learner.to(dtype).eval(), reference.to(dtype).eval())
        learner, reference = modules[dtype]
        x = torch.randn(*lead, T, D, generator=g).to(dtype)
        label = (f"SelfAttention({D}, d_k={d_k}, d_v={d_v}, bias={bias}) in {dtype}, "
                 f"x {_shape(x)}, {mask_label}")
        W = {r: (lin.weight.detach().double(),
                 None if lin.bias is None else lin.bias.detach().double())
             for r, lin in (("q", learner.W_q), ("k", learner.W_k), ("v", learner.W_v))}
        (x64,) = _float64(x)
        scale = 1 / math.sqrt(d_k)

        def bug(scale=scale, x64=x64, W=W, mask=mask, **kw):
            try:
                return _self_attend(x64, W, mask, scale, **kw)
            except RuntimeError:  # this bug cannot run with these sizes
                return None

        right = bug()
        candidates = {
            "the 1/sqrt(d_k) scaling is missing.": bug(scale=1.0),
            "scaled by 1/sqrt(d_model) instead of 1/sqrt(d_k): d_k is the size of the queries "
            "and keys, q.size(-1), not of x.": bug(scale=1 / math.sqrt(D)),
            "scaled by 1/sqrt(d_v) instead of 1/sqrt(d_k).": bug(scale=1 / math.sqrt(d_v)),
            "scaled by 1/d_k instead of 1/sqrt(d_k).": bug(scale=1 / d_k),
            **{hint: bug(roles=roles) for roles, hint in SWAPS.items()},
            "the biases are ignored: call the projections, self.W_q(x), rather than multiplying "
            "by their .weight.": bug(bias=False) if bias else None,
            "x is multiplied by the nn.Linear weight itself; nn.Linear stores W as (out, in), so "
            "x @ W_q is x @ self.W_q.weight.T, or simply self.W_q(x).": bug(transposed=True),
            MASK_IGNORED: None if mask is None else _self_attend(x64, W, None, scale),
            **_mask_bug_predicates(mask, lambda a: a[1], right[1]),
            "you returned (weights, out); return (out, weights).":
                None if right is None else (right[1], right[0]),
        }
        with torch.no_grad():
            expected = reference(x, mask)
        probe = _Probe(label, dtype, expected, candidates)
        probes.append(probe)
        masks.append(mask)
        with torch.no_grad():
            result = _run(name, label, learner, x, mask, hints=CRASH_HINTS, inputs=("x",))
        probe.actual = _pair(name, result)
    return probes, masks, modules


@exercise("2.4", reference="scratchformer.attention")
def self_attention(cls: type) -> None:
    """Check ``cls(d_model, d_k=None, d_v=None, bias=False)`` whose ``forward(x, mask=None)``
    returns ``(out, weights)``: x ``(..., T, d_model)``, out ``(..., T, d_v)``, weights
    ``(..., T, T)``.

    The learner's module and the reference share their weights. Probes: d_model, d_k and d_v
    all different (a swapped projection changes a shape or a number), with and without biases;
    x of 2, 3 and 4 axes with no mask and every mask shape (each with a fully masked row);
    float16 and bfloat16 (outputs keep the dtype); x unchanged; gradients reach x and every
    projection.
    """
    __tracebackhide__ = True
    name = "SelfAttention"
    g = _generator()
    B, H, T, D, d_k, d_v = distinct_ints(g, 6, 2, 14)
    plan = [(lead, T, m, mask, dtype) for lead, m, mask, dtype in _mask_plan(g, [(), (B,), (B, H)], T, T)]
    low = [(lead, T, m, mask, dtype) for lead, m, mask, dtype in _low_precision_plan(g, B, H, T, T)]
    try:
        probes, masks, modules = _self_attention_probes(name, cls, g, (D, d_k, d_v), False, plan + low)
        more, more_masks, _ = _self_attention_probes(name, cls, g, (D, d_k, d_v), True, plan[:6])
    except ExerciseWrong as crash:
        # With d_model, d_k, d_v all different, swapped projections crash. With equal sizes
        # they run: name the swap if it then explains every probe.
        try:
            square, _, _ = _self_attention_probes(name, cls, g, (D, D, D), False, plan)
        except (ExerciseWrong, ExerciseNotAttempted):
            raise crash from None
        for hint in square[0].candidates:
            if hint in SWAPS.values() or hint.startswith("x is multiplied"):
                if all(p.candidates.get(hint) is not None
                       and _match(p.actual, p.candidates[hint], p.dtype) for p in square):
                    raise ExerciseWrong(f"{crash} Likely bug: {hint}") from None
        raise
    probes, masks = probes + more, masks + more_masks
    _verdict(name, probes, "q, k, v are the three projections of x; then scaled dot-product "
                           "attention with the mask.", ("out", "weights"))
    _require_exact_zeros(name, probes, masks, lambda a: a[1])
    _require_dtypes(name, probes, ("out", "weights"))
    learner, _ = modules[torch.float32]
    learner.zero_grad()
    x = torch.randn(B, T, D, generator=g, requires_grad=True)
    mask = _with_empty_row(mask_variants(g, (B,), T, T)[f"key padding {(B, 1, T)}"])
    out, _ = _pair(name, _run(name, "x that requires gradients, an empty sequence", learner, x, mask))
    _gradients(name, out, {"x": x}, NAN_FROM_EMPTY_ROW)
    for attr in ("W_q", "W_k", "W_v"):
        if getattr(learner, attr).weight.grad is None:
            raise ExerciseWrong(f"{name}: no gradient reaches {attr}: the output ignores it.")
    _passed(name, f"matches the reference on {len(probes)} inputs: x with 2 to 4 axes, every "
                  "mask shape, d_model ≠ d_k ≠ d_v, with and without biases, "
                  "float32/float16/bfloat16; gradients reach x and W_q, W_k, W_v.")
