"""Checkers for chapter 13 (``scratchformer.decoding``): one cached self-attention step
(exercise 13.1) and GNMT's length penalty (exercise 13.2)."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from einops import rearrange

from scratchformer.checks._common import ExerciseWrong, _call, _close, _generator, _passed
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import (
    LOW_PRECISION,
    agreeing_bug,
    distinct_ints,
    require_dtype,
    require_gradients,
    require_unchanged,
    snapshot,
)

__all__ = ["cached_self_attention", "length_penalty"]


# --------------------------------------------------------------------------------------------
# Exercise 13.1: cached_self_attention(attn, x, past_k, past_v, position, keep) -> (out, k, v)
# --------------------------------------------------------------------------------------------

NOT_UPDATED = (
    "the cache is not updated: the keys and values you return are the t cached ones, without "
    "the new position's. The next step needs all t + 1: append the new key and value along "
    "the time axis (torch.cat([past_k, k], dim=2)) and return the grown tensors."
)
NEW_ONLY = (
    "the cache is not updated: the keys and values you return hold the new position only, so "
    "the next step forgets every earlier token. Return the cached keys and values with the "
    "new ones appended along the time axis, (B, H, t + 1, Dh)."
)
PAST_IGNORED = (
    "the new query attends to its own key only: the cached keys and values are not used. It "
    "must attend to all t + 1 positions: the cached ones and the new one."
)
NOT_OFFSET = (
    "positions not offset: the new query and key are rotated as if they were at position 0. "
    "The new token is at position `position` (= t): rotate with "
    "attn.rotary.rotate(x, position), which takes the offset."
)
ROTATED_TWICE = (
    "the cached keys are rotated a second time: they were rotated at their own positions when "
    "they were new. Rotate only the new query and key (at `position`), then append."
)
NEW_KEY_MISSING = (
    "the new key is not attended to: the query attends to the cached keys only. Append the "
    "new key and value first, then attend to all t + 1 (a token attends to itself under the "
    "causal mask)."
)
IS_CAUSAL = (
    "the query attends to the first key only. F.scaled_dot_product_attention(..., "
    "is_causal=True) aligns its causal mask to the top left: with one query and t + 1 keys the "
    "query sees key 0 alone. One new query may attend to every cached key: pass the keep mask "
    "(or none), not is_causal."
)
HEADS_MIXED = (
    "the heads are mixed up: head h must get features h·Dh … (h+1)·Dh − 1 of the query, key and "
    "value (split with rearrange(..., 'b t (h d) -> b h t d', h=H)), and the heads are merged "
    "back in the same layout."
)
KEEP_IGNORED = "the keep mask is ignored: a key with keep False must get no attention."
KEEP_INVERTED = (
    "the keep mask is inverted: True means the key may be attended to (the book's convention "
    "since chapter 02), so masked_fill must hide the keys where keep is False."
)
NO_SCALE = "the scores are not divided by sqrt(Dh) before the softmax."
NO_OUT_PROJ = "the output projection attn.out_proj is not applied after merging the heads."
QK_SWAPPED = (
    "the query and key blocks of in_proj are swapped: its output holds the query first, then "
    "the key, then the value (rows of in_proj.weight: W_Q, W_K, W_V)."
)
NO_BIAS = (
    "the in_proj bias is missing: project with attn.in_proj(x) (or F.linear with the weight "
    "and the bias), not with the weight alone."
)
RETURN_ORDER = "the keys and values are swapped in the return value: return (out, k, v)."
SIZES_FIXED = (
    "right for some sizes and wrong for others. Does your code assume a batch size, head "
    "count, length or position? Take every size from the inputs and attn."
)
CACHED_GENERIC = (
    "Compute it step by step and compare with attn's full forward: the last row of "
    "attn(xs, xs, xs, mask) over all t + 1 tokens with the causal mask."
)


def _decoding():
    import importlib

    return importlib.import_module("scratchformer.decoding")


def _split(x, H, layout="b t (h d) -> b h t d"):
    return rearrange(x, layout, h=H)


def _attend(q, k, v, mask, scale=True):
    """Explicit attention in float32; a query with no visible key gets 0."""
    scores = q.float() @ k.float().transpose(-2, -1)
    if scale:
        scores = scores / q.size(-1) ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v.float()


def _variant(attn, x, past_k, past_v, position, keep, bug=None):
    """(out, k, v) of the step, computed in float32, with one named bug (None: correct)."""
    H, D = attn.n_heads, attn.d_model
    W, b = attn.in_proj.weight.float(), attn.in_proj.bias
    b = None if b is None or bug == NO_BIAS else b.float()
    qkv = F.linear(x.float(), W, b)
    layout = "b t (d h) -> b h t d" if bug == HEADS_MIXED else "b t (h d) -> b h t d"
    q, k, v = (_split(part, H, layout) for part in qkv.split(D, dim=-1))
    if bug == QK_SWAPPED:
        q, k = k, q
    if attn.rotary is not None:
        at = 0 if bug == NOT_OFFSET else position
        q, k = attn.rotary.rotate(q, at), attn.rotary.rotate(k, at)
    pk, pv = past_k.float(), past_v.float()
    if bug == ROTATED_TWICE and attn.rotary is not None:
        pk = attn.rotary.rotate(pk)
    k_all, v_all = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    mask = None if keep is None else keep[:, None, None, :]            # (B, 1, 1, t+1)
    if bug == KEEP_IGNORED:
        mask = None
    elif bug == KEEP_INVERTED and keep is not None:
        mask = ~mask
    keys, values = k_all, v_all
    if bug == PAST_IGNORED:
        keys, values = k, v
        mask = None if mask is None else mask[..., -1:]
    elif bug == NEW_KEY_MISSING:
        keys, values = pk, pv
        mask = None if mask is None else mask[..., :-1]
    elif bug == IS_CAUSAL:
        keys, values = k_all[:, :, :1], v_all[:, :, :1]
        mask = None if mask is None else mask[..., :1]
    heads = _attend(q, keys, values, mask, scale=bug != NO_SCALE)
    merged = rearrange(heads, "b h t d -> b t (d h)" if bug == HEADS_MIXED else
                       "b h t d -> b t (h d)")
    if bug == NO_OUT_PROJ:
        out = merged
    else:
        ob = attn.out_proj.bias
        out = F.linear(merged, attn.out_proj.weight.float(), None if ob is None else ob.float())
    return out, k_all, v_all


_CACHED_BUGS = (PAST_IGNORED, NOT_OFFSET, ROTATED_TWICE, NEW_KEY_MISSING, IS_CAUSAL, HEADS_MIXED,
                KEEP_IGNORED, KEEP_INVERTED, NO_SCALE, NO_OUT_PROJ, QK_SWAPPED, NO_BIAS)


def _attention_module(g, H, Dh, rotary, dtype=torch.float32):
    from scratchformer.multihead import MultiHeadAttention
    from scratchformer.positional import RotaryEmbedding

    attn = MultiHeadAttention(H * Dh, H)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (H * Dh) ** -0.5)
        attn.in_proj.bias.mul_(4.0)                        # biases big enough to matter
    if rotary:
        attn.rotary = RotaryEmbedding(Dh)
    return attn.eval().to(dtype)


def _keep_mask(g, B, n):
    """(B, n) bool with at least one True per row and some False (n > 1)."""
    keep = torch.rand(B, n, generator=g) < 0.6
    keep[torch.arange(B), torch.randint(0, n, (B,), generator=g)] = True
    if n > 1:
        keep[0, torch.randint(0, n, (1,), generator=g)] = False
        keep[0, torch.randint(0, n, (1,), generator=g)] = True
    return keep


def _probe(g, B, H, Dh, t, rotary, with_keep, dtype=torch.float32):
    """A step's inputs and the full forward's answer (the last row under the causal mask)."""
    from scratchformer.causal import causal_padding_mask

    attn = _attention_module(g, H, Dh, rotary)
    xs = torch.randn(B, t + 1, H * Dh, generator=g)
    keep = _keep_mask(g, B, t + 1) if with_keep else None
    with torch.no_grad():
        full_keep = keep if keep is not None else torch.ones(B, t + 1, dtype=torch.bool)
        expected = attn(xs, xs, xs, mask=causal_padding_mask(full_keep))[0][:, -1:]
        D = H * Dh
        _, W_k, W_v = attn.in_proj.weight.chunk(3)
        _, b_k, b_v = attn.in_proj.bias.chunk(3)
        k_all = _split(F.linear(xs, W_k, b_k), H)
        v_all = _split(F.linear(xs, W_v, b_v), H)
        if rotary:
            k_all = attn.rotary.rotate(k_all)                   # positions 0 .. t
    learner_attn = attn.to(dtype)
    inputs = dict(attn=learner_attn, x=xs[:, -1:].to(dtype), past_k=k_all[:, :, :t].to(dtype),
                  past_v=v_all[:, :, :t].to(dtype), position=t, keep=keep)
    assert D == learner_attn.d_model
    return inputs, (expected, k_all, v_all)


def _as_triple(name, out):
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise ExerciseWrong(f"{name}: return (out, k, v), a tuple of three tensors; got "
                            f"{type(out).__name__}"
                            f"{' of length ' + str(len(out)) if hasattr(out, '__len__') else ''}.")
    for what, x in zip(("out", "k", "v"), out):
        if not isinstance(x, torch.Tensor):
            raise ExerciseWrong(f"{name}: {what} should be a torch.Tensor, got "
                                f"{type(x).__name__}.")
    return tuple(out)


def _same_triple(a, b, atol=1e-4, rtol=1e-3) -> bool:
    return all(_close(x, y, atol, rtol) for x, y in zip(a, b))


@exercise("13.1", reference="scratchformer.decoding")
def cached_self_attention(fn) -> None:
    """Check ``cached_self_attention(attn, x, past_k, past_v, position, keep) -> (out, k, v)``
    against the last row of ``attn``'s full causal forward, in configurations where the
    batch size, head count, head size and length all differ; rotary or not; with keep masks
    or None; an empty cache (t = 0); float16 and bfloat16; inputs unchanged; gradients."""
    __tracebackhide__ = True
    name = "cached_self_attention"
    g = _generator()
    configs = []
    for rotary, with_keep in ((True, True), (False, False), (True, False), (False, True),
                              (True, True)):
        B, H, half, t = distinct_ints(g, 4, 2, 7)
        configs.append((B, H, 2 * half, t, rotary, with_keep))
    configs.append((3, 2, 4, 0, True, True))             # an empty cache: t = 0
    probes, failures = [], []
    for B, H, Dh, t, rotary, with_keep in configs:
        inputs, expected = _probe(g, B, H, Dh, t, rotary, with_keep)
        labels = ["x", "past_k", "past_v", "keep"]
        tensors = [inputs[k] for k in labels]
        before = snapshot(*tensors)
        params = snapshot(*inputs["attn"].parameters())
        out = _call(f"{name}(attn, x, past_k, past_v, position={t}, keep)", fn,
                    inputs["attn"], inputs["x"], inputs["past_k"], inputs["past_v"], t,
                    inputs["keep"])
        require_unchanged(name, labels, before, tensors)
        require_unchanged(name, ["attn's parameters"] * len(params), params,
                          list(inputs["attn"].parameters()))
        out = _as_triple(name, out)
        where = (f"for B={B}, H={H}, Dh={Dh}, t={t} ({'rotary' if rotary else 'no rotary'}, "
                 f"{'a keep mask' if with_keep else 'keep=None'})")
        if out[0].shape != (B, 1, H * Dh):
            raise ExerciseWrong(f"{name}: out has shape {tuple(out[0].shape)} {where}; expected "
                                f"(B, 1, D) = {(B, 1, H * Dh)}.")
        for what, x in zip(("k", "v"), out[1:]):
            got = tuple(x.shape)
            if got == (B, H, t, Dh) and t + 1 != t:
                raise ExerciseWrong(f"{name}: {what} has shape {got} {where}. Likely bug: "
                                    f"{NOT_UPDATED}")
            if got == (B, H, 1, Dh) and t > 0:
                raise ExerciseWrong(f"{name}: {what} has shape {got} {where}. Likely bug: "
                                    f"{NEW_ONLY}")
            if got != (B, H, t + 1, Dh):
                raise ExerciseWrong(f"{name}: {what} has shape {got} {where}; expected "
                                    f"(B, H, t + 1, Dh) = {(B, H, t + 1, Dh)}.")
        variants = {bug: _variant(**inputs, bug=bug) for bug in _CACHED_BUGS}
        variants[RETURN_ORDER] = (expected[0], expected[2], expected[1])
        probes.append((out, variants))
        if not _same_triple(out, expected):
            failures.append((where, out, expected))
    if failures:
        hint = agreeing_bug(probes, same=_same_triple)
        where, out, expected = failures[0]
        error = max((a.float() - b.float()).abs().max().item() for a, b in zip(out, expected))
        if hint is not None:
            raise ExerciseWrong(f"{name}: wrong {where} (and {len(failures) - 1} more "
                                f"configuration(s)). Likely bug: {hint}")
        if len(failures) < len(probes):
            raise ExerciseWrong(f"{name}: wrong {where} (largest difference {error:.3g}), right "
                                f"in {len(probes) - len(failures)} other configuration(s). "
                                f"{SIZES_FIXED}")
        parts = [what for what, a, b in zip(("out", "k", "v"), out, expected)
                 if not _close(a, b, 1e-4, 1e-3)]
        raise ExerciseWrong(f"{name}: {' and '.join(parts)} wrong {where} (largest difference "
                            f"{error:.3g}). {CACHED_GENERIC}")
    for dtype in LOW_PRECISION:                            # the dtype is kept; values close
        B, H, half, t = distinct_ints(g, 4, 2, 7)
        inputs, expected = _probe(g, B, H, 2 * half, t, dtype == torch.float16, True, dtype)
        out = _as_triple(name, _call(f"{name} with {dtype} inputs", fn, inputs["attn"],
                                     inputs["x"], inputs["past_k"], inputs["past_v"], t,
                                     inputs["keep"]))
        for what, x in zip(("out", "k", "v"), out):
            require_dtype(name, what, x, dtype)
        if not _same_triple(out, expected, atol=0.1, rtol=0.05):
            raise ExerciseWrong(f"{name}: with {dtype} inputs the result differs from the "
                                "float32 answer by more than rounding. Likely bug: a mask "
                                "filled with a constant that overflows (-1e9 is -inf in "
                                "float16) or a computation in the wrong dtype.")
    B, H, half, t = distinct_ints(g, 4, 2, 7)                # autograd reaches every input
    inputs, _ = _probe(g, B, H, 2 * half, t, True, False)
    grads = {k: inputs[k].clone().requires_grad_(True) for k in ("x", "past_k", "past_v")}
    out = _as_triple(name, _call(name, fn, inputs["attn"], grads["x"], grads["past_k"],
                                 grads["past_v"], t, None))
    require_gradients(name, out[0], grads)
    _passed(name, f"the last row of the full causal forward in {len(probes)} configurations "
                  "(rotary or not, keep masks, an empty cache), float16 and bfloat16; keys "
                  "and values grown by one; inputs unchanged; gradients flow.")


# --------------------------------------------------------------------------------------------
# Exercise 13.2: length_penalty(length, alpha)
# --------------------------------------------------------------------------------------------

FAIRSEQ = (
    "this is fairseq's normalisation |y|**alpha, not GNMT's. GNMT's (Wu et al., 2016, eq. 14) "
    "adds 5 to the length and divides by 5 + 1 before raising to alpha."
)
NO_PENALTY = "the penalty is always 1: the length is not used (or alpha is ignored)."
NO_SIX = (
    "the division by (5 + 1)**alpha is missing: lp must be 1 for a one-token output, "
    "((5 + |y|) / 6)**alpha."
)
INVERSE = "the penalty is inverted: it must grow with the length, (5 + |y|) / 6 raised to alpha."
INT_DIV = (
    "integer division: (5 + |y|) // 6 rounds down (and is 0 or 1 for short outputs). Use / so "
    "that the ratio is a float."
)
PRECEDENCE = (
    "operator precedence: (5 + |y|) / 6 ** alpha divides by 6**alpha but never raises "
    "5 + |y| to alpha. Put the ratio in parentheses before ** alpha."
)
TIMES_ALPHA = "alpha multiplies the ratio instead of being its exponent."
LP_DTYPE = (
    "for a tensor of integer lengths the result must be a float32 tensor, and for floating "
    "lengths a tensor of their dtype. Divide with / (which gives float32 for integer tensors) "
    "and do not convert to float64 or back to integers."
)


def _lp_variants(length, alpha) -> dict:
    L = length.double() if isinstance(length, torch.Tensor) else float(length)
    one = L * 0 + 1
    return {
        FAIRSEQ: L ** alpha,
        NO_PENALTY: one,
        NO_SIX: (5 + L) ** alpha,
        INVERSE: (6 / (5 + L)) ** alpha,
        INT_DIV: ((5 + L) // 6) ** alpha,
        PRECEDENCE: (5 + L) / 6 ** alpha,
        TIMES_ALPHA: (5 + L) / 6 * alpha,
    }


def _lp_expected(length, alpha):
    L = length.double() if isinstance(length, torch.Tensor) else float(length)
    return ((5 + L) / 6) ** alpha


def _lp_same(a, b, tol=1e-4) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a = a if isinstance(a, torch.Tensor) else torch.tensor(float(a))
        b = b if isinstance(b, torch.Tensor) else torch.tensor(float(b))
        return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=tol, atol=tol)
    try:
        return abs(float(a) - float(b)) <= tol * (1 + abs(float(b)))
    except (TypeError, ValueError):
        return False


def _lp_value(name, what, out, length):
    """The learner's result as a float or a tensor, after the type checks."""
    if isinstance(length, torch.Tensor):
        if not isinstance(out, torch.Tensor):
            raise ExerciseWrong(f"{name}: for a tensor of lengths {what} should be a tensor of "
                                f"the same shape, got {type(out).__name__}.")
        if out.shape != length.shape:
            raise ExerciseWrong(f"{name}: for lengths of shape {tuple(length.shape)} {what} has "
                                f"shape {tuple(out.shape)}; it must have the lengths' shape.")
        expected_dtype = length.dtype if length.is_floating_point() else torch.float32
        if out.dtype != expected_dtype:
            raise ExerciseWrong(f"{name}: for {length.dtype} lengths {what} has dtype "
                                f"{out.dtype}, expected {expected_dtype}. Likely bug: {LP_DTYPE}")
        return out
    if isinstance(out, torch.Tensor) and out.numel() == 1 and out.is_floating_point():
        return float(out)
    if isinstance(out, numbers.Real) and not isinstance(out, numbers.Integral):
        return float(out)
    raise ExerciseWrong(f"{name}: for an int length {what} should be a float, got "
                        f"{type(out).__name__} {out!r}.")


@exercise("13.2", reference="scratchformer.decoding")
def length_penalty(fn) -> None:
    """Check ``length_penalty(length, alpha)``: GNMT's ((5 + |y|) / 6) ** alpha for int lengths
    and for tensors of lengths (long, int32, float64, float16, bfloat16; 0-d to 2-D), several
    alphas including 0; inputs unchanged."""
    __tracebackhide__ = True
    name = "length_penalty"
    g = _generator()
    alphas = [round(0.3 + 1.2 * float(torch.rand(1, generator=g)), 3) for _ in range(3)]
    lengths = distinct_ints(g, 3, 2, 40)
    cases = [(1, alphas[0]), (lengths[0], alphas[0]), (lengths[1], alphas[1]),
             (lengths[2], 0.0), (lengths[2], alphas[2]),
             (torch.randint(1, 60, (3, 4), generator=g), alphas[1]),
             (torch.randint(1, 60, (5,), generator=g).to(torch.int32), alphas[2]),
             (torch.tensor(lengths[1]), alphas[0]),
             (torch.randint(1, 60, (4,), generator=g).double(), alphas[0])]
    probes, wrong = [], []
    for length, alpha in cases:
        before = snapshot(length)
        what = f"length_penalty({length if not isinstance(length, torch.Tensor) else 'tensor'}, {alpha})"
        out = _call(what, fn, length, alpha)
        require_unchanged(name, ["length"], before, [length])
        value = _lp_value(name, "the result", out, length)
        probes.append((value, _lp_variants(length, alpha)))
        if not _lp_same(value, _lp_expected(length, alpha)):
            wrong.append((length, alpha, value))
    if wrong:
        length, alpha, value = wrong[0]
        hint = agreeing_bug(probes, same=_lp_same)
        shown = (f"{length}" if not isinstance(length, torch.Tensor) else
                 f"lengths {length.flatten()[:4].tolist()}")
        expected = _lp_expected(length, alpha)
        got = value if not isinstance(value, torch.Tensor) else value.flatten()[:4].tolist()
        exp = expected if not isinstance(expected, torch.Tensor) else [
            round(v, 4) for v in expected.flatten()[:4].tolist()]
        text = f"{name}: for {shown} and alpha {alpha} you return {got}, expected {exp}."
        if hint is not None:
            raise ExerciseWrong(f"{text} Likely bug: {hint}")
        raise ExerciseWrong(f"{text} Compare your formula with GNMT's eq. 14 term by term.")
    for dtype in LOW_PRECISION:
        length = torch.randint(1, 60, (6,), generator=g).to(dtype)
        out = _call(f"length_penalty({dtype} tensor, 0.6)", fn, length, 0.6)
        value = _lp_value(name, "the result", out, length)
        require_dtype(name, "the result", value, dtype)
        if not _lp_same(value, _lp_expected(length, 0.6), tol=2e-2):
            raise ExerciseWrong(f"{name}: with {dtype} lengths the result is wrong by more than "
                                "rounding.")
    _passed(name, f"GNMT's penalty for {len(cases)} int and tensor inputs (alpha 0 included), "
                  "float16 and bfloat16; the lengths unchanged.")
