"""The chapter 06 checkers bite: references pass, stubs are 'not attempted', and every known-buggy
implementation fails with its targeted hint."""

import pytest
import torch
from torch import nn

from scratchformer import checks
from scratchformer.encoder import layer_norm, residual


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


# ---- references pass, stubs are not attempted --------------------------------------------------

def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(3):  # fresh random inputs every call
        checks.layer_norm(layer_norm)
        checks.residual(residual)
    assert capsys.readouterr().out.count("✅") == 6


@pytest.mark.parametrize("checker", [checks.layer_norm, checks.residual], ids=lambda c: c.__name__)
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(stub)


def test_other_correct_layer_norms_pass(capsys):
    """Equivalent formulations are not flagged: var(unbiased=False), rsqrt, F.layer_norm itself."""
    checks.layer_norm(lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True))
                      * torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps) * w + b)
    checks.layer_norm(lambda x, w, b, eps=1e-5: torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, eps))
    assert capsys.readouterr().out.count("✅") == 2


# ---- Exercise 6.1: layer_norm ------------------------------------------------------------------

def _ln(x, weight, bias, eps=1e-5, *, dim=-1, unbiased=False, eps_inside=True, power=0.5, affine="both",
        use_eps=True):
    """A configurable, deliberately buggy layer norm."""
    eps_used = eps if use_eps else 1e-5
    mean = x.mean(dim=dim, keepdim=True)
    var = x.var(dim=dim, unbiased=unbiased, keepdim=True)
    if eps_inside:
        normalised = (x - mean) / (var + eps_used) ** power
    else:
        normalised = (x - mean) / (var.sqrt() + eps_used)
    return {"both": normalised * weight + bias, "none": normalised, "no weight": normalised + bias,
            "no bias": normalised * weight, "swapped": normalised * bias + weight}[affine]


def ln_fixed_axis(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=2, keepdim=True)                      # only right for 3-D inputs
    var = x.var(dim=2, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def ln_no_keepdim(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1)                                   # (B, T): does not broadcast against (B, T, D)
    var = x.var(dim=-1, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


LAYER_NORM_BUGS = {
    "over the batch axis": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, dim=0), "over the batch axis"),
    "over the sequence axis": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, dim=-2), "over the sequence axis"),
    "over sequence and features": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, dim=(-2, -1)), "last two axes"),
    "unbiased variance": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, unbiased=True), "unbiased variance"),
    "eps outside the square root": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, eps_inside=False),
                                    "eps outside the square root"),
    "no eps": (lambda x, w, b, eps=1e-5: _ln(x, w, b, 0.0), "eps is missing"),
    "variance instead of std": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, power=1.0), "instead of the standard deviation"),
    "no weight and bias": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, affine="none"), "learnable weight and bias are not applied"),
    "no weight": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, affine="no weight"), "weight (gamma) is not applied"),
    "no bias": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, affine="no bias"), "bias (beta) is not applied"),
    "weight and bias swapped": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, affine="swapped"), "swapped"),
    "eps argument ignored": (lambda x, w, b, eps=1e-5: _ln(x, w, b, eps, use_eps=False), "eps argument is ignored"),
    "fixed axis dim=2": (ln_fixed_axis, "fixed number of axes"),
    "keepdim forgotten": (ln_no_keepdim, "keepdim=True"),
}


@pytest.mark.parametrize("bug", LAYER_NORM_BUGS)
def test_buggy_layer_norm_fails_with_targeted_hint(bug):
    implementation, hint = LAYER_NORM_BUGS[bug]
    with pytest.raises(checks.ExerciseWrong, match="Likely bug") as error:
        checks.layer_norm(implementation)
    assert hint in str(error.value), str(error.value)


def test_layer_norm_nan_on_constant_vector_is_reported():
    def no_eps_nan(x, weight, bias, eps=1e-5):
        return _ln(x, weight, bias, eps) if x.dim() > 2 else (x - x.mean(-1, keepdim=True)) / x.std(-1, True, keepdim=True)

    with pytest.raises(checks.ExerciseWrong, match="NaN"):
        checks.layer_norm(no_eps_nan)


# ---- Exercise 6.2: residual --------------------------------------------------------------------

def _identity(t):
    return t


def make_residual(post, pre):
    """A residual(x, sublayer, norm, norm_first=False, dropout=None) from two buggy formulas."""
    def implementation(x, sublayer, norm, norm_first=False, dropout=None):
        drop = _identity if dropout is None else dropout
        return (pre if norm_first else post)(x, sublayer, norm, drop)
    return implementation


def correct_post(x, s, n, d):
    return n(x + d(s(x)))


def correct_pre(x, s, n, d):
    return x + d(s(n(x)))


RESIDUAL_BUGS = {
    "flag read backwards": (make_residual(correct_pre, correct_post), "norm_first read the wrong way round"),
    "pre-LN: residual from the normalised x": (
        make_residual(correct_post, lambda x, s, n, d: n(x) + d(s(n(x)))), "residual is taken from the normalised x"),
    "pre-LN: norm after the add too": (
        make_residual(correct_post, lambda x, s, n, d: n(x + d(s(n(x))))), "also normalises after the add"),
    "post-LN: norm on the sublayer output": (
        make_residual(lambda x, s, n, d: x + n(d(s(x))), correct_pre), "norm is applied to the sublayer's output"),
    "post-LN: norm on x before the add": (
        make_residual(lambda x, s, n, d: n(x) + d(s(x)), correct_pre), "normalises x before the add"),
    "post-LN: no residual": (make_residual(lambda x, s, n, d: n(d(s(x))), correct_pre), "residual add is missing"),
    "pre-LN: no residual": (make_residual(correct_post, lambda x, s, n, d: d(s(n(x)))), "residual add is missing"),
    "no norm": (make_residual(lambda x, s, n, d: x + d(s(x)), correct_pre), "norm is never applied"),
    "post-LN: dropout on the normalised sum": (
        make_residual(lambda x, s, n, d: d(n(x + s(x))), correct_pre), "also drops the residual path"),
    "post-LN: dropout on the sum before the norm": (
        make_residual(lambda x, s, n, d: n(d(x + s(x))), correct_pre), "also drops the residual path"),
    "pre-LN: dropout on the sum": (make_residual(correct_post, lambda x, s, n, d: d(x + s(n(x)))), "also drops the residual path"),
    "pre-LN: dropout on the sublayer input": (
        make_residual(correct_post, lambda x, s, n, d: x + s(d(n(x)))), "applied to the sublayer's input"),
    "dropout ignored": (make_residual(lambda x, s, n, d: n(x + s(x)), lambda x, s, n, d: x + s(n(x))),
                        "dropout argument is not used"),
}


@pytest.mark.parametrize("bug", RESIDUAL_BUGS)
def test_buggy_residual_fails_with_targeted_hint(bug):
    implementation, hint = RESIDUAL_BUGS[bug]
    with pytest.raises(checks.ExerciseWrong, match="Likely bug") as error:
        checks.residual(implementation)
    assert hint in str(error.value), str(error.value)


def test_residual_that_calls_dropout_none_is_told_why():
    def calls_none(x, sublayer, norm, norm_first=False, dropout=None):
        return x + dropout(sublayer(norm(x))) if norm_first else norm(x + dropout(sublayer(x)))

    with pytest.raises(checks.ExerciseWrong, match="dropout=None is called like a function"):
        checks.residual(calls_none)


def test_residual_with_pre_ln_default_is_caught():
    def pre_by_default(x, sublayer, norm, norm_first=True, dropout=None):
        return residual(x, sublayer, norm, norm_first, dropout)

    with pytest.raises(checks.ExerciseWrong, match="norm_first must default to False"):
        checks.residual(pre_by_default)


def test_residual_with_nn_dropout_module_passes_through_the_checker(capsys):
    """The learner may wrap dropout in nn.Identity; the check only needs a callable."""
    def with_identity(x, sublayer, norm, norm_first=False, dropout=None):
        dropout = nn.Identity() if dropout is None else dropout
        return x + dropout(sublayer(norm(x))) if norm_first else norm(x + dropout(sublayer(x)))

    checks.residual(with_identity)
    assert "✅" in capsys.readouterr().out
