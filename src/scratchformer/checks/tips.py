"""Checkers for chapter 15 (``scratchformer.tips``): the guided-attention weight matrix
(exercise 15.2) and the pointer-generator's final distribution (exercise 15.1)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

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

__all__ = ["guided_attention_weights", "final_distribution"]


# --------------------------------------------------------------------------------------------
# Exercise 15.2: guided_attention_weights(src_lengths, tgt_lengths, S, T, g) -> W (B, T, S)
# --------------------------------------------------------------------------------------------

LENGTHS_SWAPPED = (
    "the two lengths are swapped: the source position n is divided by the target length and "
    "the target position t by the source length. W[b, t, n] compares n / N (N: the source "
    "length of example b) with t / T (T: its target length)."
)
NOT_NORMALISED = (
    "the positions are not normalised by the lengths: (n - t)^2 instead of (n/N - t/T)^2, so "
    "a source and a target of different lengths have no diagonal to follow. Divide each "
    "position by its own sequence's length."
)
PADDED_LENGTHS = (
    "the positions are divided by the padded sizes S and T instead of each example's own "
    "lengths: a short sentence in a batch of long ones is then pushed towards the wrong "
    "diagonal. Use src_lengths[b] and tgt_lengths[b]."
)
NOT_MASKED = (
    "the padded positions are not zeroed: W must be 0 where n >= N or t >= T (N, T: the "
    "example's lengths), so that attention to padding, or from padded queries, costs nothing."
)
MASK_OFF_BY_ONE = (
    "the padding mask is off by one: the last real position (n = N - 1, or t = T - 1) is "
    "zeroed, or the first padded one kept. Positions n < N and t < T are real."
)
NO_ONE_MINUS = (
    "W is the Gaussian itself, exp(-(n/N - t/T)^2 / 2g^2), which is 1 on the diagonal: the "
    "penalty is 1 minus it, 0 on the diagonal and close to 1 far from it."
)
G_NOT_SQUARED = (
    "the width enters as 2g instead of 2g^2 (or g^2 without the 2): the denominator of the "
    "exponent is 2 g^2."
)
ONE_BASED = (
    "the positions are counted from 1 (n + 1, t + 1): counted from 0, the first target "
    "position and the first source position are both at 0, on the diagonal."
)
G_IGNORED = "the argument g is ignored (a fixed width, e.g. 0.2): use the g passed in."
TRANSPOSED = (
    "the axes are swapped: rows must be target positions t and columns source positions n, "
    "W (B, T, S), like cross-attention weights (B, H, T, S)."
)

_GUIDED_BUGS: dict[str, dict] = {
    LENGTHS_SWAPPED: dict(swap=True),
    NOT_NORMALISED: dict(normalise=False),
    PADDED_LENGTHS: dict(padded=True),
    NOT_MASKED: dict(mask=False),
    MASK_OFF_BY_ONE: dict(off_by_one=True),
    NO_ONE_MINUS: dict(one_minus=False),
    G_NOT_SQUARED: dict(g_power=1),
    ONE_BASED: dict(base=1),
    G_IGNORED: dict(fixed_g=0.2),
}


def _guided_variant(src_lengths, tgt_lengths, S, T, g, *, swap=False, normalise=True,
                    padded=False, mask=True, off_by_one=False, one_minus=True, g_power=2,
                    base=0, fixed_g=None) -> torch.Tensor:
    """The reference W in float64, with one switch per classic bug."""
    N = torch.as_tensor(src_lengths).double()[:, None, None]
    L = torch.as_tensor(tgt_lengths).double()[:, None, None]
    n = torch.arange(S).double()[None, None, :] + base
    t = torch.arange(T).double()[None, :, None] + base
    if padded:
        dn, dt = torch.full_like(N, S), torch.full_like(L, T)
    else:
        dn, dt = N, L
    if swap:
        dn, dt = dt, dn
    diff = (n / dn - t / dt) if normalise else (n - t)
    g = g if fixed_g is None else fixed_g
    gauss = torch.exp(-diff ** 2 / (2 * g ** g_power))
    W = 1 - gauss if one_minus else gauss
    if mask:
        n0, t0 = n - base, t - base
        keep = ((n0 < N - 1) & (t0 < L - 1)) if off_by_one else ((n0 < N) & (t0 < L))
        W = W * keep
    return W.float()


def _guided_probe(g: torch.Generator, as_list: bool):
    """Lengths with a full row, a short row, N != T per row; S != T; a drawn width."""
    B = int(torch.randint(3, 6, (1,), generator=g))
    S, T = distinct_ints(g, 2, 5, 12)
    src = torch.randint(2, S + 1, (B,), generator=g)
    tgt = torch.randint(2, T + 1, (B,), generator=g)
    src[0], tgt[0] = S, T                          # one row without padding
    src[1], tgt[1] = max(2, S // 2), T             # and rows with some
    for b in range(B):                             # a different length on each side
        if src[b] == tgt[b]:
            tgt[b] = tgt[b] - 1 if tgt[b] > 2 else tgt[b] + 1
    width = [0.1, 0.15, 0.3, 0.4][int(torch.randint(0, 4, (1,), generator=g))]
    if as_list:
        return src.tolist(), tgt.tolist(), S, T, width
    return src, tgt, S, T, width


def _as_tensor(name: str, out) -> torch.Tensor:
    __tracebackhide__ = True
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if not isinstance(out, torch.Tensor):
        raise ExerciseWrong(f"{name}: W should be a torch.Tensor, got {type(out).__name__}.")
    return out


@exercise("15.2", reference="scratchformer.tips")
def guided_attention_weights(fn: Callable) -> None:
    """Check ``fn(src_lengths (B,), tgt_lengths (B,), S, T, g) -> W (B, T, S)`` float32:
    batches mixing full and padded rows, S != T and N != T in every row, drawn widths g,
    lengths as tensors and as lists, inputs unchanged."""
    __tracebackhide__ = True
    name = "guided_attention_weights"
    g = _generator()
    generic = ("W[b, t, n] = 1 - exp(-(n/N_b - t/T_b)^2 / (2 g^2)) for n < N_b and t < T_b "
               "(positions counted from 0), 0 elsewhere.")
    probes, failing = [], []
    for k in range(4):
        src, tgt, S, T, width = _guided_probe(g, as_list=k % 2 == 1)
        given = snapshot(src, tgt)
        out = _as_tensor(name, _call(name, fn, given[0], given[1], S, T, width))
        require_unchanged(name, ("src_lengths", "tgt_lengths"), (src, tgt), given)
        B = len(src)
        if tuple(out.shape) == (B, S, T):
            raise ExerciseWrong(f"{name}: W has shape {tuple(out.shape)}. Likely bug: "
                                f"{TRANSPOSED}")
        if tuple(out.shape) != (B, T, S):
            raise ExerciseWrong(f"{name}: W has shape {tuple(out.shape)}, expected "
                                f"{(B, T, S)} = (B, T, S) for S={S}, T={T}.")
        if not out.is_floating_point():
            raise ExerciseWrong(f"{name}: W has dtype {out.dtype}; it must be float32.")
        require_dtype(name, "W", out, torch.float32)
        expected = _guided_variant(src, tgt, S, T, width)
        variants = {hint: _guided_variant(src, tgt, S, T, width, **switches)
                    for hint, switches in _GUIDED_BUGS.items()}
        probes.append((out, variants))
        if not _close(out, expected, atol=1e-5, rtol=1e-4):
            failing.append((B, S, T, width, src, tgt, out, expected))
    if failing:
        B, S, T, width, src, tgt, out, expected = failing[0]
        lengths = (f"src_lengths={torch.as_tensor(src).tolist()}, "
                   f"tgt_lengths={torch.as_tensor(tgt).tolist()}")
        bug = agreeing_bug(probes)
        where = f"W for S={S}, T={T}, g={width}, {lengths} is wrong"
        if bug is not None:
            raise ExerciseWrong(f"{name}: {where}. Likely bug: {bug}")
        i = int((out.float() - expected).abs().flatten().argmax())
        b, rest = divmod(i, T * S)
        t, n = divmod(rest, S)
        raise ExerciseWrong(f"{name}: {where}: at b={b}, t={t}, n={n} it is "
                            f"{out.flatten()[i].item():.5g}, expected "
                            f"{expected.flatten()[i].item():.5g}. {generic}")
    _passed(name, "4 batches with padded and full rows, source and target lengths that "
                  "differ in every row, drawn widths g, lengths as tensors and as lists.")


# --------------------------------------------------------------------------------------------
# Exercise 15.1: final_distribution(vocab_logits, copy_scores, p_gen, src, pad_id)
# --------------------------------------------------------------------------------------------

GATE_SWAPPED = (
    "p_gen and 1 - p_gen are swapped: p_gen is the probability of *generating*, so it "
    "weighs the vocabulary distribution; 1 - p_gen weighs the copy distribution."
)
PAD_MASS = (
    "the copy attention puts mass on padded source positions (it lands on the pad id): mask "
    "the scores where src == pad_id (fill -inf) before the softmax over the source."
)
PAD_ZERO = (
    "the padding id is hard-coded as 0: with pad_id != 0 the padded positions still get copy "
    "mass. Compare src with the pad_id argument."
)
MASK_AFTER_SOFTMAX = (
    "the padded positions are zeroed after the softmax, so the copy distribution no longer "
    "sums to 1: mask the scores (fill -inf) before the softmax."
)
SCATTER_NOT_ADD = (
    "a word that occurs twice in the source gets the attention of only one of its positions: "
    "scatter (or an assignment) overwrites; scatter_add / index_add_ adds the attention of "
    "every position holding the word."
)
COPY_SOFTMAX_AXIS = (
    "the copy softmax runs over the wrong axis: the attention of one output position is a "
    "distribution over the source positions, the last axis of copy_scores (B, T, S)."
)
NO_VOCAB_SOFTMAX = (
    "the vocabulary logits are mixed in without a softmax: p_vocab = softmax(vocab_logits) "
    "over the vocabulary axis."
)
NO_ONE_MINUS_GATE = (
    "the copy distribution is added with weight 1 instead of 1 - p_gen, so the result sums "
    "to 1 + p_gen."
)
_POINTER_BUGS: dict[str, dict] = {
    GATE_SWAPPED: dict(swap=True),
    PAD_MASS: dict(mask="none"),
    PAD_ZERO: dict(mask="zero"),
    MASK_AFTER_SOFTMAX: dict(mask="after"),
    SCATTER_NOT_ADD: dict(add=False),
    COPY_SOFTMAX_AXIS: dict(axis=1),
    NO_VOCAB_SOFTMAX: dict(vocab_softmax=False),
    NO_ONE_MINUS_GATE: dict(one_minus=False),
}
EXTENDED_MISSING = (
    "the result has only the V columns of the vocabulary: source words outside it (ids >= V "
    "in src) need columns too. The width is W = max(V, largest id in src + 1)."
)
NOT_A_DISTRIBUTION = (
    "the rows do not sum to 1: the result is a probability distribution over the extended "
    "vocabulary, p_gen P_vocab + (1 - p_gen) P_copy, each of which sums to 1."
)
UNSTABLE = (
    "numerical stability: exp() of scores around 1000 overflows. Use .softmax(-1) (it "
    "subtracts the largest score first) rather than exp(x) / exp(x).sum()."
)


def _pointer_variant(vocab_logits, copy_scores, p_gen, src, pad_id=0, *, swap=False,
                     mask="before", add=True, axis=-1, vocab_softmax=True, one_minus=True
                     ) -> torch.Tensor:
    """The reference distribution in float64, with one switch per classic bug."""
    x, s, p = vocab_logits.double(), copy_scores.double(), p_gen.double()
    B, T, V = x.shape
    W = max(V, int(src.max()) + 1)
    p_vocab = x.softmax(-1) if vocab_softmax else x
    p_vocab = torch.nn.functional.pad(p_vocab, (0, W - V))
    keep = (src != (0 if mask == "zero" else pad_id))[:, None, :]
    if mask in ("before", "zero"):
        attention = s.masked_fill(~keep, -math.inf).softmax(axis)
    elif mask == "after":
        attention = s.softmax(axis) * keep
    else:
        attention = s.softmax(axis)
    attention = torch.nan_to_num(attention)
    where = src[:, None, :].expand(-1, T, -1)
    zeros = torch.zeros(B, T, W, dtype=torch.float64)
    p_copy = zeros.scatter_add(-1, where, attention) if add else zeros.scatter(-1, where,
                                                                                attention)
    gen, cop = (1 - p, p) if swap else (p, (1 - p) if one_minus else torch.ones_like(p))
    return gen * p_vocab + cop * p_copy


def _pointer_probe(g: torch.Generator, pad_id: int = 0, dtype=torch.float32, offset=0.0):
    """B, T, S, V all different; src rows padded to different lengths (one full), a repeated
    word in every row, ids >= V (unknown words) and ids < V, never pad_id among the real ids;
    copy scores large at padded positions (so mass there is visible)."""
    B, T, S = distinct_ints(g, 3, 2, 7)
    S += 2
    V = int(torch.randint(9, 15, (1,), generator=g))
    n_ext = int(torch.randint(1, 4, (1,), generator=g))
    real = torch.randint(0, V + n_ext - 1, (B, S), generator=g)
    real = real + (real >= pad_id).long()                 # never pad_id
    real[:, 1] = real[:, 0]                               # a repeated word
    real[0, 2] = V + n_ext - 1 if V + n_ext - 1 != pad_id else V   # an unknown word
    lengths = torch.randint(3, S + 1, (B,), generator=g)
    lengths[0] = S
    lengths[-1] = 3
    src = torch.where(torch.arange(S) < lengths[:, None], real, torch.full_like(real, pad_id))
    vocab_logits = (2 * torch.randn(B, T, V, generator=g) + offset).to(dtype)
    scores = 2 * torch.randn(B, T, S, generator=g)
    scores = scores + 3 * (src == pad_id)[:, None, :]     # tempting padded positions
    copy_scores = (scores + offset).to(dtype)
    p_gen = torch.rand(B, T, 1, generator=g).mul(0.8).add(0.1).to(dtype)
    return vocab_logits, copy_scores, p_gen, src


def _pointer_call(name, fn, args, pad_id):
    __tracebackhide__ = True
    given = snapshot(*args)
    out = _call(name, fn, *given, pad_id=pad_id)
    require_unchanged(name, ("vocab_logits", "copy_scores", "p_gen", "src"), args, given)
    if not isinstance(out, torch.Tensor):
        raise ExerciseWrong(f"{name}: the result should be a torch.Tensor, got "
                            f"{type(out).__name__}.")
    return out


def _pointer_shape(name, out, args) -> None:
    __tracebackhide__ = True
    vocab_logits, _, _, src = args
    B, T, V = vocab_logits.shape
    W = max(V, int(src.max()) + 1)
    if tuple(out.shape) == (B, T, V) and W > V:
        raise ExerciseWrong(f"{name}: the result has shape {tuple(out.shape)}. Likely bug: "
                            f"{EXTENDED_MISSING}")
    if tuple(out.shape) != (B, T, W):
        raise ExerciseWrong(f"{name}: the result has shape {tuple(out.shape)}, expected "
                            f"{(B, T, W)} = (B, T, max(V, src.max() + 1)).")


@exercise("15.1", reference="scratchformer.tips")
def final_distribution(fn: Callable) -> None:
    """Check ``fn(vocab_logits (B, T, V), copy_scores (B, T, S), p_gen (B, T, 1), src (B, S),
    pad_id) -> (B, T, W)``: padded sources (pad_id 0 and not 0), repeated and unknown source
    words, sizes that all differ, scores around 1000, float16 and bfloat16 inputs (the output
    keeps the dtype), inputs unchanged, gradients to all three float inputs."""
    __tracebackhide__ = True
    name = "final_distribution"
    g = _generator()
    generic = ("p_gen * softmax(vocab_logits) (padded with zeros to W columns) + (1 - p_gen) * "
               "the copy attention (softmax of copy_scores over the non-pad source positions) "
               "added at the ids of the source words.")
    # 1. four float32 probes: pad_id 0 and not 0
    probes, failing = [], []
    for pad_id in (0, 0, 3, 5):
        args = _pointer_probe(g, pad_id)
        out = _pointer_call(name, fn, args, pad_id)
        _pointer_shape(name, out, args)
        require_dtype(name, "the result", out, torch.float32)
        expected = _pointer_variant(*args, pad_id)
        variants = {h: _pointer_variant(*args, pad_id, **s) for h, s in _POINTER_BUGS.items()}
        out = out.detach()
        probes.append((out, variants))
        if not _close(out, expected.float(), atol=1e-5, rtol=1e-4):
            failing.append((args, pad_id, out, expected))
    if failing:
        args, pad_id, out, expected = failing[0]
        B, T, V = args[0].shape
        where = (f"the distribution for B={B}, T={T}, S={args[1].shape[-1]}, V={V}, "
                 f"pad_id={pad_id} is wrong")
        bug = agreeing_bug(probes)
        if bug is not None:
            raise ExerciseWrong(f"{name}: {where}. Likely bug: {bug}")
        sums = out.double().sum(-1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            raise ExerciseWrong(f"{name}: {where}: {NOT_A_DISTRIBUTION}")
        raise ExerciseWrong(f"{name}: {where}. {generic}")

    # 2. numerical stability: logits and scores around 1000
    args = _pointer_probe(g, 0, offset=1000.0)
    out = _pointer_call(name, fn, args, 0)
    _pointer_shape(name, out, args)
    expected = _pointer_variant(*args, 0)
    if not (torch.isfinite(out).all() and _close(out.detach(), expected.float(), atol=1e-5)):
        raise ExerciseWrong(f"{name}: for logits and scores around 1000 the result is wrong "
                            f"or not finite. Likely bug: {UNSTABLE}")

    # 3. gradients reach vocab_logits, copy_scores and p_gen
    vocab_logits, copy_scores, p_gen, src = _pointer_probe(g, 0)
    inputs = {"vocab_logits": vocab_logits.requires_grad_(True),
              "copy_scores": copy_scores.requires_grad_(True), "p_gen": p_gen.requires_grad_(True)}
    out = _call(name, fn, vocab_logits, copy_scores, p_gen, src, pad_id=0)
    require_gradients(name, out, inputs)

    # 4. float16 and bfloat16: the output keeps the dtype and is close to float32's result
    for dtype in LOW_PRECISION:
        args = _pointer_probe(g, 0, dtype=dtype)
        try:
            out = _pointer_call(name, fn, args, 0)
        except ExerciseWrong as error:
            if "overflow" not in str(error):
                raise
            raise ExerciseWrong(f"{error} Likely bug: a fill value such as -1e9 does not fit "
                                f"in {dtype}; fill the masked scores with -inf (or "
                                "torch.finfo(scores.dtype).min).") from None
        _pointer_shape(name, out, args)
        require_dtype(name, "the result", out, dtype)
        expected = _pointer_variant(*args, 0).float()
        if not (torch.isfinite(out).all() and _close(out.detach(), expected, atol=2e-2,
                                                     rtol=2e-2)):
            raise ExerciseWrong(f"{name}: for {dtype} inputs the result is not finite or far "
                                "from the float32 computation. Likely bug: a -1e9 fill or "
                                "another constant outside the dtype's range (use -inf), or a "
                                "mixed-dtype operation.")
    _passed(name, "4 padded batches (pad_id 0 and not 0) with repeated and unknown source "
                  "words, scores around 1000, float16 and bfloat16, gradients to all inputs.")
