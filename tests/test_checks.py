"""The exercise checkers bite: references pass, stubs are 'not attempted', and every known-buggy
implementation (drawn from shared/PITFALLS.md) fails with its targeted hint."""

import math

import pytest
import torch
from torch import nn

from scratchformer import checks
from scratchformer.attention import masked_softmax, padding_mask, scaled_dot_product_attention
from scratchformer.scores import AdditiveScore, attention_pool, dot_product_score


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


class StubAdditiveScore(AdditiveScore):
    def forward(self, q, k):
        raise NotImplementedError


CHECKERS = {
    checks.dot_product_score: dot_product_score,
    checks.attention_pool: attention_pool,
    checks.additive_score: AdditiveScore,
    checks.padding_mask: padding_mask,
    checks.masked_softmax: masked_softmax,
    checks.scaled_dot_product_attention: scaled_dot_product_attention,
}


@pytest.mark.parametrize("checker, reference", CHECKERS.items(), ids=lambda x: getattr(x, "__name__", ""))
def test_reference_passes(checker, reference, capsys):
    for _ in range(3):  # fresh random inputs every call
        checker(reference)
    assert capsys.readouterr().out.count("✅") == 3


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_stub_is_not_attempted(checker):
    implementation = StubAdditiveScore if checker is checks.additive_score else stub
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(implementation)


def test_not_attempted_is_not_an_assertion_error():
    """'Not attempted' and 'wrong' are different outcomes."""
    assert not issubclass(checks.ExerciseNotAttempted, AssertionError)
    assert issubclass(checks.ExerciseWrong, AssertionError)


# ---- scaled dot-product attention: the bugs the foundation issue names -------------------------

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


SDPA_BUGS = {
    "softmax over the wrong axis": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, softmax_dim=-2),
    "missing scaling": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, scale=lambda d: 1.0),
    "scale by 1/d_k": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, scale=lambda d: 1 / d),
    "multiply by sqrt(d_k)": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, scale=lambda d: math.sqrt(d)),
    "mask polarity flipped": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, flip=True),
    "finite fill too small": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, fill=-5.0),
    "NaN from -inf fill": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, fill=float("-inf")),
    "uniform fully masked row": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, zero_rows=False),
    "transposed scores": lambda q, k, v, mask=None: _sdpa(q, k, v, mask, transpose=True),
}
SDPA_HINTS = {
    "softmax over the wrong axis": "wrong axis",
    "missing scaling": "1/sqrt(d_k) scaling is missing",
    "scale by 1/d_k": "1/d_k instead of 1/sqrt(d_k)",
    "multiply by sqrt(d_k)": "multiplied by sqrt(d_k)",
    "mask polarity flipped": "mask polarity flipped",
    "finite fill too small": "finite fill too small",
    "NaN from -inf fill": "NaN from a fully masked row",
    "uniform fully masked row": "fully masked row is not zeroed",
    "transposed scores": "scores transposed",
}


def _nan_hidden_by_where(q, k, v, mask=None):
    """An additive -inf bias, then torch.where hides the NaN in the output, not in the gradient."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores + torch.zeros_like(scores).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = torch.where(mask.any(-1, keepdim=True), weights, torch.zeros_like(weights))
    return weights @ v, weights


@pytest.mark.parametrize("bug", SDPA_BUGS)
def test_buggy_attention_fails_with_targeted_hint(bug):
    with pytest.raises(checks.ExerciseWrong, match="Likely bug") as error:
        checks.scaled_dot_product_attention(SDPA_BUGS[bug])
    assert SDPA_HINTS[bug] in str(error.value), str(error.value)


def test_nan_gradient_hidden_by_where_is_caught():
    with pytest.raises(checks.ExerciseWrong, match="gradient") as error:
        checks.scaled_dot_product_attention(_nan_hidden_by_where)
    assert "NaN from a fully masked row" in str(error.value)


def test_attention_returning_only_out_is_told_to_return_a_tuple():
    with pytest.raises(checks.ExerciseWrong, match=r"tuple \(out, weights\)"):
        checks.scaled_dot_product_attention(lambda q, k, v, mask=None: _sdpa(q, k, v, mask)[0])


# ---- masked softmax ----------------------------------------------------------------------------

def _softmax(scores, mask, fill=None, flip=False, zero=True, dim=-1):
    keep = ~mask if flip else mask
    value = torch.finfo(scores.dtype).min if fill is None else fill
    weights = torch.softmax(scores.masked_fill(~keep, value), dim=dim)
    return weights.masked_fill(~keep, 0.0) if zero else weights


@pytest.mark.parametrize("bug, implementation, hint", [
    ("polarity", lambda s, m: _softmax(s, m, flip=True), "mask polarity flipped"),
    ("small fill", lambda s, m: _softmax(s, m, fill=-3.0, zero=False), "finite fill too small"),
    ("-inf fill", lambda s, m: _softmax(s, m, fill=float("-inf"), zero=False), "NaN from a fully masked row"),
    ("uniform row", lambda s, m: _softmax(s, m, zero=False), "uniform weights"),
    ("-1e9 in float16", lambda s, m: _softmax(s, m, fill=-1e9), "float16"),
    ("wrong axis", lambda s, m: _softmax(s, m, dim=-2), "wrong axis"),
])
def test_buggy_masked_softmax_fails_with_targeted_hint(bug, implementation, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.masked_softmax(implementation)
    assert hint in str(error.value), str(error.value)


# ---- padding mask, chapter 01 ------------------------------------------------------------------

@pytest.mark.parametrize("implementation, hint", [
    (lambda lengths, n: torch.arange(n)[None, :] >= lengths[:, None], "mask polarity flipped"),
    (lambda lengths, n: torch.arange(n)[None, :] <= lengths[:, None], "off by one"),
    (lambda lengths, n: (torch.arange(n)[None, :] < lengths[:, None]).float(), "must be torch.bool"),
])
def test_buggy_padding_mask(implementation, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.padding_mask(implementation)
    assert hint in str(error.value)


@pytest.mark.parametrize("implementation, hint", [
    (lambda q, k: k @ q.transpose(-2, -1), "k @ q.T"),
    (lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), "divided by sqrt(d)"),
    (lambda q, k: q @ k.transpose(0, 1), "k.transpose(-2, -1)"),
])
def test_buggy_dot_product_score(implementation, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.dot_product_score(implementation)
    assert hint in str(error.value)


@pytest.mark.parametrize("implementation, hint", [
    (lambda s, v: (torch.softmax(s, -2) @ v, torch.softmax(s, -2)), "wrong axis"),
    (lambda s, v: (s @ v, s), "raw scores"),
    (lambda s, v: (s @ v, torch.softmax(s, -1)), "raw scores instead of the weights"),
])
def test_buggy_attention_pool(implementation, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.attention_pool(implementation)
    assert hint in str(error.value)


class NoTanh(AdditiveScore):
    def forward(self, q, k):
        return self.w_v(self.W_q(q).unsqueeze(-2) + self.W_k(k).unsqueeze(-3)).squeeze(-1)


class SwappedAxes(AdditiveScore):
    def forward(self, q, k):
        return self.w_v(torch.tanh(self.W_q(q).unsqueeze(-3) + self.W_k(k).unsqueeze(-2))).squeeze(-1)


class RenamedLayers(nn.Module):
    def __init__(self, d_q, d_k, d_hidden):
        super().__init__()
        self.query_layer = nn.Linear(d_q, d_hidden)


@pytest.mark.parametrize("cls, hint", [(NoTanh, "tanh is missing"), (SwappedAxes, "swapped"),
                                       (RenamedLayers, "W_q")])
def test_buggy_additive_score(cls, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.additive_score(cls)
    assert hint in str(error.value)


def test_crash_in_learner_code_is_reported_as_wrong_with_the_error():
    def crashes(q, k, v, mask=None):
        return torch.cat([q, k], dim=-2) @ v  # shape error
    with pytest.raises(checks.ExerciseWrong, match="RuntimeError"):
        checks.scaled_dot_product_attention(crashes)
