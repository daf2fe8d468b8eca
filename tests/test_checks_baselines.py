"""The chapter-05 checkers bite: the references pass on fresh inputs, stubs are 'not attempted',
every buggy implementation fails with its targeted hint (named only when one explanation fits
every probe), and correct answers written differently, or returned as NumPy or 0-d tensor
integers, pass."""

import math

import numpy as np
import pytest
import torch

from scratchformer import checks
from scratchformer.baselines import receptive_field, self_attention_macs
from scratchformer.shapes import per_layer


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


CHECKERS = {checks.receptive_field: receptive_field, checks.self_attention_macs: self_attention_macs}


@pytest.mark.parametrize("checker, reference", CHECKERS.items(), ids=lambda x: getattr(x, "__name__", ""))
def test_reference_passes(checker, reference, capsys):
    for _ in range(3):  # fresh random inputs every call
        checker(reference)
    assert capsys.readouterr().out.count("✅") == 3


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(stub)


def _rejects(checker, implementation, hint, draws=3):
    for _ in range(draws):
        with pytest.raises(checks.ExerciseWrong) as error:
            checker(implementation)
        assert hint in str(error.value), str(error.value)
    return str(error.value)


# ---- Exercise 5.1: receptive_field ----------------------------------------------------------

def _rf(body):
    """A learner's receptive_field: the stub's first line, then `body(kernel_sizes, dilations)`."""
    def receptive_field(kernel_sizes, dilations=1):
        kernel_sizes, dilations = per_layer(kernel_sizes, dilations)
        return body(kernel_sizes, dilations)
    return receptive_field


def _right(ks, ds):
    return 1 + sum((k - 1) * d for k, d in zip(ks, ds))


def _int32_sum(ks, ds):
    """Accumulates in a 32-bit integer tensor: wraps around past 2^31."""
    r = torch.tensor(1, dtype=torch.int32)
    for k, d in zip(ks, ds):
        r = r + (k - 1) * d
    return r


def _sum_ks_when_contiguous(ks, ds):
    """Adds kernel sizes when every dilation is 1, right otherwise: no single bug fits."""
    return sum(ks) if ks and all(d == 1 for d in ds) else _right(ks, ds)


RF_BUGS = [
    # (name, body, hint)
    ("k*L: adds the kernel sizes", lambda ks, ds: sum(ks), "added the kernel sizes"),
    ("k*d per layer", lambda ks, ds: sum(k * d for k, d in zip(ks, ds)), "added k·d per layer"),
    ("forgets the dilation", lambda ks, ds: 1 + sum(k - 1 for k in ks), "dilation is ignored"),
    ("off by one: no +1", lambda ks, ds: _right(ks, ds) - 1, "off by one: one too small"),
    ("off by one: +2", lambda ks, ds: _right(ks, ds) + 1, "off by one: one too large"),
    ("+1 per layer", lambda ks, ds: len(ks) + _right(ks, ds) - 1, "added the span (k - 1)·d + 1"),
    ("multiplies kernel sizes", lambda ks, ds: math.prod(ks), "multiplied the kernel sizes"),
    ("multiplies the spans", lambda ks, ds: math.prod((k - 1) * d + 1 for k, d in zip(ks, ds)),
     "multiplied the spans"),
    ("last layer only", lambda ks, ds: 1 + (ks[-1] - 1) * ds[-1] if ks else 1, "only the last layer"),
    ("first layer only", lambda ks, ds: 1 + (ks[0] - 1) * ds[0] if ks else 1, "only the first layer"),
    ("int32 overflow", _int32_sum, "integer overflow"),
    # return types and exceptions
    ("float", lambda ks, ds: float(_right(ks, ds)), "return an int"),
    ("float tensor", lambda ks, ds: torch.tensor(float(_right(ks, ds))), "float tensor"),
    ("list", lambda ks, ds: [(k - 1) * d for k, d in zip(ks, ds)], "should be an int"),
    ("None", lambda ks, ds: None, "should be an int"),
    ("bool", lambda ks, ds: True, "should be an int"),
    ("crash on the empty stack", lambda ks, ds: ks[0] * 0 + _right(ks, ds), "raised IndexError"),
]


@pytest.mark.parametrize("bug, body, hint", RF_BUGS, ids=[b[0] for b in RF_BUGS])
def test_buggy_receptive_field_fails_with_targeted_hint(bug, body, hint):
    _rejects(checks.receptive_field, _rf(body), hint)


@pytest.mark.parametrize("body", [
    lambda ks, ds: 3 * sum(ks) + 7,
    _sum_ks_when_contiguous,
], ids=["unknown formula", "kernel sizes added for contiguous stacks only"])
def test_receptive_field_names_no_bug_unless_one_fits_every_stack(body):
    message = _rejects(checks.receptive_field, _rf(body), "expected")
    assert "Likely bug" not in message
    assert "one layer at a time" in message


def test_receptive_field_with_a_single_coinciding_number_names_no_bug():
    """On [3, 3, 3] with dilations 1, 'sum of the kernel sizes' and '+1 per layer' both give 9;
    a learner who is wrong there and right everywhere else gets no hint."""
    def wrong_on_one_stack(ks, ds):
        return 9 if (ks, ds) == ([3, 3, 3], [1, 1, 1]) else _right(ks, ds)
    message = _rejects(checks.receptive_field, _rf(wrong_on_one_stack), "you return 9, expected 7")
    assert "Likely bug" not in message


def test_receptive_field_dropping_the_int_shorthand_is_caught():
    def no_shorthand(kernel_sizes, dilations=1):  # assumes lists, loses the stub's first line
        if isinstance(kernel_sizes, int):
            kernel_sizes = [kernel_sizes]
        if isinstance(dilations, int):
            dilations = [dilations]
        return 1 + sum((k - 1) * d for k, d in zip(kernel_sizes, dilations))
    _rejects(checks.receptive_field, no_shorthand, "first line")


@pytest.mark.parametrize("body", [
    lambda ks, ds: np.int64(_right(ks, ds)),                             # NumPy integer
    lambda ks, ds: torch.tensor(_right(ks, ds)),                         # 0-d int64 tensor
    lambda ks, ds: int(1 + ((torch.tensor(ks, dtype=torch.int64) - 1)
                            * torch.tensor(ds, dtype=torch.int64)).sum()) if ks else 1,
    lambda ks, ds: 1 + np.dot(np.array(ks, dtype=np.int64) - 1, np.array(ds, dtype=np.int64)) if ks else 1,
    lambda ks, ds: _stacked_window(ks, ds),
], ids=["numpy int", "0-d tensor", "torch int64", "numpy dot", "layer by layer"])
def test_receptive_field_correct_answers_written_differently_pass(body, capsys):
    checks.receptive_field(_rf(body))
    assert "✅" in capsys.readouterr().out


def _stacked_window(ks, ds):
    """Grow the window [-a, b] layer by layer, as a learner might draw it."""
    left = right = 0
    for k, d in zip(ks, ds):
        half = (k - 1) * d
        left += half // 2
        right += half - half // 2
    return left + right + 1


# ---- Exercise 5.2: self_attention_macs ------------------------------------------------------

def _macs(body):
    """A learner's self_attention_macs: the stub's default lines, then `body(n, dm, dk, dv)`."""
    def self_attention_macs(n, d_model, d_k=None, d_v=None):
        d_k = d_model if d_k is None else d_k
        d_v = d_k if d_v is None else d_v
        return body(n, d_model, d_k, d_v)
    return self_attention_macs


def _projections(n, dm, dk, dv):
    return n * dm * (2 * dk + dv)


def _total(n, dm, dk, dv):
    return _projections(n, dm, dk, dv) + n * n * (dk + dv)


def _int32_macs(n, dm, dk, dv):
    n, dm, dk, dv = (torch.tensor(v, dtype=torch.int32) for v in (n, dm, dk, dv))
    return n * dm * (2 * dk + dv) + n * n * (dk + dv)


def _flops_for_long_sequences(n, dm, dk, dv):
    """FLOPs when n > 1, MACs for one token: no single bug fits every probe."""
    return _total(n, dm, dk, dv) * (2 if n > 1 else 1)


MACS_BUGS = [
    ("FLOPs instead of MACs", lambda n, dm, dk, dv: 2 * _total(n, dm, dk, dv), "you counted FLOPs"),
    ("projections only (n·d²)", _projections, "only the projections"),
    ("no projections", lambda n, dm, dk, dv: n * n * (dk + dv), "three projections"),
    ("forgets P V", lambda n, dm, dk, dv: _projections(n, dm, dk, dv) + n * n * dk, "P V is missing"),
    ("forgets Q Kᵀ", lambda n, dm, dk, dv: _projections(n, dm, dk, dv) + n * n * dv, "Q Kᵀ are missing"),
    ("n instead of n²", lambda n, dm, dk, dv: _projections(n, dm, dk, dv) + n * dk + n * dv,
     "pair every query with every key"),
    ("d_model everywhere", lambda n, dm, dk, dv: 3 * n * dm * dm + 2 * n * n * dm, "used d_model"),
    ("V projection with d_k", lambda n, dm, dk, dv: 3 * n * dm * dk + n * n * (dk + dv), "W_V is d_model × d_v"),
    ("P V with d_k", lambda n, dm, dk, dv: _projections(n, dm, dk, dv) + 2 * n * n * dk, "not d_k"),
    ("one projection", lambda n, dm, dk, dv: n * dm * dk + n * n * (dk + dv), "only one projection"),
    ("scaling counted", lambda n, dm, dk, dv: _total(n, dm, dk, dv) + n * n, "scaling by 1/sqrt(d_k)"),
    ("output projection counted", lambda n, dm, dk, dv: _total(n, dm, dk, dv) + n * dv * dm,
     "output projection"),
    ("int32 overflow", _int32_macs, "integer overflow"),
    # return types and exceptions
    ("float", lambda n, dm, dk, dv: _total(n, dm, dk, dv) / 1, "return an int"),
    ("float tensor", lambda n, dm, dk, dv: torch.tensor(_total(n, dm, dk, dv), dtype=torch.float64),
     "float tensor"),
    ("None", lambda n, dm, dk, dv: None, "should be an int"),
    ("tuple of terms", lambda n, dm, dk, dv: (_projections(n, dm, dk, dv), n * n * (dk + dv)),
     "should be an int"),
    ("crash", lambda n, dm, dk, dv: {"n": n}["d"], "raised KeyError"),
]


@pytest.mark.parametrize("bug, body, hint", MACS_BUGS, ids=[b[0] for b in MACS_BUGS])
def test_buggy_self_attention_macs_fails_with_targeted_hint(bug, body, hint):
    _rejects(checks.self_attention_macs, _macs(body), hint)


@pytest.mark.parametrize("body", [
    lambda n, dm, dk, dv: n * dm * dk * dv,
    _flops_for_long_sequences,
], ids=["unknown formula", "FLOPs except for one token"])
def test_self_attention_macs_names_no_bug_unless_one_fits_every_size(body):
    message = _rejects(checks.self_attention_macs, _macs(body), "expected")
    assert "Likely bug" not in message
    assert "a·b·c multiply-adds" in message


def test_self_attention_macs_wrong_defaults_are_caught():
    def no_defaults(n, d_model, d_k=None, d_v=None):
        d_k, d_v = d_k or 1, d_v or 1  # wrong defaults
        return _total(n, d_model, d_k, d_v)
    _rejects(checks.self_attention_macs, no_defaults, "defaults")


@pytest.mark.parametrize("body", [
    lambda n, dm, dk, dv: np.int64(_total(n, dm, dk, dv)),
    lambda n, dm, dk, dv: torch.tensor(_total(n, dm, dk, dv)),
    lambda n, dm, dk, dv: n * (dm * (2 * dk + dv) + n * (dk + dv)),
    lambda n, dm, dk, dv: sum(math.prod(shape) for shape in
                              [(n, dm, dk), (n, dm, dk), (n, dm, dv), (n, dk, n), (n, n, dv)]),
], ids=["numpy int", "0-d tensor", "factored", "sum over product shapes"])
def test_self_attention_macs_correct_answers_written_differently_pass(body, capsys):
    checks.self_attention_macs(_macs(body))
    assert "✅" in capsys.readouterr().out


def test_variant_counts():
    """What the report quotes: buggy variants each checker rejects."""
    assert len(RF_BUGS) + 3 + 1 == 21
    assert len(MACS_BUGS) + 2 + 1 == 21
