"""The chapter 07 checkers bite: the references and other correct constructions pass, stubs are
'not attempted', and buggy masks of every class fail with their targeted hint (a hint only when
one explanation fits every probe)."""

import numpy as np
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


def test_checkers_are_exported_and_registered():
    assert {"causal_mask", "causal_padding_mask"} <= set(checks.__all__)
    assert checks.REGISTRY["causal_mask"] == ("7.1", "scratchformer.causal")
    assert checks.REGISTRY["causal_padding_mask"] == ("7.2", "scratchformer.causal")


# ---- Exercise 7.1: the causal mask ------------------------------------------------------------

def _offset_mask(T, S=None, device=None, *, extra=0, flip=False, dtype=torch.bool, offset=None):
    """A learner-style causal mask with bug switches: mask[i, j] = j <= i + offset + extra."""
    S = T if S is None else S
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    mask = j <= i + ((S - T) if offset is None else offset(T, S)) + extra
    if flip:
        mask = ~mask
    return mask.to(dtype)


def _additive(T, S=None, device=None):
    """The nn.Transformer habit: 0 where allowed, -inf where not."""
    keep = _offset_mask(T, S)
    return torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))


def _no_device(T, S=None, device=None):
    S = T if S is None else S
    return torch.ones(T, S, dtype=torch.bool).tril(S - T)


def _python_loops(T, S=None, device=None):
    """Correct, built entry by entry."""
    S = T if S is None else S
    mask = torch.zeros(T, S, dtype=torch.bool, device=device)
    for i in range(T):
        for j in range(S):
            mask[i, j] = j <= i + S - T
    return mask


def _sanity_check_on_values(T, S=None, device=None):
    """Correct values, but an assert reads them: fails on a device without values."""
    mask = _offset_mask(T, S, device)
    assert mask[-1].all().item(), "the last query sees every key"
    return mask


def _diagonal_bug_on_squares_only(T, S=None, device=None):
    """Ambiguous on purpose: looks like 'diagonal excluded' on square masks, right otherwise."""
    S = T if S is None else S
    return _offset_mask(T, S, device, extra=-1 if S == T else 0)


MASK_BUGS = [   # (class, name, implementation, hint)
    ("values", "diagonal excluded, tril(-1)",
     lambda T, S=None, device=None: torch.ones(T, S or T).tril(-1 + (S or T) - T).bool(), "the diagonal is excluded"),
    ("values", "strict j < i", lambda T, S=None, device=None: _offset_mask(T, S, extra=-1), "a token cannot see itself"),
    ("values", "one step of future, tril(1)", lambda T, S=None, device=None: _offset_mask(T, S, extra=1),
     "one step of the future leaks"),
    ("values", "triu", lambda T, S=None, device=None: torch.ones(T, S or T).triu().bool(), "polarity flipped"),
    ("values", "nn.Transformer convention (True = masked)",
     lambda T, S=None, device=None: _offset_mask(T, S, flip=True), "polarity flipped"),
    ("values", "top-left alignment", lambda T, S=None, device=None: _offset_mask(T, S, offset=lambda T, S: 0),
     "top-left alignment"),
    ("values", "offset sign flipped", lambda T, S=None, device=None: _offset_mask(T, S, offset=lambda T, S: T - S),
     "wrong sign"),
    ("values", "no mask at all", lambda T, S=None, device=None: torch.ones(T, S or T, dtype=torch.bool), "all True"),
    ("shape", "S ignored", lambda T, S=None, device=None: torch.ones(T, T).tril().bool(),
     "S (number of keys) was ignored"),
    ("shape / swapped order", "transposed (S, T)",
     lambda T, S=None, device=None: _offset_mask(T, S).T.contiguous(), "rows and columns are swapped"),
    ("dtype", "float 0/1 mask", lambda T, S=None, device=None: _offset_mask(T, S, dtype=torch.float32), "wrong dtype"),
    ("dtype", "float16 mask", lambda T, S=None, device=None: _offset_mask(T, S, dtype=torch.float16), "wrong dtype"),
    ("dtype", "int mask", lambda T, S=None, device=None: _offset_mask(T, S, dtype=torch.int64), "wrong dtype"),
    ("dtype", "additive -inf mask", _additive, "wrong dtype"),
    ("device", "device ignored", _no_device, "not created on the requested device"),
]


@pytest.mark.parametrize("kind, bug, implementation, hint", MASK_BUGS, ids=[b[1] for b in MASK_BUGS])
def test_buggy_causal_mask_fails_with_targeted_hint(kind, bug, implementation, hint):
    for _ in range(3):  # every random size must catch it
        with pytest.raises(checks.ExerciseWrong) as error:
            checks.causal_mask(implementation)
        assert hint in str(error.value), str(error.value)
        assert "Likely bug" in str(error.value)


def test_a_bug_no_single_explanation_fits_gets_no_hint_but_the_masks():
    """Class 10: 'diagonal excluded' on square masks only is not named; expected and actual shown."""
    for _ in range(3):
        with pytest.raises(checks.ExerciseWrong) as error:
            checks.causal_mask(_diagonal_bug_on_squares_only)
        assert "Likely bug" not in str(error.value) and "expected" in str(error.value)


def test_wrong_mask_without_a_known_pattern_shows_expected_and_actual():
    def odd(T, S=None, device=None):
        mask = causal_mask(T, S)
        mask[-1, 0] = False
        return mask
    with pytest.raises(checks.ExerciseWrong, match="expected"):
        checks.causal_mask(odd)


@pytest.mark.parametrize("implementation, text", [
    (lambda T, S=None, device=None: torch.ones(T, S).tril().bool(), "raised TypeError"),      # S=None crashes
    (lambda T, S=None, device=None: _offset_mask(T, S).numpy(), "return a torch.Tensor"),
    (lambda T, S=None, device=None: _offset_mask(T, S).tolist(), "return a torch.Tensor"),
    (_sanity_check_on_values, "meta"),                          # reads values: not on 'meta'
], ids=["crash", "numpy", "list", "values on the device"])
def test_crashes_and_other_return_types_are_wrong_with_the_reason(implementation, text):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.causal_mask(implementation)
    assert text in str(error.value), str(error.value)


def test_the_learner_line_is_named():
    def crashes(T, S=None, device=None):
        S = T if S is None else S
        return torch.arange(T)[:, None] <= torch.arange(S)[None, :, None] + S - T + None   # noqa
    with pytest.raises(checks.ExerciseWrong, match=r"raised TypeError \(line \d+: `return"):
        checks.causal_mask(crashes)


CORRECT_MASKS = [
    ("tril with an offset", lambda T, S=None, device=None:
        torch.ones(T, S or T, dtype=torch.bool, device=device).tril((S or T) - T)),
    ("not triu", lambda T, S=None, device=None:
        ~torch.ones(T, S or T, dtype=torch.bool, device=device).triu((S or T) - T + 1)),
    ("torch.tril of ones, then bool", lambda T, S=None, device=None:
        torch.tril(torch.ones(T, S or T, device=device), diagonal=(S or T) - T).bool()),
    ("meshgrid", lambda T, S=None, device=None: (lambda i, j: i - j >= T - (S or T))(*torch.meshgrid(
        torch.arange(T, device=device), torch.arange(S or T, device=device), indexing="ij"))),
    ("Python loops", _python_loops),
    ("numpy ints", lambda T, S=None, device=None: causal_mask(int(np.int64(T)), None if S is None else int(np.int64(S)),
                                                              device=device)),
]


@pytest.mark.parametrize("implementation", [c[1] for c in CORRECT_MASKS], ids=[c[0] for c in CORRECT_MASKS])
def test_equivalent_constructions_pass(implementation, capsys):
    for _ in range(3):
        checks.causal_mask(implementation)
    assert capsys.readouterr().out.count("✅") == 3


# ---- Exercise 7.2: causal and padding masks together ------------------------------------------

def _combine(keep, T=None, *, how="and", causal_fn=causal_mask):
    keep = keep.reshape(keep.size(0), keep.size(-1))
    B, S = keep.shape
    T = S if T is None else T
    causal = causal_fn(T, S).to(keep.device)
    queries = keep[:, S - T:, None]
    keys = keep[:, None, :]
    if how == "and":
        return causal[None] & keys
    if how == "or":
        return causal[None] | keys
    if how == "add":      # two additive float masks: 0 = allowed, -inf = forbidden
        bias = lambda m: torch.zeros(m.shape).masked_fill(~m, float("-inf"))  # noqa: E731
        return bias(causal)[None] + bias(keys)
    if how == "multiply":
        return causal.float()[None] * keys.float()
    if how == "int":
        return (causal[None] & keys).int()
    if how == "queries":
        return causal[None] & queries
    if how == "queries and keys":
        return causal[None] & queries & keys
    if how == "causal only":
        return causal[None].expand(B, T, S)
    if how == "padding only":
        return keys.expand(B, T, S)
    if how == "transposed":
        return (causal[None] & keys).transpose(1, 2)
    if how == "empty rows: diagonal":
        mask = causal[None] & keys
        empty = ~mask.any(-1, keepdim=True)
        diagonal = torch.arange(S)[None, :] == torch.arange(T)[:, None] + S - T
        return mask | (empty & diagonal)
    if how == "empty rows: every key":
        mask = causal[None] & keys
        return mask | ~mask.any(-1, keepdim=True)
    if how == "empty rows: first key":
        mask = causal[None] & keys
        mask[..., 0] |= ~mask.any(-1)
        return mask
    raise ValueError(how)


def _no_3d(keep, T=None):
    """Right for (B, S), but a (B, 1, S) mask gets an extra axis instead of being squeezed."""
    S = keep.size(-1)
    T = S if T is None else T
    return causal_mask(T, S, keep.device) & keep[..., None, :]


def _in_place(keep, T=None):
    """Changes `keep` in place on the way ('every sequence has at least one real token')."""
    keep2d = keep.reshape(keep.size(0), keep.size(-1))       # a view of keep
    keep2d[:, 0] = True
    return _combine(keep2d, T)


def _device_ignored(keep, T=None):
    keep = keep.reshape(keep.size(0), keep.size(-1))
    S = keep.size(1)
    return causal_mask(S if T is None else T, S)[None] & keep[:, None, :]


def _causal_diagonal_excluded(T, S=None, device=None):
    S = T if S is None else S
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T - 1)


def _top_left(T, S=None, device=None):
    return torch.ones(T, S or T, dtype=torch.bool, device=device).tril()


PADDING_BUGS = [   # (class, name, implementation, hint)
    ("values", "| instead of &", lambda k, T=None: _combine(k, T, how="or"), "| (or) instead of & (and)"),
    ("dtype", "adding additive float masks", lambda k, T=None: _combine(k, T, how="add"), "combined as floats"),
    ("dtype", "multiplying float masks", lambda k, T=None: _combine(k, T, how="multiply"), "combined as floats"),
    ("dtype", "int mask", lambda k, T=None: _combine(k, T, how="int"), "wrong dtype"),
    ("values", "padding on the queries", lambda k, T=None: _combine(k, T, how="queries"), "on the queries"),
    ("values", "padding on queries and keys", lambda k, T=None: _combine(k, T, how="queries and keys"),
     "Mask keys, not queries"),
    ("values", "padding forgotten", lambda k, T=None: _combine(k, T, how="causal only"), "padding mask is ignored"),
    ("values", "causal forgotten", lambda k, T=None: _combine(k, T, how="padding only"), "causal mask is missing"),
    ("values", "top-left causal part", lambda k, T=None: _combine(k, T, causal_fn=_top_left), "top-left aligned"),
    ("values", "causal part with the diagonal excluded",
     lambda k, T=None: _combine(k, T, causal_fn=_causal_diagonal_excluded), "Check Exercise 7.1 first"),
    ("empty rows", "empty rows given the diagonal", lambda k, T=None: _combine(k, T, how="empty rows: diagonal"),
     "given keys anyway"),
    ("empty rows", "empty rows given every key", lambda k, T=None: _combine(k, T, how="empty rows: every key"),
     "given keys anyway"),
    ("empty rows", "empty rows given the first key", lambda k, T=None: _combine(k, T, how="empty rows: first key"),
     "given keys anyway"),
    ("mask shapes", "(B, 1, S) not squeezed", _no_3d, "(B, 1, S)"),
    ("shape / swapped order", "query and key axes swapped", lambda k, T=None: _combine(k, T, how="transposed"),
     "axes are swapped"),
    ("inputs unchanged", "keep modified in place", _in_place, "changed its input `keep` in place"),
    ("device", "causal part on the CPU", _device_ignored, "device=keep.device"),
]


@pytest.mark.parametrize("kind, bug, implementation, hint", PADDING_BUGS, ids=[b[1] for b in PADDING_BUGS])
def test_buggy_causal_padding_mask_fails_with_targeted_hint(kind, bug, implementation, hint):
    for _ in range(3):
        with pytest.raises(checks.ExerciseWrong) as error:
            checks.causal_padding_mask(implementation)
        assert hint in str(error.value), str(error.value)
        assert "Likely bug" in str(error.value) or kind == "inputs unchanged"


def test_a_padding_bug_no_single_explanation_fits_gets_no_hint():
    """Right except for left-padded sequences, where the whole row of the first real token is lost."""
    def odd(keep, T=None):
        mask = _combine(keep, T)
        left = ~keep.reshape(keep.size(0), -1)[:, 0] & keep.reshape(keep.size(0), -1).any(-1)
        mask[left, -1, -1] = False
        return mask
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.causal_padding_mask(odd)
    assert "Likely bug" not in str(error.value) and "expected" in str(error.value)


def test_crash_is_wrong_with_the_exception_and_line():
    def crashes(keep, T=None):
        return causal_mask(T, keep.size(-1)) & keep[:, None, :]     # T=None crashes
    with pytest.raises(checks.ExerciseWrong, match=r"raised ValueError \(line \d+: `return causal_mask"):
        checks.causal_padding_mask(crashes)


CORRECT_PADDING = [
    ("logical_and", lambda keep, T=None: torch.logical_and(
        causal_mask(T or keep.size(-1), keep.size(-1), device=keep.device)[None],
        keep.reshape(len(keep), 1, keep.size(-1)))),
    ("where", lambda keep, T=None: torch.where(
        keep.view(keep.size(0), 1, keep.size(-1)),
        causal_mask(T or keep.size(-1), keep.size(-1), device=keep.device), False)),
    ("unsqueeze and expand", lambda keep, T=None: (lambda k: k.unsqueeze(1).expand(
        -1, T or k.size(1), -1) & causal_mask(T or k.size(1), k.size(1), device=k.device).unsqueeze(0))(
        keep.squeeze(1) if keep.dim() == 3 else keep)),
    ("bool product", lambda keep, T=None: (causal_mask(T or keep.size(-1), keep.size(-1), device=keep.device)
                                           * keep.reshape(keep.size(0), 1, -1)).bool()),
]


@pytest.mark.parametrize("implementation", [c[1] for c in CORRECT_PADDING], ids=[c[0] for c in CORRECT_PADDING])
def test_equivalent_padding_masks_pass(implementation, capsys):
    for _ in range(3):
        checks.causal_padding_mask(implementation)
    assert capsys.readouterr().out.count("✅") == 3
