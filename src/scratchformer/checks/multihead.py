"""Checkers for chapter 03 (``scratchformer.multihead``): split/merge heads, the forward pass of
multi-head attention, and its parameter count."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

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
    _require_finite,
    _require_tensor,
)

__all__ = ["split_and_merge_heads", "multi_head_attention", "mha_parameter_count"]


# --------------------------------------------------------------------------------------------
# Exercise 3.1: split_heads / merge_heads
# --------------------------------------------------------------------------------------------

SPLIT_RESHAPE_FIRST = (
    "reshaped straight to (B, H, T, Dh), e.g. x.view(B, H, T, Dh), without moving the head axis. "
    "That cuts the flat memory of (B, T, D) into pieces that mix the features of different tokens. "
    "Reshape to (B, T, H, Dh) first, then swap the axes: x.view(B, T, H, Dh).transpose(1, 2), or "
    "rearrange(x, 'b t (h d) -> b h t d', h=n_heads)."
)
SPLIT_INTERLEAVED = (
    "heads are interleaved: head h got features h, h + H, h + 2H, ... ('b t (d h)'). Each head owns "
    "a contiguous block of Dh features, h*Dh ... (h+1)*Dh - 1, as in nn.MultiheadAttention: "
    "rearrange(x, 'b t (h d) -> b h t d', h=n_heads)."
)
MERGE_NO_TRANSPOSE = (
    "merged without transposing back: x.reshape(B, T, D) straight from (B, H, T, Dh) mixes the "
    "heads of different tokens. Move the head axis back next to the features first: "
    "x.transpose(1, 2).reshape(B, T, H * Dh), or rearrange(x, 'b h t d -> b t (h d)')."
)
MERGE_INTERLEAVED = (
    "heads are interleaved in the merged features ('b t (d h)'). Head h must come back as the "
    "contiguous block h*Dh ... (h+1)*Dh - 1: rearrange(x, 'b h t d -> b t (h d)')."
)
VIEW_AFTER_TRANSPOSE = (
    "Likely bug: .view() after .transpose(). A transposed tensor is not contiguous in memory, so "
    "view cannot flatten it. Use .reshape(...), .contiguous().view(...), or "
    "rearrange(x, 'b h t d -> b t (h d)')."
)


def _call_reshape(name: str, fn: Callable, *args):
    """Like ``_call``, with a targeted hint for the 'view after transpose' error."""
    __tracebackhide__ = True
    try:
        return _call(name, fn, *args)
    except ExerciseWrong as error:
        if "view size is not compatible" in str(error):
            raise ExerciseWrong(f"{name}: your code raised RuntimeError from .view(). {VIEW_AFTER_TRANSPOSE}") from error
        raise


def split_and_merge_heads(split_fn: Callable, merge_fn: Callable) -> None:
    """Check ``split_fn(x (B, T, D), n_heads) -> (B, H, T, Dh)`` and ``merge_fn((B, H, T, Dh)) -> (B, T, D)``."""
    __tracebackhide__ = True
    g = _generator()
    for B, T, H, Dh in [(2, 5, 3, 4), (1, 3, 2, 6), (2, 4, 1, 5)]:
        D = H * Dh
        x = _randn(g, B, T, D)
        name = "split_heads"
        actual = _call_reshape(name, split_fn, x, H)
        if isinstance(actual, torch.Tensor) and tuple(actual.shape) == (B, T, H, Dh) and H != T:
            raise ExerciseWrong(
                f"{name}: the result has shape (B, T, H, Dh) = {tuple(actual.shape)}. Likely bug: the "
                "head axis was not moved in front of the time axis. Finish with .transpose(1, 2), or use "
                "rearrange(x, 'b t (h d) -> b h t d', h=n_heads)."
            )
        _require_tensor(name, f"the result for x {tuple(x.shape)} and n_heads={H}", actual, (B, H, T, Dh))
        _diagnose(
            name, "the result", actual, x.reshape(B, T, H, Dh).transpose(1, 2),
            {SPLIT_RESHAPE_FIRST: x.reshape(B, H, T, Dh),
             SPLIT_INTERLEAVED: rearrange(x, "b t (d h) -> b h t d", h=H)},
            "Head h must hold features h*Dh ... (h+1)*Dh - 1 of every token: "
            "rearrange(x, 'b t (h d) -> b h t d', h=n_heads).",
        )

        y = _randn(g, B, H, T, Dh)
        name = "merge_heads"
        actual = _call_reshape(name, merge_fn, y)
        _require_tensor(name, f"the result for x {tuple(y.shape)}", actual, (B, T, D))
        _diagnose(
            name, "the result", actual, y.transpose(1, 2).reshape(B, T, D),
            {MERGE_NO_TRANSPOSE: y.reshape(B, T, D),
             MERGE_INTERLEAVED: rearrange(y, "b h t d -> b t (d h)")},
            "merge_heads must undo split_heads: rearrange(x, 'b h t d -> b t (h d)').",
        )
        round_trip = _call_reshape("merge_heads(split_heads(x))", merge_fn, _call("split_heads", split_fn, x, H))
        if not _close(round_trip, x, atol=0, rtol=0):
            raise ExerciseWrong("merge_heads(split_heads(x, n_heads)) must give x back exactly.")
    _passed("split_heads / merge_heads", "head h holds features h·Dh … (h+1)·Dh − 1; merge undoes split.")


# --------------------------------------------------------------------------------------------
# Exercise 3.2: MultiHeadAttention.forward
# --------------------------------------------------------------------------------------------

NO_OUTPUT_PROJECTION = (
    "the output projection is missing. After merging the heads, apply W_O: out = "
    "self.out_proj(merge_heads(out)). It is what mixes the heads' results."
)
SCALE_BY_D_MODEL = (
    "scores scaled by 1/sqrt(d_model) instead of 1/sqrt(head_dim). Each head's scores are dot "
    "products of head_dim = d_model / n_heads numbers, so the scale is 1/sqrt(head_dim). Split the "
    "heads first, then call scaled_dot_product_attention (or self.attend), which scales by the last axis."
)
NO_SCALE = "the 1/sqrt(head_dim) scaling is missing."
MERGE_BUG = (
    "heads merged without moving the head axis back: (B, H, T, Dh) -> (B, T, D) needs "
    "merge_heads(out) (rearrange 'b h t d -> b t (h d)'), not out.reshape(B, T, D)."
)
MASK_POLARITY = (
    "Likely bug: mask polarity flipped. In this book True means 'may attend' (the "
    "F.scaled_dot_product_attention convention): pass the mask on as it is, without ~mask."
)
MASK_NOT_BROADCAST = (
    "Likely bug: the mask is not broadcast over the heads. A 3-D mask (B, T, S) or (B, 1, S) has no "
    "head axis; broadcasting aligns shapes from the right, so its batch axis lands on the head axis of "
    "the (B, H, T, S) scores. Give it a head axis first: rearrange(mask, 'b t s -> b 1 t s') "
    "(or mask[:, None]) when mask.dim() == 3."
)


def _reference_parts(ref, query, key, value, mask4=None, *, scale=None, flip=False):
    """Per-head weights and head outputs computed from ``ref``'s parameters (optionally buggy)."""
    D, H = ref.d_model, ref.n_heads
    W = ref.in_proj.weight
    b = ref.in_proj.bias if ref.in_proj.bias is not None else torch.zeros(3 * D)
    q = F.linear(query, W[:D], b[:D])
    k = F.linear(key, W[D:2 * D], b[D:2 * D])
    v = F.linear(value, W[2 * D:], b[2 * D:])
    q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=H) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) * (1 / math.sqrt(D // H) if scale is None else scale)
    if mask4 is not None:
        keep = ~mask4 if flip else mask4
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if mask4 is not None:
        weights = weights.masked_fill(~keep, 0.0)
    return weights, weights @ v


def _reference_out(ref, heads, merge_right=True, project=True):
    B, H, T, Dh = heads.shape
    concat = rearrange(heads, "b h t d -> b t (h d)") if merge_right else heads.reshape(B, T, H * Dh)
    return ref.out_proj(concat) if project else concat


def _forward(name, module, query, key, value, mask=None, need_weights=True, what=""):
    """Call the learner's module and check the result's structure and shapes."""
    __tracebackhide__ = True
    result = _call(name, module, query, key, value, mask=mask, need_weights=need_weights)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ExerciseWrong(f"{name}: return a tuple (out, weights), got {type(result).__name__}.")
    out, weights = result
    B, T, S, H = query.size(0), query.size(1), key.size(1), module.n_heads
    _require_tensor(name, f"out{what}", out, (B, T, query.size(-1)))
    if not need_weights:
        if weights is not None:
            raise ExerciseWrong(
                f"{name}: with need_weights=False the weights must be None (the fused path computes "
                "none). Pass need_weights on to self.attend and return what it gives."
            )
        return out, None
    if isinstance(weights, torch.Tensor) and tuple(weights.shape) == (B, T, S):
        raise ExerciseWrong(
            f"{name}: weights have shape (B, T, S) = {tuple(weights.shape)}. Return the per-head "
            "weights, shape (B, H, T, S), without averaging over the heads."
        )
    _require_tensor(name, f"weights{what}", weights, (B, H, T, S))
    return out, weights


def multi_head_attention(cls: type) -> None:
    """Check ``cls(d_model, n_heads)`` whose ``forward(query, key, value, mask=None, need_weights=False)``
    must return ``(out (B, T, D), weights (B, H, T, S) or None)`` like the chapter's reference."""
    __tracebackhide__ = True
    name = "MultiHeadAttention.forward"
    from scratchformer.multihead import MultiHeadAttention as Reference

    g = _generator()
    B, H, T, S, Dh = 2, 3, 4, 5, 4
    D = H * Dh
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    ref = Reference(D, H).eval()
    with torch.no_grad():  # random weights and biases, so that every missing piece shows
        for p in ref.parameters():
            p.copy_(0.4 * _randn(g, *p.shape))
    try:
        module = cls(D, H)
    except NotImplementedError:
        raise ExerciseNotAttempted(f"{name}: not attempted yet.") from None
    except Exception as error:
        raise ExerciseWrong(f"{name}: constructing {cls.__name__}({D}, {H}) raised {type(error).__name__}: {error}") from error
    try:
        module.load_state_dict(ref.state_dict())
    except Exception as error:
        raise ExerciseWrong(
            f"{name}: could not load the reference weights ({error}). Keep the chapter's parameters "
            "in_proj (nn.Linear(D, 3D)) and out_proj (nn.Linear(D, D))."
        ) from error
    module.eval()

    with torch.no_grad():
        # 1. self-attention, no mask
        x = _randn(g, B, T, D)
        out, weights = _forward(name, module, x, x, x)
        _require_finite(name, "the output", out)
        w_ref, heads_ref = _reference_parts(ref, x, x, x)
        _diagnose(
            name, "the weight tensor (self-attention)", weights, w_ref,
            {SCALE_BY_D_MODEL: _reference_parts(ref, x, x, x, scale=1 / math.sqrt(D))[0],
             NO_SCALE: _reference_parts(ref, x, x, x, scale=1.0)[0]},
            "weights[b, h] = softmax(Q_h K_hᵀ / sqrt(head_dim)) with Q, K projected by self.project "
            "and split into heads.",
        )
        _diagnose(
            name, "the output (self-attention)", out, _reference_out(ref, heads_ref),
            {NO_OUTPUT_PROJECTION: _reference_out(ref, heads_ref, project=False),
             MERGE_BUG: _reference_out(ref, heads_ref, merge_right=False)},
            "out = self.out_proj(merge_heads(attention output)).",
        )
        out_nw, _ = _forward(name, module, x, x, x, need_weights=False, what=" (need_weights=False)")
        _diagnose(name, "the output with need_weights=False", out_nw, out, {},
                  "need_weights must not change the output.")

        # 2. cross-attention, T != S, keys and values from one memory and from two tensors
        query, memory, other = _randn(g, B, T, D), _randn(g, B, S, D), _randn(g, B, S, D)
        for key, value, what in ((memory, memory, "key is value"), (memory, other, "key != value")):
            out, weights = _forward(name, module, query, key, value, what=f" (cross-attention, {what})")
            w_ref, heads_ref = _reference_parts(ref, query, key, value)
            _diagnose(name, f"the weight tensor (cross-attention, {what})", weights, w_ref,
                      {SCALE_BY_D_MODEL: _reference_parts(ref, query, key, value, scale=1 / math.sqrt(D))[0]},
                      "Queries come from query, keys from key, values from value.")
            _diagnose(name, f"the output (cross-attention, {what})", out, _reference_out(ref, heads_ref),
                      {NO_OUTPUT_PROJECTION: _reference_out(ref, heads_ref, project=False)},
                      "out = self.out_proj(merge_heads(attention output)).")

        # 3. a 4-D key-padding mask (B, 1, 1, S): polarity
        keep4 = _random_keep_mask(g, B, 1, 1, S)
        out, weights = _forward(name, module, query, memory, memory, mask=keep4, what=" (with a mask)")
        _require_finite(name, "the weights with a mask", weights)
        forbidden = weights.masked_select(~keep4.expand_as(weights))
        if forbidden.abs().max() > 1e-6:
            allowed = weights.masked_select(keep4.expand_as(weights))
            if _close(weights, _reference_parts(ref, query, memory, memory, keep4, flip=True)[0]) or \
                    forbidden.sum() > allowed.sum():
                raise ExerciseWrong(f"{name}: keys the mask forbids get the weight. {MASK_POLARITY}")
            raise ExerciseWrong(f"{name}: keys the mask forbids get weight up to {forbidden.abs().max().item():.3g}.")
        w_ref, heads_ref = _reference_parts(ref, query, memory, memory, keep4)
        _diagnose(name, "the weights with a (B, 1, 1, S) mask", weights, w_ref, {}, "Pass the mask to self.attend.")
        _diagnose(name, "the output with a (B, 1, 1, S) mask", out, _reference_out(ref, heads_ref), {}, "")

        # 4. the same mask as 3-D (B, 1, S): it needs a head axis; B != H raises, B == H is silently wrong
        for batch in (B, H):
            q3, m3 = _randn(g, batch, T, D), _randn(g, batch, S, D)
            keep3 = _random_keep_mask(g, batch, 1, S)
            try:
                out, weights = _forward(name, module, q3, m3, m3, mask=keep3, what=" (with a (B, 1, S) mask)")
            except ExerciseWrong as error:
                cause = error.__cause__ or error
                if "shape" in str(cause) or "broadcast" in str(cause):
                    raise ExerciseWrong(f"{name}: fails for a 3-D mask (B, 1, S) = {tuple(keep3.shape)}. "
                                        f"{MASK_NOT_BROADCAST} (Your code raised {type(cause).__name__}: "
                                        f"{cause})") from error
                raise
            w_ref, heads_ref = _reference_parts(ref, q3, m3, m3, keep3[:, None])
            if not _close(weights, w_ref):
                if weights.masked_select(~keep3[:, None].expand_as(weights)).abs().max() > 1e-6:
                    raise ExerciseWrong(
                        f"{name}: with a 3-D mask (B, 1, S) = {tuple(keep3.shape)} (here B = {batch}, "
                        f"n_heads = {H}) keys the mask forbids get weight. {MASK_NOT_BROADCAST}"
                    )
                _diagnose(name, "the weights with a (B, 1, S) mask", weights, w_ref, {}, MASK_NOT_BROADCAST)
            _diagnose(name, "the output with a (B, 1, S) mask", out, _reference_out(ref, heads_ref), {}, "")

        # 5. a 2-D (T, S) mask
        keep2 = torch.ones(T, S, dtype=torch.bool).tril()
        out, weights = _forward(name, module, query, memory, memory, mask=keep2, what=" (with a (T, S) mask)")
        w_ref, heads_ref = _reference_parts(ref, query, memory, memory, keep2)
        _diagnose(name, "the weights with a (T, S) mask", weights, w_ref, {}, "A (T, S) mask broadcasts as it is.")
        _diagnose(name, "the output with a (T, S) mask", out, _reference_out(ref, heads_ref), {}, "")

    # 6. a query with nothing to attend to, on both paths: finite, weights 0, out = out_proj.bias
    empty = keep4.expand(B, 1, T, S).clone()
    empty[1, 0, 2] = False
    for need_weights in (True, False):
        qg, mg = query.clone().requires_grad_(True), memory.clone().requires_grad_(True)
        out, weights = _forward(name, module, qg, mg, mg, mask=empty, need_weights=need_weights,
                                what=" (a query with nothing to attend to)")
        _require_finite(name, "the output for a query with nothing to attend to", out.detach(), NAN_FROM_EMPTY_ROW)
        if weights is not None and not torch.equal(weights[1, :, 2].detach(), torch.zeros(H, S)):
            raise ExerciseWrong(f"{name}: a query with nothing to attend to must get weights 0. {NAN_FROM_EMPTY_ROW}")
        if not _close(out[1, 2].detach(), ref.out_proj.bias.detach()):
            raise ExerciseWrong(
                f"{name}: a query with nothing to attend to must get attention output 0, so the module's "
                "output there is out_proj's bias."
            )
        out.sum().backward()
        for label, t in (("query", qg), ("memory", mg)):
            _require_finite(name, f"the gradient with respect to {label}", t.grad, NAN_FROM_EMPTY_ROW)
    _passed(name, "matches the reference on self- and cross-attention, with (T, S), (B, 1, S) and "
                  "(B, 1, 1, S) masks, on both paths; an empty row gives 0 attention and finite gradients.")


# --------------------------------------------------------------------------------------------
# Exercise 3.3: mha_parameter_count
# --------------------------------------------------------------------------------------------

def mha_parameter_count(fn: Callable) -> None:
    """Check ``fn(d_model, n_heads, bias=True) -> int`` against ``nn.MultiheadAttention``'s parameter count."""
    __tracebackhide__ = True
    name = "mha_parameter_count"
    for D, H, bias in [(512, 8, True), (512, 8, False), (12, 3, True), (64, 4, False), (30, 5, True)]:
        expected = sum(p.numel() for p in nn.MultiheadAttention(D, H, bias=bias).parameters())
        actual = _call(name, fn, D, H, bias=bias)
        if isinstance(actual, torch.Tensor) and actual.numel() == 1:
            actual = actual.item()
        if isinstance(actual, bool) or not isinstance(actual, numbers.Real) or actual != int(actual):
            raise ExerciseWrong(f"{name}: return a whole number (an int), got {actual!r}.")
        if actual == expected:
            continue
        b = D if bias else 0
        candidates = {
            3 * (D * D + b): "forgot the output projection W_O (a D×D weight, plus D biases when bias=True).",
            3 * D * D: "forgot the output projection W_O (a D×D weight, plus D biases when bias=True).",
            H * expected: "multiplied by the number of heads. Heads cut the same four D×D matrices into "
                          "slices of D/H columns; they add no parameters.",
            H * 3 * (D * D + b) + D * D + b: "multiplied the input projections by the number of heads. "
                                             "Each head's W_h^Q is D×(D/H), so H of them make one D×D matrix.",
        }
        if bias:
            candidates = {4 * D * D: "forgot the biases: with bias=True each of W_Q, W_K, W_V and W_O has a "
                                     "bias of D numbers, 4·D in all.", **candidates}
        else:
            candidates = {4 * D * D + 4 * D: "counted biases although bias=False.", **candidates}
        hint = candidates.get(int(actual))
        detail = f"for d_model={D}, n_heads={H}, bias={bias} you returned {int(actual):,}, expected {expected:,}."
        if hint:
            raise ExerciseWrong(f"{name}: {detail} Likely bug: {hint}")
        raise ExerciseWrong(
            f"{name}: {detail} Count W_Q, W_K, W_V and W_O (each D×D) and, with bias=True, their biases."
        )
    _passed(name, "equals nn.MultiheadAttention's parameter count, with and without biases, for several H.")
