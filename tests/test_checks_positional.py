"""The chapter 04 checkers bite: the references pass, stubs are 'not attempted', and every
known-buggy sinusoidal table and rotation fails with its targeted hint."""

import math

import pytest
import torch
from einops import rearrange

from scratchformer import checks
from scratchformer.positional import rotate_pairs, sinusoidal_table


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


CHECKERS = {checks.sinusoidal_table: sinusoidal_table, checks.rotate_pairs: rotate_pairs}


@pytest.mark.parametrize("checker, reference", CHECKERS.items(), ids=lambda x: getattr(x, "__name__", ""))
def test_reference_passes(checker, reference, capsys):
    for _ in range(4):  # fresh random sizes and inputs every call
        checker(reference)
    assert capsys.readouterr().out.count("✅") == 4


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(stub)


def test_checkers_are_exported():
    assert {"sinusoidal_table", "rotate_pairs"} <= set(checks.__all__)


# ---- Exercise 4.1: the sinusoidal table --------------------------------------------------------

def _table(length, d_model, *, base=10000.0, frequency="2i", swap=False, layout="interleaved", first=0,
           transpose=False, divide=True, dtype=torch.float32):
    """A learner-style implementation (pe[:, 0::2] = sin, pe[:, 1::2] = cos) with bug switches."""
    pos = torch.arange(first, first + length, dtype=torch.float32)[:, None]      # (T, 1)
    two_i = torch.arange(0, d_model, 2)                                           # 0, 2, 4, ...
    exponent = {"2i": two_i / d_model, "i": (two_i // 2) / d_model, "int": two_i // d_model}[frequency]
    div = base ** exponent
    angles = pos / div if divide else pos * div                                   # (T, ceil(D/2))
    first_fn, second_fn = (torch.cos, torch.sin) if swap else (torch.sin, torch.cos)
    if layout == "halves":
        pe = torch.cat([first_fn(angles), second_fn(angles[:, : d_model // 2])], dim=1)
    else:
        pe = torch.zeros(length, d_model)
        pe[:, 0::2] = first_fn(angles)
        pe[:, 1::2] = second_fn(angles[:, : d_model // 2])
    pe = pe.to(dtype)
    return pe.T if transpose else pe


def _per_column_exponent(length, d_model):
    """Each column j uses pos / 10000^(j/d): the cos of a pair gets a different frequency."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    j = torch.arange(d_model)
    angles = pos / 10000 ** (j / d_model)
    return torch.where(j % 2 == 0, angles.sin(), angles.cos())


def _even_only(length, d_model):
    """Works for even d_model, crashes with a shape error for odd d_model."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = 10000 ** (torch.arange(0, d_model, 2) / d_model)
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos / div)
    pe[:, 1::2] = torch.cos(pos / div)
    return pe


TABLE_BUGS = [
    ("sin/cos swapped", lambda n, d: _table(n, d, swap=True), "sin and cos swapped"),
    ("i instead of 2i", lambda n, d: _table(n, d, frequency="i"), "uses i instead of 2i"),
    ("transposed", lambda n, d: _table(n, d, transpose=True), "positions and dimensions swapped"),
    ("base 1000", lambda n, d: _table(n, d, base=1000.0), "base 1000 instead of 10000"),
    ("own index per column", _per_column_exponent, "share one frequency"),
    ("integer division", lambda n, d: _table(n, d, frequency="int"), "integer division"),
    ("multiply instead of divide", lambda n, d: _table(n, d, divide=False), "instead of dividing"),
    ("sin half, cos half", lambda n, d: _table(n, d, layout="halves"), "tensor2tensor layout"),
    ("positions from 1", lambda n, d: _table(n, d, first=1), "positions start at 1"),
    ("integer dtype", lambda n, d: _table(n, d, dtype=torch.int64), "must be floating point"),
    ("odd d_model crashes", _even_only, "odd d_model not handled"),
    ("returns a list", lambda n, d: _table(n, d).tolist(), "should be a torch.Tensor"),
]


@pytest.mark.parametrize("bug, implementation, hint", TABLE_BUGS, ids=[b[0] for b in TABLE_BUGS])
def test_buggy_sinusoidal_table_fails_with_targeted_hint(bug, implementation, hint):
    for _ in range(3):  # the hint must fire for every random size the checker draws
        with pytest.raises(checks.ExerciseWrong) as error:
            checks.sinusoidal_table(implementation)
        assert hint in str(error.value), str(error.value)


def test_float64_table_is_accepted(capsys):
    checks.sinusoidal_table(lambda n, d: sinusoidal_table(n, d).double())
    assert "✅" in capsys.readouterr().out


def test_unknown_table_bug_gets_the_generic_hint():
    with pytest.raises(checks.ExerciseWrong, match="differs from the reference") as error:
        checks.sinusoidal_table(lambda n, d: 0.5 * sinusoidal_table(n, d))
    assert "sin(pos / 10000^(2i/d_model))" in str(error.value)


# ---- Exercise 4.2: rotating pairs --------------------------------------------------------------

def _rotate(x, positions, base=10000.0, *, sign=1.0, pairing="interleaved", use_position=True,
            frequency="2i", ignore_base=False, ignore_positions=False):
    """A learner-style rotary embedding with bug switches."""
    Dh = x.size(-1)
    if ignore_base:
        base = 10000.0
    exponent = torch.arange(0, Dh, 2) / Dh if frequency == "2i" else torch.arange(Dh // 2) / Dh
    theta = base ** -exponent                                                   # (Dh/2,)
    if ignore_positions:
        positions = torch.arange(x.size(-2))
    angles = positions.float()[:, None] * theta if use_position else theta.expand(x.size(-2), -1)
    cos, sin = angles.cos(), sign * angles.sin()
    if pairing == "half":
        x1, x2 = x[..., : Dh // 2], x[..., Dh // 2:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    pairs = rearrange(x, "... (p two) -> ... p two", two=2)
    x1, x2 = pairs[..., 0], pairs[..., 1]
    return rearrange(torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1), "... p two -> ... (p two)")


def _not_a_rotation(x, positions, base=10000.0):
    """Multiplies every coordinate by cos + sin: not a rotation, lengths change."""
    rotated = _rotate(x, positions, base)
    return rotated * 1.3


ROPE_BUGS = [
    ("wrong direction", lambda x, p, base=10000.0: _rotate(x, p, base, sign=-1.0), "wrong direction"),
    ("half-split pairs", lambda x, p, base=10000.0: _rotate(x, p, base, pairing="half"), "half-split"),
    ("half-split and wrong direction",
     lambda x, p, base=10000.0: _rotate(x, p, base, pairing="half", sign=-1.0), "half-split"),
    ("angle not times position", lambda x, p, base=10000.0: _rotate(x, p, base, use_position=False),
     "not multiplied by the position"),
    ("i instead of 2i", lambda x, p, base=10000.0: _rotate(x, p, base, frequency="i"), "i instead of 2i"),
    ("base ignored", lambda x, p, base=10000.0: _rotate(x, p, base, ignore_base=True), "base argument is ignored"),
    ("positions ignored", lambda x, p, base=10000.0: _rotate(x, p, base, ignore_positions=True),
     "positions argument is ignored"),
    ("identity", lambda x, p, base=10000.0: x.clone(), "nothing is rotated"),
    ("not a rotation", _not_a_rotation, "keeps the length"),
    ("wrong shape", lambda x, p, base=10000.0: _rotate(x, p, base)[..., :-1], "has shape"),
]


@pytest.mark.parametrize("bug, implementation, hint", ROPE_BUGS, ids=[b[0] for b in ROPE_BUGS])
def test_buggy_rotation_fails_with_targeted_hint(bug, implementation, hint):
    for _ in range(3):
        with pytest.raises(checks.ExerciseWrong) as error:
            checks.rotate_pairs(implementation)
        assert hint in str(error.value), str(error.value)


def test_learner_style_rotation_passes(capsys):
    """A correct implementation written differently (float32 throughout, strided pairs) passes."""
    checks.rotate_pairs(lambda x, p, base=10000.0: _rotate(x, p, base))
    checks.sinusoidal_table(lambda n, d: _table(n, d))
    assert capsys.readouterr().out.count("✅") == 2


def test_crash_in_rotation_is_reported_as_wrong():
    def crashes(x, positions, base=10000.0):
        return x @ positions.float()
    with pytest.raises(checks.ExerciseWrong, match="raised RuntimeError"):
        checks.rotate_pairs(crashes)


def test_closed_form_2d_rotation_matches_the_checker_convention():
    """The checker and the package agree on the convention the tests pin: (1, 0) at position 1
    turns to (cos 1, sin 1)."""
    out = rotate_pairs(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    torch.testing.assert_close(out, torch.tensor([[math.cos(1), math.sin(1)]]))
