"""The chapter-05 checkers bite: the references pass on fresh inputs, stubs are 'not attempted',
and every known-buggy implementation fails with its targeted hint."""

import pytest

from scratchformer import checks
from scratchformer.baselines import _per_layer, receptive_field, self_attention_macs


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


# ---- Exercise 5.1: receptive_field ----------------------------------------------------------

def _rf(body):
    """A learner's receptive_field: the stub's first line, then `body(kernel_sizes, dilations)`."""
    def receptive_field(kernel_sizes, dilations=1):
        kernel_sizes, dilations = _per_layer(kernel_sizes, dilations)
        return body(kernel_sizes, dilations)
    return receptive_field


def _product(ks, ds):
    result = 1
    for k in ks:
        result *= k
    return result


RF_BUGS = {
    "k*L: adds the kernel sizes": (lambda ks, ds: sum(ks), "added the kernel sizes"),
    "k*d per layer": (lambda ks, ds: sum(k * d for k, d in zip(ks, ds)), "added k·d per layer"),
    "forgets the dilation": (lambda ks, ds: 1 + sum(k - 1 for k in ks), "dilation is ignored"),
    "off by one: no +1": (lambda ks, ds: sum((k - 1) * d for k, d in zip(ks, ds)), "off by one: one too small"),
    "off by one: +2": (lambda ks, ds: 2 + sum((k - 1) * d for k, d in zip(ks, ds)), "off by one: one too large"),
    "+1 per layer": (lambda ks, ds: len(ks) + sum((k - 1) * d for k, d in zip(ks, ds)), "added 1 per layer"),
    "multiplies kernel sizes": (_product, "multiplied the kernel sizes"),
    "last layer only": (lambda ks, ds: 1 + (ks[-1] - 1) * ds[-1] if ks else 1, "only one layer is counted"),
}


@pytest.mark.parametrize("bug", RF_BUGS)
def test_buggy_receptive_field_fails_with_targeted_hint(bug):
    body, hint = RF_BUGS[bug]
    with pytest.raises(checks.ExerciseWrong, match="Likely bug") as error:
        checks.receptive_field(_rf(body))
    assert hint in str(error.value), str(error.value)


def test_receptive_field_other_wrong_answers_get_the_formula():
    with pytest.raises(checks.ExerciseWrong, match=r"1 \+ Σ_l \(k_l - 1\) · d_l") as error:
        checks.receptive_field(_rf(lambda ks, ds: 3 * sum(ks) + 7))
    assert "Likely bug" not in str(error.value)


def test_receptive_field_returning_a_list_is_wrong():
    with pytest.raises(checks.ExerciseWrong, match="should be a number"):
        checks.receptive_field(_rf(lambda ks, ds: [(k - 1) * d for k, d in zip(ks, ds)]))


def test_receptive_field_dropping_the_int_shorthand_is_caught():
    def no_shorthand(kernel_sizes, dilations=1):  # assumes lists, loses the stub's first line
        if isinstance(kernel_sizes, int):
            kernel_sizes = [kernel_sizes]
        if isinstance(dilations, int):
            dilations = [dilations]
        return 1 + sum((k - 1) * d for k, d in zip(kernel_sizes, dilations))
    with pytest.raises(checks.ExerciseWrong, match="first line"):
        checks.receptive_field(no_shorthand)


def test_receptive_field_crash_is_reported_as_wrong():
    with pytest.raises(checks.ExerciseWrong, match="IndexError"):
        checks.receptive_field(_rf(lambda ks, ds: ks[0] * 0 + 1 + sum((k - 1) * d for k, d in zip(ks, ds))))  # ks[0]: fails on the empty stack


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


MACS_BUGS = {
    "FLOPs instead of MACs": (lambda n, dm, dk, dv: 2 * (_projections(n, dm, dk, dv) + n * n * (dk + dv)),
                              "you counted FLOPs"),
    "projections only (n·d²)": (_projections, "only the projections"),
    "no projections": (lambda n, dm, dk, dv: n * n * (dk + dv), "three projections"),
    "forgets P V": (lambda n, dm, dk, dv: _projections(n, dm, dk, dv) + n * n * dk, "P V is missing"),
    "forgets Q Kᵀ": (lambda n, dm, dk, dv: _projections(n, dm, dk, dv) + n * n * dv, "Q Kᵀ are missing"),
    "n instead of n²": (lambda n, dm, dk, dv: _projections(n, dm, dk, dv) + n * dk + n * dv,
                        "pair every query with every key"),
    "d_model everywhere": (lambda n, dm, dk, dv: 3 * n * dm * dm + 2 * n * n * dm, "used d_model"),
    "V projection with d_k": (lambda n, dm, dk, dv: 3 * n * dm * dk + n * n * (dk + dv), "W_V is d_model × d_v"),
    "P V with d_k": (lambda n, dm, dk, dv: _projections(n, dm, dk, dv) + 2 * n * n * dk, "not n·n·d_k"),
    "one projection": (lambda n, dm, dk, dv: n * dm * dk + n * n * (dk + dv), "only one projection"),
}


@pytest.mark.parametrize("bug", MACS_BUGS)
def test_buggy_self_attention_macs_fails_with_targeted_hint(bug):
    body, hint = MACS_BUGS[bug]
    with pytest.raises(checks.ExerciseWrong, match="Likely bug") as error:
        checks.self_attention_macs(_macs(body))
    assert hint in str(error.value), str(error.value)


def test_self_attention_macs_other_wrong_answers_get_the_formula():
    with pytest.raises(checks.ExerciseWrong, match="a·b·c multiply-adds") as error:
        checks.self_attention_macs(_macs(lambda n, dm, dk, dv: n * dm * dk * dv))
    assert "Likely bug" not in str(error.value)


def test_self_attention_macs_wrong_defaults_are_caught():
    def no_defaults(n, d_model, d_k=None, d_v=None):
        d_k, d_v = d_k or 1, d_v or 1  # wrong defaults
        return n * d_model * (2 * d_k + d_v) + n * n * (d_k + d_v)
    with pytest.raises(checks.ExerciseWrong, match="defaults"):
        checks.self_attention_macs(no_defaults)


def test_self_attention_macs_returning_none_is_wrong():
    with pytest.raises(checks.ExerciseWrong, match="should be a number"):
        checks.self_attention_macs(_macs(lambda n, dm, dk, dv: None))
