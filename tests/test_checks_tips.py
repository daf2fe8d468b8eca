"""The chapter 15 checkers bite: the references pass on fresh inputs, stubs are 'not attempted',
every known-buggy implementation fails with its targeted hint (a hint only when every probe
agrees), and correct implementations written differently pass."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checker_testing import fails_with
from scratchformer import checks, tips
from scratchformer.checks import tips as T


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


# ---- references pass, stubs are not attempted --------------------------------------------------

def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(4):  # fresh random inputs and configurations every call
        checks.guided_attention_weights(tips.guided_attention_weights)
        checks.final_distribution(tips.final_distribution)
    assert capsys.readouterr().out.count("✅") == 8


@pytest.mark.parametrize("checker", [checks.guided_attention_weights, checks.final_distribution],
                         ids=["guided_attention_weights", "final_distribution"])
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(stub)


def test_exercise_numbers():
    assert checks.REGISTRY["guided_attention_weights"] == ("15.2", "scratchformer.tips")
    assert checks.REGISTRY["final_distribution"] == ("15.1", "scratchformer.tips")


# ---- Exercise 15.2: guided_attention_weights ---------------------------------------------------

def _weights(src_lengths, tgt_lengths, S, T_, g=0.2, *, swap=False, normalise=True,
             padded=False, mask=True, off_by_one=False, one_minus=True, g2=True, base=0,
             fixed_g=None, transpose=False, dtype=torch.float32, crash=False):
    """A configurable, deliberately buggy W, written as a learner would (loops, not the
    checker's formula)."""
    if crash:
        raise IndexError("index 7 is out of bounds for dimension 0 with size 7")
    src_lengths = [int(x) for x in src_lengths]
    tgt_lengths = [int(x) for x in tgt_lengths]
    g = fixed_g if fixed_g is not None else g
    W = torch.zeros(len(src_lengths), T_, S, dtype=torch.float64)
    for b, (N, L) in enumerate(zip(src_lengths, tgt_lengths)):
        dn, dt = (S, T_) if padded else (N, L)
        if swap:
            dn, dt = dt, dn
        for t in range(T_):
            for n in range(S):
                real = (n < N - 1 and t < L - 1) if off_by_one else (n < N and t < L)
                if mask and not real:
                    continue
                x = ((n + base) / dn - (t + base) / dt) if normalise else (n - t)
                gauss = math.exp(-x * x / ((2 * g * g) if g2 else (2 * g)))
                W[b, t, n] = 1 - gauss if one_minus else gauss
    W = W.to(dtype)
    return W.transpose(1, 2) if transpose else W


def _guided(**bug):
    return lambda s, t, S, T_, g=0.2: _weights(s, t, S, T_, g, **bug)


@pytest.mark.parametrize("bug, hint", [
    (dict(swap=True), T.LENGTHS_SWAPPED),
    (dict(normalise=False), T.NOT_NORMALISED),
    (dict(padded=True), T.PADDED_LENGTHS),
    (dict(mask=False), T.NOT_MASKED),
    (dict(off_by_one=True), T.MASK_OFF_BY_ONE),
    (dict(one_minus=False), T.NO_ONE_MINUS),
    (dict(g2=False), T.G_NOT_SQUARED),
    (dict(base=1), T.ONE_BASED),
    (dict(fixed_g=0.2), T.G_IGNORED),
    (dict(transpose=True), T.TRANSPOSED),
], ids=["lengths swapped", "not normalised", "padded lengths", "not masked", "mask off by one",
        "no 1 - exp", "2g", "1-based", "g ignored", "transposed"])
def test_guided_mutants_fail_with_their_hint(bug, hint):
    fails_with(checks.guided_attention_weights, _guided(**bug), hint)


def test_guided_other_wrong_answers():
    fails_with(checks.guided_attention_weights, _guided(dtype=torch.float64), "float32")
    fails_with(checks.guided_attention_weights, _guided(crash=True), "IndexError")
    fails_with(checks.guided_attention_weights, lambda s, t, S, T_, g: [[0.0]],
               "torch.Tensor")
    # a wrong answer that matches no known bug: the generic message, no "Likely bug"
    msg = fails_with(checks.guided_attention_weights,
                     lambda s, t, S, T_, g: tips.guided_attention_weights(s, t, S, T_, g) * 0.9,
                     "expected")
    assert "Likely bug" not in msg


def test_guided_input_mutated_in_place():
    def mutating(src_lengths, tgt_lengths, S, T_, g=0.2):
        if isinstance(src_lengths, torch.Tensor):
            src_lengths.clamp_(max=S)
            src_lengths -= 0
            src_lengths[0] = 1
        return tips.guided_attention_weights(src_lengths, tgt_lengths, S, T_, g)
    fails_with(checks.guided_attention_weights, mutating, "in place")


def test_guided_correct_alternatives_pass(capsys):
    def with_loops(s, t, S, T_, g=0.2):
        return _weights(s, t, S, T_, g)

    def with_numpy(src_lengths, tgt_lengths, S, T_, g=0.2):
        N = np.asarray(src_lengths, dtype=np.float64)[:, None, None]
        L = np.asarray(tgt_lengths, dtype=np.float64)[:, None, None]
        n, t = np.arange(S)[None, None, :], np.arange(T_)[None, :, None]
        W = 1 - np.exp(-(n / N - t / L) ** 2 / (2 * g ** 2))
        return (W * ((n < N) & (t < L))).astype(np.float32)  # a numpy array is accepted

    def with_where(src_lengths, tgt_lengths, S, T_, g=0.2):
        N = torch.as_tensor(src_lengths).view(-1, 1, 1)
        L = torch.as_tensor(tgt_lengths).view(-1, 1, 1)
        n = torch.arange(S).view(1, 1, -1)
        t = torch.arange(T_).view(1, -1, 1)
        x = n.double() / N - t.double() / L
        W = -torch.expm1(-x.pow(2) / (2 * g * g))
        return torch.where((n < N) & (t < L), W, 0.0).float()

    for fn in (with_loops, with_numpy, with_where):
        checks.guided_attention_weights(fn)
    assert capsys.readouterr().out.count("✅") == 3


# ---- Exercise 15.1: final_distribution ---------------------------------------------------------

def _final(vocab_logits, copy_scores, p_gen, src, pad_id=0, *, swap=False, mask="before",
           add=True, axis=-1, vocab_softmax=True, one_minus=True, width="extended",
           naive_exp=False, fill=-math.inf, detach=False, inplace=False, float32=False):
    """A configurable, deliberately buggy final distribution, written as a learner would."""
    B, T_, V = vocab_logits.shape
    W = max(V, int(src.max()) + 1) if width == "extended" else V
    if float32:
        vocab_logits, copy_scores, p_gen = (x.float() for x in (vocab_logits, copy_scores,
                                                                 p_gen))
    if naive_exp:
        e = vocab_logits.exp()
        p_vocab = e / e.sum(-1, keepdim=True)
    else:
        p_vocab = vocab_logits.softmax(-1) if vocab_softmax else vocab_logits
    p_vocab = torch.cat([p_vocab, p_vocab.new_zeros(B, T_, W - V)], -1)
    pad = 0 if mask == "zero" else pad_id
    keep = (src != pad).unsqueeze(1)
    if inplace:
        copy_scores.masked_fill_(~keep, fill)
        scores = copy_scores
    else:
        scores = copy_scores.masked_fill(~keep, fill) if mask in ("before", "zero") \
            else copy_scores
    if naive_exp:
        e = scores.exp()
        attention = e / e.sum(axis, keepdim=True)
    else:
        attention = scores.softmax(axis)
    if mask == "after":
        attention = copy_scores.softmax(axis) * keep
    attention = torch.nan_to_num(attention)
    index = src.unsqueeze(1).expand(-1, T_, -1)
    if W == V:
        index = index.clamp(max=V - 1)
    p_copy = torch.zeros_like(p_vocab)
    p_copy = p_copy.scatter_add(-1, index, attention) if add else p_copy.scatter(-1, index,
                                                                                   attention)
    gen, cop = (1 - p_gen, p_gen) if swap else (p_gen, (1 - p_gen) if one_minus else 1.0)
    out = gen * p_vocab + cop * p_copy
    return out.detach() if detach else out


def _pointer(**bug):
    return lambda v, c, p, s, pad_id=0: _final(v, c, p, s, pad_id, **bug)


@pytest.mark.parametrize("bug, hint", [
    (dict(swap=True), T.GATE_SWAPPED),
    (dict(mask="none"), T.PAD_MASS),
    (dict(mask="zero"), T.PAD_ZERO),
    (dict(mask="after"), T.MASK_AFTER_SOFTMAX),
    (dict(add=False), T.SCATTER_NOT_ADD),
    (dict(axis=1), T.COPY_SOFTMAX_AXIS),
    (dict(vocab_softmax=False), T.NO_VOCAB_SOFTMAX),
    (dict(one_minus=False), T.NO_ONE_MINUS_GATE),
    (dict(width="vocab"), T.EXTENDED_MISSING),
    (dict(naive_exp=True), T.UNSTABLE),
    (dict(detach=True), "autograd"),
    (dict(inplace=True), "in place"),
    (dict(float32=True), "dtype"),
    (dict(fill=-1e9), "-inf"),
], ids=["gate swapped", "pad mass", "pad id 0", "mask after softmax", "scatter", "softmax axis",
        "no vocab softmax", "copy weight 1", "not extended", "naive exp", "detached", "in place",
        "float32 output", "-1e9 fill"])
def test_pointer_mutants_fail_with_their_hint(bug, hint):
    fails_with(checks.final_distribution, _pointer(**bug), hint)


def test_pointer_other_wrong_answers():
    msg = fails_with(checks.final_distribution,
                     lambda v, c, p, s, pad_id=0: tips.final_distribution(v, c, p, s, pad_id)
                     * 0.5 + 0.5 / tips.final_distribution(v, c, p, s, pad_id).shape[-1],
                     "wrong")
    assert "Likely bug" not in msg

    def crash(v, c, p, s, pad_id=0):
        return v @ c
    fails_with(checks.final_distribution, crash, "RuntimeError")


def test_pointer_correct_alternatives_pass(capsys):
    def with_one_hot(vocab_logits, copy_scores, p_gen, src, pad_id=0):
        B, T_, V = vocab_logits.shape
        W = max(V, int(src.max()) + 1)
        p_vocab = F.pad(F.softmax(vocab_logits, dim=-1), (0, W - V))
        scores = torch.where((src == pad_id)[:, None, :],
                             torch.tensor(float("-inf"), dtype=copy_scores.dtype), copy_scores)
        attention = F.softmax(scores, dim=-1)                        # (B, T, S)
        one_hot = F.one_hot(src, W).to(attention.dtype)              # (B, S, W)
        p_copy = torch.einsum("bts,bsw->btw", attention, one_hot)
        return p_gen * p_vocab + (1 - p_gen) * p_copy

    def with_index_add_float64(vocab_logits, copy_scores, p_gen, src, pad_id=0):
        B, T_, V = vocab_logits.shape
        W = max(V, int(src.max()) + 1)
        out = torch.zeros(B, T_, W, dtype=torch.float64)
        out[..., :V] = p_gen.double() * vocab_logits.double().softmax(-1)
        s = copy_scores.double().masked_fill((src == pad_id)[:, None, :], float("-inf"))
        a = (1 - p_gen.double()) * s.softmax(-1)
        rows = []
        for b in range(B):
            rows.append(out[b].index_add(1, src[b], a[b]))
        return torch.stack(rows).to(vocab_logits.dtype)

    for fn in (with_one_hot, with_index_add_float64):
        checks.final_distribution(fn)
    assert capsys.readouterr().out.count("✅") == 2
