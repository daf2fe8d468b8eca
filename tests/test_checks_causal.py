"""The chapter 07 checkers bite: the references pass, stubs are 'not attempted', and every
known-buggy causal mask and causal+padding mask fails with its targeted hint."""

import pytest
import torch

from scratchformer import checks
from scratchformer.causal import causal_mask, causal_padding_mask


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


CHECKERS = {checks.causal_mask: causal_mask, checks.causal_padding_mask: causal_padding_mask}


@pytest.mark.parametrize("checker, reference", CHECKERS.items(), ids=lambda x: getattr(x, "__name__", ""))
def test_reference_passes(checker, reference, capsys):
    for _ in range(5):  # fresh random sizes and padding every call
        checker(reference)
    assert capsys.readouterr().out.count("✅") == 5


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(stub)


def test_checkers_are_exported():
    assert {"causal_mask", "causal_padding_mask"} <= set(checks.__all__)


def test_tril_one_liner_passes_for_square_masks_and_is_told_about_alignment(capsys):
    """The textbook `torch.ones(T, S).tril().bool()` is right for T == S only."""
    with pytest.raises(checks.ExerciseWrong, match="top-left alignment"):
        checks.causal_mask(lambda T, S=None, device=None: torch.ones(T, S or T).tril().bool())


# ---- Exercise 7.1: the causal mask ------------------------------------------------------------

def _offset_mask(T, S=None, device=None, *, extra=0, flip=False, dtype=torch.bool, aligned=True):
    """A learner-style causal mask with bug switches: mask[i, j] = j <= i + (S - T) + extra."""
    S = T if S is None else S
    i = torch.arange(T)[:, None]
    j = torch.arange(S)[None, :]
    mask = j <= i + ((S - T) if aligned else 0) + extra
    if flip:
        mask = ~mask
    return mask.to(dtype)


def _additive(T, S=None, device=None):
    """The nn.Transformer habit: 0 where allowed, -inf where not."""
    keep = _offset_mask(T, S)
    return torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))


MASK_BUGS = [
    ("diagonal excluded, tril(-1)", lambda T, S=None, device=None: torch.ones(T, S or T).tril(-1 + (S or T) - T).bool(),
     "the diagonal is excluded"),
    ("strict j < i", lambda T, S=None, device=None: _offset_mask(T, S, extra=-1), "a token cannot see itself"),
    ("one step of future, tril(1)", lambda T, S=None, device=None: _offset_mask(T, S, extra=1),
     "one step of the future leaks"),
    ("triu", lambda T, S=None, device=None: torch.ones(T, S or T).triu().bool(), "polarity flipped"),
    ("nn.Transformer convention (True = masked)", lambda T, S=None, device=None: _offset_mask(T, S, flip=True),
     "polarity flipped"),
    ("top-left alignment", lambda T, S=None, device=None: _offset_mask(T, S, aligned=False), "top-left alignment"),
    ("float 0/1 mask", lambda T, S=None, device=None: _offset_mask(T, S, dtype=torch.float32), "wrong dtype"),
    ("int mask", lambda T, S=None, device=None: _offset_mask(T, S, dtype=torch.int64), "wrong dtype"),
    ("additive -inf mask", _additive, "wrong dtype"),
    ("no mask at all", lambda T, S=None, device=None: torch.ones(T, S or T, dtype=torch.bool), "all True"),
    ("S ignored", lambda T, S=None, device=None: torch.ones(T, T).tril().bool(), "S (number of keys) was ignored"),
]


@pytest.mark.parametrize("bug, implementation, hint", MASK_BUGS, ids=[b[0] for b in MASK_BUGS])
def test_buggy_causal_mask_fails_with_targeted_hint(bug, implementation, hint):
    for _ in range(3):  # every random size must catch it
        with pytest.raises(checks.ExerciseWrong) as error:
            checks.causal_mask(implementation)
        assert hint in str(error.value), str(error.value)
        assert "Likely bug" in str(error.value)


def test_wrong_mask_without_a_known_pattern_shows_expected_and_actual():
    def odd(T, S=None, device=None):
        mask = causal_mask(T, S)
        mask[-1, 0] = False
        return mask
    with pytest.raises(checks.ExerciseWrong, match="expected"):
        checks.causal_mask(odd)


def test_crashing_mask_is_reported_as_wrong():
    with pytest.raises(checks.ExerciseWrong, match="raised"):
        checks.causal_mask(lambda T, S=None, device=None: torch.ones(T, S).tril().bool())   # S=None crashes


# ---- Exercise 7.2: causal and padding masks together ------------------------------------------

def _combine(keep, T=None, *, how="and", aligned=True):
    if keep.dim() == 3:
        keep = keep[:, 0]
    B, S = keep.shape
    T = S if T is None else T
    causal = causal_mask(T, S) if aligned else torch.ones(T, S).tril().bool()
    if how == "and":
        return causal[None] & keep[:, None, :]
    if how == "or":
        return causal[None] | keep[:, None, :]
    if how == "add":      # two additive float masks: 0 = allowed, -inf = forbidden
        bias = lambda m: torch.zeros(m.shape).masked_fill(~m, float("-inf"))  # noqa: E731
        return bias(causal)[None] + bias(keep)[:, None, :]
    if how == "multiply":
        return causal.float()[None] * keep.float()[:, None, :]
    if how == "queries":
        return causal[None] & keep[:, S - T:, None]
    if how == "queries and keys":
        return causal[None] & keep[:, S - T:, None] & keep[:, None, :]
    if how == "causal only":
        return causal[None].expand(B, T, S)
    if how == "padding only":
        return keep[:, None, :].expand(B, T, S)
    raise ValueError(how)


def _no_3d(keep, T=None):
    """Right for (B, S), but a (B, 1, S) mask gets an extra axis instead of being squeezed."""
    S = keep.size(-1)
    T = S if T is None else T
    return causal_mask(T, S)[None] & keep[..., None, :] if keep.dim() == 2 else keep.new_ones(keep.size(0), 1, T, S)


PADDING_BUGS = [
    ("| instead of &", lambda k, T=None: _combine(k, T, how="or"), "| (or) instead of & (and)"),
    ("adding additive float masks", lambda k, T=None: _combine(k, T, how="add"), "combined as floats"),
    ("multiplying float masks", lambda k, T=None: _combine(k, T, how="multiply"), "combined as floats"),
    ("padding on the queries", lambda k, T=None: _combine(k, T, how="queries"), "on the queries"),
    ("padding on queries and keys", lambda k, T=None: _combine(k, T, how="queries and keys"), "Mask keys, not queries"),
    ("padding forgotten", lambda k, T=None: _combine(k, T, how="causal only"), "padding mask is ignored"),
    ("causal forgotten", lambda k, T=None: _combine(k, T, how="padding only"), "causal mask is missing"),
    ("top-left causal part", lambda k, T=None: _combine(k, T, aligned=False), "top-left aligned"),
    ("(B, 1, S) not squeezed", _no_3d, "(B, 1, S)"),
]


@pytest.mark.parametrize("bug, implementation, hint", PADDING_BUGS, ids=[b[0] for b in PADDING_BUGS])
def test_buggy_causal_padding_mask_fails_with_targeted_hint(bug, implementation, hint):
    for _ in range(3):
        with pytest.raises(checks.ExerciseWrong) as error:
            checks.causal_padding_mask(implementation)
        assert hint in str(error.value), str(error.value)


def test_known_bug_hints_say_likely_bug():
    for _, implementation, _ in PADDING_BUGS[:-1]:
        with pytest.raises(checks.ExerciseWrong, match="Likely bug"):
            checks.causal_padding_mask(implementation)
