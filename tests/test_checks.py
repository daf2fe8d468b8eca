"""The exercise checkers of chapters 01-02 bite: references pass, stubs are 'not attempted', known
buggy implementations of every class fail with their targeted hint, and correct implementations
written differently (einsum, F.*, float64 inside) pass.

Classes of buggy variants (named in the test ids): rank (works for one input rank only), mask
(one mask shape only), dtype (float16/bfloat16 output or overflow), inplace (input mutated),
autograd (gradients cut or NaN), stability (large offsets), crash (any exception), type
(equivalent or swapped return values), value (a wrong formula), and ambiguous (no single
explanation fits every probe: no bug may be named).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchformer import checks
from scratchformer.attention import (
    SelfAttention,
    masked_softmax,
    padding_mask,
    scaled_dot_product_attention,
)
from scratchformer.scores import AdditiveScore, attention_pool, dot_product_score


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


class StubAdditiveScore(AdditiveScore):
    def forward(self, q, k):
        raise NotImplementedError


class StubSelfAttention(SelfAttention):
    def forward(self, x, mask=None):
        raise NotImplementedError


CHECKERS = {
    checks.dot_product_score: dot_product_score,
    checks.attention_pool: attention_pool,
    checks.additive_score: AdditiveScore,
    checks.padding_mask: padding_mask,
    checks.masked_softmax: masked_softmax,
    checks.scaled_dot_product_attention: scaled_dot_product_attention,
    checks.self_attention: SelfAttention,
}
STUBS = {checks.additive_score: StubAdditiveScore, checks.self_attention: StubSelfAttention}


@pytest.mark.parametrize("checker, reference", CHECKERS.items(), ids=lambda x: getattr(x, "__name__", ""))
def test_reference_passes(checker, reference, capsys):
    for _ in range(3):  # fresh random inputs every call
        checker(reference)
    assert capsys.readouterr().out.count("✅") == 3


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(STUBS.get(checker, stub))


def test_not_attempted_is_not_an_assertion_error():
    """'Not attempted' and 'wrong' are different outcomes."""
    assert not issubclass(checks.ExerciseNotAttempted, AssertionError)
    assert issubclass(checks.ExerciseWrong, AssertionError)


def test_checkers_are_registered_with_their_exercise_numbers():
    numbers = {c.__name__: c.exercise_number for c in CHECKERS}
    assert numbers == {"dot_product_score": "1.1", "additive_score": "1.2", "attention_pool": "1.3",
                       "padding_mask": "2.1", "masked_softmax": "2.2",
                       "scaled_dot_product_attention": "2.3", "self_attention": "2.4"}


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    checks.additive_score(AdditiveScore)
    checks.self_attention(SelfAttention)
    assert torch.equal(torch.rand(3), expected)


def rejects(checker, implementation, hint, repeat=2):
    """``checker`` says *wrong* with ``hint`` in its message, on fresh draws every time."""
    for _ in range(repeat):
        with pytest.raises(checks.ExerciseWrong) as error:
            checker(implementation)
        assert hint in str(error.value), str(error.value)


def raise_value_error(*args, **kwargs):
    raise ValueError("something went wrong")  # the line the message must quote


# ---- 1.1 dot_product_score -----------------------------------------------------------------

def _bmm(q, k):
    return torch.bmm(q, k.transpose(1, 2))


def _mutate_k(q, k):
    k.transpose_(-2, -1)
    return q @ k


DOT_BUGS = {
    "value-k@q.T": (lambda q, k: k @ q.transpose(-2, -1), "k @ q.T"),
    "value-scaled": (lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), "divided by sqrt(d)"),
    "rank-transpose(0,1)": (lambda q, k: q @ k.transpose(0, 1), "k.transpose(-2, -1)"),
    "rank-transpose(1,2)": (lambda q, k: q @ k.transpose(1, 2), "raised IndexError"),
    "rank-bmm": (_bmm, "raised IndexError"),
    "rank-einsum-3d": (lambda q, k: torch.einsum("btd,bsd->bts", q, k), "raised RuntimeError"),
    "dtype-float32": (lambda q, k: q.float() @ k.float().transpose(-2, -1), "it must be torch.float16"),
    "inplace-k": (_mutate_k, "changed its input `k` in place"),
    "autograd-detach": (lambda q, k: (q @ k.transpose(-2, -1)).detach(), "through autograd"),
    "type-numpy": (lambda q, k: q.numpy() @ np.swapaxes(k.numpy(), -1, -2), "should be a torch.Tensor"),
    "ambiguous-scaled-2d-only": (lambda q, k: q @ k.mT / (math.sqrt(q.size(-1)) if q.dim() == 2 else 1),
                                 "from the reference is"),
    "crash-ValueError": (raise_value_error, "raised ValueError"),
}
DOT_OK = {
    "einsum": lambda q, k: torch.einsum("...td,...sd->...ts", q, k),
    "float64 inside": lambda q, k: (q.double() @ k.double().mT).to(q.dtype),
    "broadcast product": lambda q, k: (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1),
    "matmul mT": lambda q, k: torch.matmul(q, k.mT),
}


@pytest.mark.parametrize("bug", DOT_BUGS)
def test_dot_product_score_rejects(bug):
    rejects(checks.dot_product_score, *DOT_BUGS[bug])


@pytest.mark.parametrize("name", DOT_OK)
def test_dot_product_score_accepts(name):
    checks.dot_product_score(DOT_OK[name])


def test_crash_names_the_learners_line():
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.dot_product_score(raise_value_error)
    assert 'raise ValueError("something went wrong")' in str(error.value)


# ---- 1.3 attention_pool --------------------------------------------------------------------

def _exp_sum(s, v):
    e = s.exp()
    w = e / e.sum(-1, keepdim=True)
    return w @ v, w


def _mutate_scores(s, v):
    s -= s.amax(-1, keepdim=True)
    w = torch.softmax(s, -1)
    return w @ v, w


def _softmax_float32(s, v):
    w = torch.softmax(s, -1, dtype=torch.float32)
    return w @ v.float(), w


POOL_BUGS = {
    "value-axis-2": (lambda s, v: (torch.softmax(s, -2) @ v, torch.softmax(s, -2)), "wrong axis"),
    "rank-axis1": (lambda s, v: (torch.softmax(s, 1) @ v, torch.softmax(s, 1)), "fixed axis (dim=1)"),
    "value-raw-scores": (lambda s, v: (s @ v, s), "raw scores as weights"),
    "value-out-from-scores": (lambda s, v: (s @ v, torch.softmax(s, -1)), "raw scores instead of the weights"),
    "type-swapped": (lambda s, v: (torch.softmax(s, -1), torch.softmax(s, -1) @ v), "you returned (weights, out)"),
    "type-only-out": (lambda s, v: torch.softmax(s, -1) @ v, "tuple (out, weights)"),
    "stability-exp-sum": (_exp_sum, "exp overflows"),
    "inplace-scores": (_mutate_scores, "changed its input `scores` in place"),
    "dtype-float32": (_softmax_float32, "it must be torch.float16"),
    "autograd-detach": (lambda s, v: (torch.softmax(s, -1).detach() @ v.detach(), torch.softmax(s, -1)),
                        "through autograd"),
    "rank-bmm": (lambda s, v: (torch.bmm(torch.softmax(s, -1), v), torch.softmax(s, -1)), "raised RuntimeError"),
    "ambiguous-axis0": (lambda s, v: (torch.softmax(s, 0) @ v, torch.softmax(s, 0)), "from the reference is"),
    "crash-ValueError": (raise_value_error, "raised ValueError"),
}


def _pool_stable(s, v):
    z = s - s.amax(-1, keepdim=True)
    w = z.exp() / z.exp().sum(-1, keepdim=True)
    return w @ v, w


POOL_OK = {
    "F.softmax + einsum": lambda s, v: (torch.einsum("...ts,...sd->...td", F.softmax(s, -1), v), F.softmax(s, -1)),
    "stable exp/sum": _pool_stable,
    "float64 inside": lambda s, v: tuple(t.to(s.dtype) for t in _pool_stable(s.double(), v.double())),
    "list": lambda s, v: [torch.softmax(s, -1) @ v, torch.softmax(s, -1)],
}


@pytest.mark.parametrize("bug", POOL_BUGS)
def test_attention_pool_rejects(bug):
    rejects(checks.attention_pool, *POOL_BUGS[bug])


def test_attention_pool_names_no_bug_when_the_probes_disagree():
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.attention_pool(POOL_BUGS["ambiguous-axis0"][0])
    assert "Likely bug" not in str(error.value)


@pytest.mark.parametrize("name", POOL_OK)
def test_attention_pool_accepts(name):
    checks.attention_pool(POOL_OK[name])


# ---- 1.2 AdditiveScore ---------------------------------------------------------------------

class NoTanh(AdditiveScore):
    def forward(self, q, k):
        return self.w_v(self.W_q(q).unsqueeze(-2) + self.W_k(k).unsqueeze(-3)).squeeze(-1)


class TanhAfter(AdditiveScore):
    def forward(self, q, k):
        pairs = self.W_q(q).unsqueeze(-2) + self.W_k(k).unsqueeze(-3)
        return torch.tanh(self.w_v(pairs)).squeeze(-1)


class SwappedAxes(AdditiveScore):
    def forward(self, q, k):
        return self.w_v(torch.tanh(self.W_q(q).unsqueeze(-3) + self.W_k(k).unsqueeze(-2))).squeeze(-1)


class NoSqueeze(AdditiveScore):
    def forward(self, q, k):
        return self.w_v(torch.tanh(self.W_q(q).unsqueeze(-2) + self.W_k(k).unsqueeze(-3)))


class SumNotWv(AdditiveScore):
    def forward(self, q, k):
        return torch.tanh(self.W_q(q).unsqueeze(-2) + self.W_k(k).unsqueeze(-3)).sum(-1)


class SwappedProjections(AdditiveScore):
    def forward(self, q, k):
        return self.w_v(torch.tanh(self.W_q(k).unsqueeze(-3) + self.W_k(q).unsqueeze(-2))).squeeze(-1)


class Only3D(AdditiveScore):
    def forward(self, q, k):
        return self.w_v(torch.tanh(self.W_q(q).unsqueeze(2) + self.W_k(k).unsqueeze(1))).squeeze(-1)


class Float32Out(AdditiveScore):
    def forward(self, q, k):
        pairs = self.W_q(q).unsqueeze(-2) + self.W_k(k).unsqueeze(-3)
        return self.w_v(torch.tanh(pairs)).squeeze(-1).float()


class MutatesQ(AdditiveScore):
    def forward(self, q, k):
        return self.w_v(torch.tanh(self.W_q(q.unsqueeze_(-2)) + self.W_k(k).unsqueeze(-3))).squeeze(-1)


class Detached(AdditiveScore):
    def forward(self, q, k):
        pairs = self.W_q(q).unsqueeze(-2) + self.W_k(k).unsqueeze(-3)
        return self.w_v(torch.tanh(pairs)).squeeze(-1).detach()


class RenamedLayers(nn.Module):
    def __init__(self, d_q, d_k, d_hidden):
        super().__init__()
        self.query_layer = nn.Linear(d_q, d_hidden)


class Crashes(AdditiveScore):
    def forward(self, q, k):
        raise ValueError("something went wrong")


ADDITIVE_BUGS = {
    "value-no-tanh": (NoTanh, "tanh is missing"),
    "value-tanh-after": (TanhAfter, "tanh applied after w_v"),
    "value-sum": (SumNotWv, "summed instead of weighted"),
    "type-swapped-axes": (SwappedAxes, "swapped"),
    "type-no-squeeze": (NoSqueeze, "not squeezed"),
    "value-swapped-projections": (SwappedProjections, "W_q is applied to the keys"),
    "rank-3d-only": (Only3D, "raised RuntimeError"),
    "dtype-float32": (Float32Out, "it must be torch.float16"),
    "inplace-q": (MutatesQ, "changed its input `q` in place"),
    "autograd-detach": (Detached, "through autograd"),
    "type-renamed": (RenamedLayers, "W_q"),
    "crash-ValueError": (Crashes, "raised ValueError"),
}


class EinsumAdditive(AdditiveScore):
    def forward(self, q, k):
        hidden = torch.tanh(torch.einsum("...td,hd->...th", q, self.W_q.weight).unsqueeze(-2)
                            + torch.einsum("...sd,hd->...sh", k, self.W_k.weight).unsqueeze(-3))
        return torch.einsum("...tsh,h->...ts", hidden, self.w_v.weight[0])


class Float64Additive(AdditiveScore):
    def forward(self, q, k):
        Wq, Wk, wv = (m.weight.double() for m in (self.W_q, self.W_k, self.w_v))
        pairs = (q.double() @ Wq.T).unsqueeze(-2) + (k.double() @ Wk.T).unsqueeze(-3)
        return (torch.tanh(pairs) @ wv.T).squeeze(-1).to(q.dtype)


@pytest.mark.parametrize("bug", ADDITIVE_BUGS)
def test_additive_score_rejects(bug):
    rejects(checks.additive_score, *ADDITIVE_BUGS[bug])


@pytest.mark.parametrize("cls", [EinsumAdditive, Float64Additive], ids=lambda c: c.__name__)
def test_additive_score_accepts(cls):
    checks.additive_score(cls)


# ---- 2.1 padding_mask ----------------------------------------------------------------------

def _mutate_lengths(lengths, n):
    return torch.arange(n)[None, :] < lengths.unsqueeze_(1)


PAD_BUGS = {
    "value-flipped": (lambda lengths, n: torch.arange(n)[None, :] >= lengths[:, None], "mask polarity flipped"),
    "value-<=": (lambda lengths, n: torch.arange(n)[None, :] <= lengths[:, None], "off by one, `<=`"),
    "value-one-too-few": (lambda lengths, n: torch.arange(1, n + 1)[None, :] < lengths[:, None],
                          "one position too few"),
    "dtype-float": (lambda lengths, n: (torch.arange(n)[None, :] < lengths[:, None]).float(),
                    "must be torch.bool"),
    "dtype-int": (lambda lengths, n: (torch.arange(n)[None, :] < lengths[:, None]).long(),
                  "must be torch.bool"),
    "value-width-from-lengths": (lambda lengths, n: torch.arange(int(lengths.max()))[None, :] < lengths[:, None],
                                 "instead of max_len"),
    "type-(B,1,S)": (lambda lengths, n: (torch.arange(n)[None, :] < lengths[:, None])[:, None, :],
                     "(B, 1, max_len)"),
    "type-transposed": (lambda lengths, n: torch.arange(n)[:, None] < lengths[None, :], "transposed"),
    "inplace-lengths": (_mutate_lengths, "changed its input `lengths` in place"),
    "crash-no-broadcast": (lambda lengths, n: torch.arange(n) < lengths, "raised RuntimeError"),
    "crash-ValueError": (raise_value_error, "raised ValueError"),
}
PAD_OK = {
    "loop": lambda lengths, n: torch.tensor([[j < int(L) for j in range(n)] for L in lengths],
                                            dtype=torch.bool).reshape(len(lengths), n),
    "expand": lambda lengths, n: torch.arange(n).expand(len(lengths), n) < lengths.unsqueeze(1),
    "stack": lambda lengths, n: torch.stack([torch.arange(n) < L for L in lengths]),
    "ones/tril style": lambda lengths, n: torch.ones(len(lengths), n, dtype=torch.bool).cumsum(1)
    <= lengths[:, None],
}


@pytest.mark.parametrize("bug", PAD_BUGS)
def test_padding_mask_rejects(bug):
    rejects(checks.padding_mask, *PAD_BUGS[bug])


@pytest.mark.parametrize("name", PAD_OK)
def test_padding_mask_accepts(name):
    checks.padding_mask(PAD_OK[name])


# ---- 2.2 masked_softmax --------------------------------------------------------------------

def _softmax(scores, mask, fill=None, flip=False, zero=True, dim=-1):
    keep = ~mask if flip else mask
    value = torch.finfo(scores.dtype).min if fill is None else fill
    weights = torch.softmax(scores.masked_fill(~keep, value), dim=dim)
    return weights.masked_fill(~keep, 0.0) if zero else weights


def _given_no_mask(inner):
    """The lines outside the markers handle mask=None; the learner writes the rest."""
    def fn(scores, mask=None):
        if mask is None:
            return torch.softmax(scores, -1, dtype=torch.float32).to(scores.dtype)
        return inner(scores, mask)
    return fn


def _small_fill_empty_rows_zeroed(scores, mask):
    w = torch.softmax(scores.masked_fill(~mask, -8.0), -1)
    return torch.where(mask.any(-1, keepdim=True), w, torch.zeros_like(w))


def _bool_index(scores, mask):
    s = scores.clone()
    s[~mask] = torch.finfo(s.dtype).min
    return torch.softmax(s, -1).masked_fill(~mask, 0)


def _inplace_fill(scores, mask):
    scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, -1).masked_fill(~mask, 0)


def _nan_hidden(scores, mask):
    """An additive -inf bias, then torch.where hides the NaN in the weights, not in the gradient.
    (With masked_fill(~mask, -inf) instead, the gradient would be finite and the answer right.)"""
    bias = torch.zeros_like(scores).masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores + bias, -1)
    return torch.where(mask.any(-1, keepdim=True), w, torch.zeros_like(w))


def _where_after_inf_fill(scores, mask):
    w = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    return torch.where(mask.any(-1, keepdim=True), w, torch.zeros_like(w))


def _exp_no_max(scores, mask):
    e = scores.double().exp() * mask
    return (e / e.sum(-1, keepdim=True).clamp_min(1e-300)).to(scores.dtype)


SOFTMAX_BUGS = {
    "mask-polarity": (lambda s, m: _softmax(s, m, flip=True), "mask polarity flipped"),
    "mask-small-fill": (lambda s, m: _softmax(s, m, fill=-3.0, zero=False), "finite fill too small"),
    "mask-small-fill-empty-rows-zeroed": (_small_fill_empty_rows_zeroed, "finite fill too small"),
    "autograd-inf-fill": (lambda s, m: _softmax(s, m, fill=float("-inf"), zero=False),
                          "NaN from a fully masked row"),
    "mask-uniform-row": (lambda s, m: _softmax(s, m, zero=False), "uniform weights 1/S"),
    "dtype--1e9": (lambda s, m: _softmax(s, m, fill=-1e9), "float16"),
    "value-axis": (lambda s, m: _softmax(s, m, dim=-2), "wrong axis"),
    "mask-bool-indexing": (_bool_index, "boolean indexing"),
    "inplace-masked_fill_": (_inplace_fill, "changed its input `scores` in place"),
    "mask-after-softmax": (lambda s, m: torch.softmax(s, -1) * m, "applied after the softmax"),
    "mask-ignored": (lambda s, m: torch.softmax(s, -1), "the mask is ignored"),
    "dtype-float32": (lambda s, m: _softmax(s.float(), m), "it must be torch.float16"),
    "autograd-nan-hidden-by-where": (_nan_hidden, "NaN from a fully masked row"),
    "stability-exp-no-max": (_exp_no_max, "exp overflows"),
    "crash-ValueError": (raise_value_error, "raised ValueError"),
}


def _where_softmax(scores, mask):
    filled = torch.where(mask, scores, torch.finfo(scores.dtype).min)
    return torch.where(mask, F.softmax(filled.float(), dim=-1), 0.0).to(scores.dtype)


def _manual_stable(scores, mask):
    s = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
    e = (s - s.amax(-1, keepdim=True)).exp() * mask
    return (e / e.sum(-1, keepdim=True).clamp_min(1e-30)).to(scores.dtype)


def _float64_softmax(scores, mask):
    return _softmax(scores.double(), mask).to(scores.dtype)


SOFTMAX_OK = {"torch.where + F.softmax": _where_softmax, "stable exp/sum": _manual_stable,
              "float64 inside": _float64_softmax, "-inf fill, empty rows zeroed": _where_after_inf_fill}


@pytest.mark.parametrize("bug", SOFTMAX_BUGS)
def test_masked_softmax_rejects(bug):
    implementation, hint = SOFTMAX_BUGS[bug]
    rejects(checks.masked_softmax, _given_no_mask(implementation), hint)


@pytest.mark.parametrize("name", SOFTMAX_OK)
def test_masked_softmax_accepts(name):
    checks.masked_softmax(_given_no_mask(SOFTMAX_OK[name]))


# ---- 2.3 scaled_dot_product_attention ------------------------------------------------------

def _sdpa(q, k, v, mask=None, *, scale=None, softmax_dim=-1, fill=None, flip=False, transpose=False,
          zero_rows=True):
    """A configurable, deliberately buggy attention."""
    d_k = q.size(-1)
    scores = (k @ q.transpose(-2, -1)) if transpose else (q @ k.transpose(-2, -1))
    scores = scores * (1 / math.sqrt(d_k) if scale is None else scale(d_k))
    if mask is not None:
        keep = ~mask if flip else mask
        value = torch.finfo(scores.dtype).min if fill is None else fill
        scores = scores.masked_fill(~keep, value)
    weights = torch.softmax(scores, dim=softmax_dim)
    if mask is not None and zero_rows and fill is None:
        weights = weights.masked_fill(~(~mask if flip else mask), 0.0)
    return weights @ v, weights


def _variant(**options):
    return lambda q, k, v, mask=None: _sdpa(q, k, v, mask, **options)


def _sdpa_nan_hidden(q, k, v, mask=None):
    """An additive -inf bias, then torch.where hides the NaN in the output, not in the gradient."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores + torch.zeros_like(scores).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = torch.where(mask.any(-1, keepdim=True), weights, torch.zeros_like(weights))
    return weights @ v, weights


def _sdpa_3d_only(q, k, v, mask=None):
    weights = masked_softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(q.size(-1)), mask)
    return torch.bmm(weights, v), weights


def _sdpa_after(q, k, v, mask=None):
    weights = torch.softmax(q @ k.mT / math.sqrt(q.size(-1)), -1)
    if mask is not None:
        weights = weights * mask
    return weights @ v, weights


def _sdpa_inplace(q, k, v, mask=None):
    q /= math.sqrt(q.size(-1))
    weights = masked_softmax(q @ k.transpose(-2, -1), mask)
    return weights @ v, weights


def _sdpa_exp(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    e = scores.exp() if mask is None else scores.exp() * mask
    weights = e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
    return weights @ v, weights


def _sdpa_head_axis(q, k, v, mask=None):
    """Adds a head axis to the mask on the 4-D path, which breaks the (B, 1, 1, S) masks."""
    if mask is not None and q.dim() == 4:
        mask = mask.unsqueeze(1)
    return _sdpa(q, k, v, mask)


def _sdpa_unscaled_4d(q, k, v, mask=None):
    """Forgets the scaling on one path only: no single bug explains every probe."""
    return _sdpa(q, k, v, mask, scale=(lambda d: 1.0) if q.dim() == 4 else None)


def _sdpa_weights_float32(q, k, v, mask=None):
    out, weights = _sdpa(q, k, v, mask)
    return out, weights.float()


def _sdpa_bool_index(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores[~mask] = torch.finfo(scores.dtype).min
    weights = torch.softmax(scores, -1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0)
    return weights @ v, weights


SDPA_BUGS = {
    "value-axis": (_variant(softmax_dim=-2), "wrong axis"),
    "value-no-scaling": (_variant(scale=lambda d: 1.0), "1/sqrt(d_k) scaling is missing"),
    "value-1/d_k": (_variant(scale=lambda d: 1 / d), "1/d_k instead of 1/sqrt(d_k)"),
    "value-times-sqrt": (_variant(scale=lambda d: math.sqrt(d)), "multiplied by sqrt(d_k)"),
    "mask-polarity": (_variant(flip=True), "mask polarity flipped"),
    "mask-small-fill": (_variant(fill=-5.0), "finite fill too small"),
    "autograd-inf-fill": (_variant(fill=float("-inf")), "NaN from a fully masked row"),
    "mask-uniform-row": (_variant(zero_rows=False), "fully masked row is not zeroed"),
    "value-transposed": (_variant(transpose=True), "scores transposed"),
    "mask-ignored": (lambda q, k, v, mask=None: _sdpa(q, k, v, None), "the mask is ignored"),
    "mask-after-softmax": (_sdpa_after, "applied after the softmax"),
    "type-swapped": (lambda q, k, v, mask=None: _sdpa(q, k, v, mask)[::-1], "you returned (weights, out)"),
    "type-only-out": (lambda q, k, v, mask=None: _sdpa(q, k, v, mask)[0], "tuple (out, weights)"),
    "autograd-nan-hidden-by-where": (_sdpa_nan_hidden, "NaN from a fully masked row"),
    "rank-3d-only": (_sdpa_3d_only, "raised IndexError"),
    "dtype--1e9": (_variant(fill=-1e9), "float16"),
    "dtype-float32-weights": (_sdpa_weights_float32, "it must be torch.float16"),
    "mask-bool-indexing": (_sdpa_bool_index, "boolean indexing"),
    "inplace-q": (_sdpa_inplace, "changed its input `q` in place"),
    "stability-exp": (_sdpa_exp, "exp overflows"),
    "autograd-detach": (lambda q, k, v, mask=None: tuple(t.detach() for t in _sdpa(q, k, v, mask)),
                        "through autograd"),
    "mask-head-axis-on-4d-only": (_sdpa_head_axis, "raised RuntimeError"),
    "ambiguous-unscaled-4d-only": (_sdpa_unscaled_4d, "from the reference is"),
    "crash-ValueError": (raise_value_error, "raised ValueError"),
}


def _sdpa_einsum(q, k, v, mask=None):
    scores = torch.einsum("...td,...sd->...ts", q, k) / q.size(-1) ** 0.5
    weights = masked_softmax(scores, mask)
    return torch.einsum("...ts,...sd->...td", weights, v), weights


def _sdpa_float64(q, k, v, mask=None):
    out, weights = _sdpa(q.double(), k.double(), v.double(), mask)
    return out.to(q.dtype), weights.to(q.dtype)


def _sdpa_torch(q, k, v, mask=None):
    weights = masked_softmax(q @ k.mT / math.sqrt(q.size(-1)), mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), weights


SDPA_OK = {"list": lambda q, k, v, mask=None: list(_sdpa(q, k, v, mask)), "einsum": _sdpa_einsum, "float64 inside": _sdpa_float64, "F.scaled_dot_product_attention": _sdpa_torch,
           "where": lambda q, k, v, mask=None: (lambda w: (w @ v, w))(
               _given_no_mask(_where_softmax)(q @ k.mT / math.sqrt(q.size(-1)), mask))}


@pytest.mark.parametrize("bug", SDPA_BUGS)
def test_scaled_dot_product_attention_rejects(bug):
    rejects(checks.scaled_dot_product_attention, *SDPA_BUGS[bug])


@pytest.mark.parametrize("name", SDPA_OK)
def test_scaled_dot_product_attention_accepts(name):
    checks.scaled_dot_product_attention(SDPA_OK[name])


# ---- 2.4 SelfAttention ---------------------------------------------------------------------

def _attention_variant(scale=None, roles="qkv", use_mask=True, swap=False, transposed=False,
                       bias=True, own_softmax=None):
    class Variant(SelfAttention):
        def forward(self, x, mask=None):
            W = {"q": self.W_q, "k": self.W_k, "v": self.W_v}

            def project(role):
                lin = W[role]
                if transposed:
                    return x @ lin.weight
                return lin(x) if bias else x @ lin.weight.T

            q, k, v = (project(r) for r in roles)
            d = {"d_k": q.size(-1), "d_model": self.d_model, "none": 1.0}[scale or "d_k"]
            scores = q @ k.transpose(-2, -1) / (math.sqrt(d) if scale != "none" else 1.0)
            m = mask if use_mask else None
            weights = (own_softmax or masked_softmax)(scores, m)
            out = weights @ v
            return (weights, out) if swap else (out, weights)
    return Variant


class OnlyOut(SelfAttention):
    def forward(self, x, mask=None):
        return scaled_dot_product_attention(self.W_q(x), self.W_k(x), self.W_v(x), mask)[0]


class Transpose12(SelfAttention):
    def forward(self, x, mask=None):
        q, k, v = self.W_q(x), self.W_k(x), self.W_v(x)
        weights = masked_softmax(q @ k.transpose(1, 2) / math.sqrt(self.d_k), mask)
        return weights @ v, weights


class MutatesX(SelfAttention):
    def forward(self, x, mask=None):
        x /= x.norm(dim=-1, keepdim=True)
        return scaled_dot_product_attention(self.W_q(x), self.W_k(x), self.W_v(x), mask)


class Float32Out(SelfAttention):
    def forward(self, x, mask=None):
        out, weights = scaled_dot_product_attention(self.W_q(x), self.W_k(x), self.W_v(x), mask)
        return out.float(), weights.float()


class DetachedOut(SelfAttention):
    def forward(self, x, mask=None):
        out, weights = scaled_dot_product_attention(self.W_q(x), self.W_k(x), self.W_v(x), mask)
        return out.detach(), weights


class AmbiguousScale(SelfAttention):
    """Scales by sqrt(d_model) for 3-D inputs only: no single bug explains every probe."""
    def forward(self, x, mask=None):
        q, k, v = self.W_q(x), self.W_k(x), self.W_v(x)
        d = self.d_model if x.dim() == 3 else self.d_k
        weights = masked_softmax(q @ k.mT / math.sqrt(d), mask)
        return weights @ v, weights


class CrashingAttention(SelfAttention):
    def forward(self, x, mask=None):
        raise ValueError("something went wrong")


def _inf_softmax(scores, mask):
    return _softmax(scores, mask, fill=float("-inf"), zero=False) if mask is not None else torch.softmax(scores, -1)


SA_BUGS = {
    "value-no-scaling": (_attention_variant(scale="none"), "1/sqrt(d_k) scaling is missing"),
    "value-sqrt(d_model)": (_attention_variant(scale="d_model"), "1/sqrt(d_model) instead of 1/sqrt(d_k)"),
    "value-q/k-swapped": (_attention_variant(roles="kqv"), "query and key projections are swapped"),
    "value-k-from-W_q": (_attention_variant(roles="qqv"), "keys come from W_q"),
    "value-v-from-W_q": (_attention_variant(roles="qkq"), "values come from W_q"),
    "value-q/v-swapped": (_attention_variant(roles="vkq"), "query and value projections are swapped"),
    "value-k/v-swapped": (_attention_variant(roles="qvk"), "key and value projections are swapped"),
    "value-untransposed-weight": (_attention_variant(transposed=True), "nn.Linear weight itself"),
    "value-bias-ignored": (_attention_variant(bias=False), "biases are ignored"),
    "mask-ignored": (_attention_variant(use_mask=False), "the mask is ignored"),
    "autograd-inf-fill": (_attention_variant(own_softmax=_inf_softmax), "NaN from a fully masked row"),
    "type-swapped": (_attention_variant(swap=True), "you returned (weights, out)"),
    "type-only-out": (OnlyOut, "tuple (out, weights)"),
    "rank-transpose(1,2)": (Transpose12, "raised IndexError"),
    "inplace-x": (MutatesX, "changed its input `x` in place"),
    "dtype-float32": (Float32Out, "it must be torch.float16"),
    "autograd-detach": (DetachedOut, "through autograd"),
    "ambiguous-sqrt(d_model)-3d-only": (AmbiguousScale, "from the reference is"),
    "crash-ValueError": (CrashingAttention, "raised ValueError"),
}


class EinsumSelfAttention(SelfAttention):
    def forward(self, x, mask=None):
        q, k, v = (F.linear(x, m.weight, m.bias) for m in (self.W_q, self.W_k, self.W_v))
        scores = torch.einsum("...td,...sd->...ts", q, k) * self.d_k ** -0.5
        weights = _given_no_mask(_where_softmax)(scores, mask)
        return torch.einsum("...ts,...sd->...td", weights, v), weights


class Float64SelfAttention(SelfAttention):
    def forward(self, x, mask=None):
        p = {name: t.double() for name, t in self.named_parameters()}
        q, k, v = (F.linear(x.double(), p[f"W_{r}.weight"], p.get(f"W_{r}.bias")) for r in "qkv")
        out, weights = _sdpa(q, k, v, mask)
        return out.to(x.dtype), weights.to(x.dtype)


class TorchSelfAttention(SelfAttention):
    def forward(self, x, mask=None):
        q, k, v = self.W_q(x), self.W_k(x), self.W_v(x)
        weights = masked_softmax(q @ k.mT / math.sqrt(self.d_k), mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), weights


@pytest.mark.parametrize("bug", SA_BUGS)
def test_self_attention_rejects(bug):
    rejects(checks.self_attention, *SA_BUGS[bug])


@pytest.mark.parametrize("cls", [EinsumSelfAttention, Float64SelfAttention, TorchSelfAttention],
                         ids=lambda c: c.__name__)
def test_self_attention_accepts(cls):
    checks.self_attention(cls)


def test_crash_in_learner_code_is_reported_as_wrong_with_the_error():
    def crashes(q, k, v, mask=None):
        return torch.cat([q, k], dim=-2) @ v  # shape error
    with pytest.raises(checks.ExerciseWrong, match="RuntimeError"):
        checks.scaled_dot_product_attention(crashes)


REJECTED = {"dot_product_score": DOT_BUGS, "attention_pool": POOL_BUGS, "additive_score": ADDITIVE_BUGS,
            "padding_mask": PAD_BUGS, "masked_softmax": SOFTMAX_BUGS,
            "scaled_dot_product_attention": SDPA_BUGS, "self_attention": SA_BUGS}


def test_every_checker_rejects_many_variants():
    counts = {name: len(bugs) for name, bugs in REJECTED.items()}
    assert all(n >= 10 for n in counts.values()), counts


@pytest.mark.parametrize("checker, bugs", [(checks.dot_product_score, DOT_BUGS),
                                           (checks.scaled_dot_product_attention, SDPA_BUGS),
                                           (checks.self_attention, SA_BUGS)],
                         ids=["dot_product_score", "scaled_dot_product_attention", "self_attention"])
def test_no_bug_is_named_when_the_probes_disagree(checker, bugs):
    for name, (implementation, _) in bugs.items():
        if name.startswith("ambiguous"):
            with pytest.raises(checks.ExerciseWrong) as error:
                checker(implementation)
            assert "Likely bug" not in str(error.value), str(error.value)
