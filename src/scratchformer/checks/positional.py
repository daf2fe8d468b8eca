"""Checkers for chapter 04 (``scratchformer.positional``): the sinusoidal table and rotary pairs."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from scratchformer.checks._common import (
    ExerciseWrong,
    _call,
    _close,
    _generator,
    _passed,
    _randn,
    _require_finite,
    _require_tensor,
)
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import (
    distinct_ints,
    require_dtype,
    require_gradients,
    require_unchanged,
    snapshot,
)

__all__ = ["sinusoidal_table", "rotate_pairs"]


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """A random int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


class _Evidence:
    """Which known bugs explain the learner's answers on *every* probe.

    A checker runs the learner's code on several probes and, for each, records whether the answer
    is right and which known buggy variants give the same answer. A bug is named only when it is
    the one explanation that fits all probes: on a probe the learner got right it must give the
    right answer too, and on a probe the learner got wrong it must give the learner's answer. One
    number that happens to coincide with one bug is never enough.
    """

    def __init__(self) -> None:
        self.fits: set[str] | None = None
        self.failure: str | None = None            # what went wrong on the first wrong probe

    def add(self, correct: bool, matching, failure: str = "") -> None:
        matching = set(matching)
        self.fits = matching if self.fits is None else self.fits & matching
        if not correct and self.failure is None:
            self.failure = failure

    @property
    def wrong(self) -> bool:
        return self.failure is not None

    def hint(self) -> str | None:
        """The one bug that fits every probe, or None."""
        return next(iter(self.fits)) if self.fits is not None and len(self.fits) == 1 else None

    def verdict(self, name: str, generic: str) -> None:
        """Raise ``ExerciseWrong`` if any probe was wrong: with the bug if one fits them all."""
        __tracebackhide__ = True
        if not self.wrong:
            return
        hint = self.hint()
        text = f"Likely bug: {hint}" if hint else generic
        raise ExerciseWrong(f"{name}: {self.failure} {text}")


def _run(name: str, fn: Callable, args: tuple, where: str, hint: str = ""):
    """Call the learner's ``fn(*args)`` via ``_call``; if it raises, say on which probe."""
    __tracebackhide__ = True
    try:
        return _call(name, fn, *args)
    except ExerciseWrong as wrong:
        raise ExerciseWrong(f"{wrong} (This happened {where}.) {hint}".rstrip()) from wrong.__cause__


# --------------------------------------------------------------------------------------------
# Exercise 4.1: the sinusoidal table
# --------------------------------------------------------------------------------------------


def _sinusoidal(length: int, d_model: int, *, base: float = 10000.0, exponent: str = "2i",
                swap: bool = False, layout: str = "interleaved", first: int = 0,
                divide: bool = True, columns: str = "sin/cos") -> torch.Tensor:
    """The sinusoidal table, with switches that reproduce the classic bugs.

    exponent: "2i" (correct), "i" (pair index i instead of 2i), "j" (each column its own index),
    "floor" (2i // d, integer division: always 0), "precedence" (pos / 10000**2i / d).
    swap: cos on even columns, sin on odd. layout: "interleaved" (correct) or "halves" (all sin
    columns first, then all cos). first: the first position (0 is correct). divide=False
    multiplies by base^(2i/d). columns="sin": every column a sin.
    """
    pos = torch.arange(first, first + length, dtype=torch.float64)[:, None]      # (T, 1)
    column = torch.arange(d_model, dtype=torch.float64)                           # (D,)
    if layout == "halves":
        n_sin = (d_model + 1) // 2
        pair = torch.where(column < n_sin, column, column - n_sin)               # pair index i
        is_sin = column < n_sin
    else:
        pair = torch.div(column, 2, rounding_mode="floor")
        is_sin = column % 2 == 0
    two_i = 2 * pair
    if exponent == "precedence":
        angles = pos / base ** two_i / d_model
    else:
        power = {"2i": two_i / d_model, "i": pair / d_model, "j": column / d_model,
                 "floor": torch.div(two_i, d_model, rounding_mode="floor")}[exponent]
        scale = base ** power
        angles = pos / scale if divide else pos * scale
    if swap:
        is_sin = ~is_sin
    if columns == "sin":
        return angles.sin().float()
    return torch.where(is_sin, angles.sin(), angles.cos()).float()


def _padded_odd(length: int, d_model: int) -> torch.Tensor:
    """For odd d_model: the table of d_model + 1 columns with the last one dropped."""
    if d_model % 2 == 0:
        return _sinusoidal(length, d_model)
    return _sinusoidal(length, d_model + 1)[:, :d_model]


_TABLE = "Entry [pos, 2i] must be sin(pos / 10000^(2i/d_model)) and entry [pos, 2i+1] " \
         "cos(pos / 10000^(2i/d_model)), with d = d_model (also when d_model is odd)."

_TABLE_BUGS: dict[str, Callable[[int, int], torch.Tensor]] = {
    "sin and cos swapped. Even columns 2i take sin, odd columns 2i+1 take cos: PE(0) must be "
    "[0, 1, 0, 1, ...].": lambda L, d: _sinusoidal(L, d, swap=True),
    "the exponent uses i instead of 2i, so the frequencies fall too fast. The pair (2i, 2i+1) "
    "turns at pos / 10000^(2i/d); with torch.arange(0, d_model, 2) the values are already 2i.":
        lambda L, d: _sinusoidal(L, d, exponent="i"),
    "each column uses its own index j in the exponent, pos / 10000^(j/d). The sin and the cos "
    "of one pair must share one frequency: columns 2i and 2i+1 both use 10000^(2i/d).":
        lambda L, d: _sinusoidal(L, d, exponent="j"),
    "integer division in the exponent: 2i // d is 0 for every pair, so every pair gets "
    "frequency 1. Use true division, 2i / d (a float).": lambda L, d: _sinusoidal(L, d, exponent="floor"),
    "operator precedence: `10000 ** 2 * i / d` or `10000 ** two_i / d` raises 10000 to the power "
    "2i and only then divides. Put the whole exponent in parentheses: 10000 ** (two_i / d).":
        lambda L, d: _sinusoidal(L, d, exponent="precedence"),
    "base 1000 instead of 10000. The paper's wavelengths go up to 10000·2π.":
        lambda L, d: _sinusoidal(L, d, base=1000.0),
    "all sin columns first and all cos columns after (the concatenated tensor2tensor layout). "
    "This book interleaves them as in the paper: sin in even columns, cos in odd columns.":
        lambda L, d: _sinusoidal(L, d, layout="halves"),
    "positions start at 1 instead of 0. Row 0 is position 0: PE(0) = [0, 1, 0, 1, ...].":
        lambda L, d: _sinusoidal(L, d, first=1),
    "every column is a sin. The odd columns 2i+1 hold the cos of the same angle.":
        lambda L, d: _sinusoidal(L, d, columns="sin"),
    "for an odd d_model you built the table for d_model + 1 columns and dropped the last one, so "
    "the exponent divides by d_model + 1. The formula uses d = d_model itself.": _padded_odd,
}

_MULTIPLIED = (
    "multiplied by 10000^(2i/d) instead of dividing. The angle is pos / 10000^(2i/d): one radian "
    "per position for the first pair, tiny steps for the last ones."
)


def _table_bugs_matching(actual: torch.Tensor, length: int, d_model: int) -> set[str]:
    fits = {hint for hint, bug in _TABLE_BUGS.items()
            if _close(actual, bug(length, d_model), atol=1e-4)}
    # Multiplying gives angles up to ~1e5 rad, where float32 and float64 sines disagree: compare
    # the rows 0 and 1 only (angles below 1e4), loosely.
    if _close(actual[:2], _sinusoidal(min(length, 2), d_model, divide=False), atol=1e-2):
        fits.add(_MULTIPLIED)
    return fits


@exercise("4.1", reference="scratchformer.positional")
def sinusoidal_table(fn: Callable) -> None:
    """Check ``fn(length, d_model) -> (length, d_model)`` float32 on several sizes."""
    __tracebackhide__ = True
    name = "sinusoidal_table"
    from scratchformer.positional import sinusoidal_table as reference

    g = _generator()
    # Sizes in which length and d_model always differ: a long table (length > d_model), a short
    # and wide one (length < d_model), and an odd d_model.
    d_long, d_short = (2 * v for v in distinct_ints(g, 2, 3, 13))
    d_odd = 2 * _randint(g, 2, 10) + 1
    length_odd = _randint(g, 7, 29)
    length_odd += length_odd == d_odd
    probes = [(_randint(g, 30, 60), d_long), (_randint(g, 2, 5), d_short), (length_odd, d_odd)]

    evidence = _Evidence()
    for length, d_model in probes:
        where = f"for length={length}, d_model={d_model}"
        hint = ""
        if d_model % 2:
            hint = (f"Likely bug: odd d_model not handled. For d_model = {d_model} there are "
                    f"{d_model // 2 + 1} sin columns (0, 2, ...) but only {d_model // 2} cos columns "
                    "(1, 3, ...): give the cos columns the first d_model // 2 frequencies, e.g. "
                    "pe[:, 1::2] = torch.cos(angles[:, : d_model // 2]).")
        actual = _run(name, fn, (length, d_model), where, hint)
        if isinstance(actual, torch.Tensor) and tuple(actual.shape) == (d_model, length):
            raise ExerciseWrong(
                f"{name}: the table has shape {tuple(actual.shape)} = (d_model, length) {where}. "
                "Likely bug: positions and dimensions swapped (the table is transposed). Row pos "
                "holds PE(pos), so positions go down the rows: shape (length, d_model)."
            )
        _require_tensor(name, f"the table {where}", actual, (length, d_model))
        if not actual.is_floating_point():
            raise ExerciseWrong(
                f"{name}: the table has dtype {actual.dtype}; it must be float32. Likely bug: "
                "integer arithmetic somewhere; build positions with dtype=torch.float32 (or "
                "float64) and convert the result with .float()."
            )
        if actual.dtype != torch.float32:
            raise ExerciseWrong(
                f"{name}: the table has dtype {actual.dtype}; the function promises float32 (a "
                "float64 table added to float32 token vectors would turn them into float64). "
                "Compute in float64 inside if you like, and return table.float()."
            )
        _require_finite(name, f"the table {where}", actual,
                        "Likely bug: an overflow such as 10000 ** (2i) without dividing 2i by "
                        "d_model.")
        expected = reference(length, d_model)
        correct = _close(actual, expected, atol=1e-4)
        difference = (actual - expected).abs().max().item()
        evidence.add(correct, _table_bugs_matching(actual, length, d_model),
                     f"{where} the table is wrong (largest difference {difference:.3g}).")
    evidence.verdict(name, _TABLE)
    _passed(name, f"PE(pos, 2i) = sin(pos/10000^(2i/d)), PE(pos, 2i+1) = cos(...), float32, for "
                  f"{', '.join(f'{L}×{d}' for L, d in probes)} (length × d_model).")


# --------------------------------------------------------------------------------------------
# Exercise 4.2: rotating pairs (rotary position embedding)
# --------------------------------------------------------------------------------------------


def _rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0, *, sign: float = 1.0,
          pairing: str = "interleaved", angle: str = "m*theta", exponent: str = "2i",
          output: str = "interleaved", precision: str = "float64") -> torch.Tensor:
    """Rotary embedding with switches that reproduce the classic bugs; float32 result unless
    ``precision="low"``, which computes the angles in the dtype of ``x``.

    sign=-1: clockwise (wrong direction). pairing="half": pairs (j, j + Dh/2).
    angle="theta": the angle is not multiplied by the position; "zero": nothing rotated;
    "integer": positions rounded to integers. exponent="i": θ_i = base^(-i/Dh).
    output="cat": the rotated pairs written back as [all x'_2i, all x'_2i+1].
    """
    Dh = x.size(-1)
    if precision == "low":
        i = torch.arange(0, Dh, 2, dtype=x.dtype)
        theta = base ** (-i / Dh)
        phi = positions.to(x.dtype)[..., None] * theta
        cos, sin = phi.cos(), phi.sin()
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    x = x.double()
    i = torch.arange(Dh // 2, dtype=torch.float64)
    power = {"2i": -2 * i / Dh, "i": -i / Dh}[exponent]
    theta = base ** power                                                         # (Dh/2,)
    m = positions.double()[..., None]
    if angle == "integer":
        m = positions.long().double()[..., None]
    phi = {"m*theta": m * theta, "integer": m * theta, "theta": theta + 0 * m,
           "zero": 0 * m * theta}[angle]
    cos, sin = phi.cos(), sign * phi.sin()
    if pairing == "half":
        x1, x2 = x[..., : Dh // 2], x[..., Dh // 2:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).float()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    if output == "cat":
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).float()
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).float()


_ROPE_BUGS = {
    "rotation in the wrong direction (sin with the wrong sign). Counter-clockwise: "
    "x'[2i] = x[2i]·cos − x[2i+1]·sin and x'[2i+1] = x[2i]·sin + x[2i+1]·cos.": dict(sign=-1.0),
    "pairs formed as (j, j + Dh/2) (the half-split of GPT-NeoX/LLaMA code). This book pairs "
    "neighbours (2i, 2i+1) as in RoFormer: rearrange(x, '... (p two) -> ... p two', two=2).":
        dict(pairing="half"),
    "half-split pairs (j, j + Dh/2) and the rotation in the wrong direction. Pair neighbours "
    "(2i, 2i+1) and use x'[2i] = x[2i]·cos − x[2i+1]·sin.": dict(pairing="half", sign=-1.0),
    "the angle is not multiplied by the position: every token is rotated by θ_i. The angle for "
    "position m is m·θ_i: positions[..., None] * theta.": dict(angle="theta"),
    "nothing is rotated: the output equals the input. The angle for position m is m·θ_i.":
        dict(angle="zero"),
    "the exponent uses i instead of 2i: θ_i = base^(-2i/Dh), the frequencies of the sinusoidal "
    "table (torch.arange(0, Dh, 2) / Dh).": dict(exponent="i"),
    "the positions are rounded to integers (.long() or .int()). Positions may be floats: use "
    "positions.float() (or float64).": dict(angle="integer"),
    "the rotated pairs are written back as [all x'[2i], then all x'[2i+1]] (torch.cat). Put "
    "every pair back in its own place: stack the two halves on a new last axis and flatten it, "
    "rearrange(rotated, '... p two -> ... (p two)').": dict(output="cat"),
}

_LOW_PRECISION_ANGLES = (
    "the angles m·θ_i are computed in the input's low precision. float16 keeps 11 significant "
    "bits and bfloat16 8, so at position 300 the angle of the fastest pair is off by up to 0.125 "
    "radian in float16 and 1 radian in bfloat16. Compute the angles in float32 "
    "(positions.float()[..., None] * theta) and cast only cos and sin, or the result, to x.dtype."
)

_LOW_TOLERANCE = {torch.float16: dict(atol=4e-3, rtol=4e-3),
                  torch.bfloat16: dict(atol=6e-2, rtol=3e-2)}

_ROPE = ("Rotate pair (x[..., t, 2i], x[..., t, 2i+1]) by positions[t]·θ_i with θ_i = "
         "base^(-2i/Dh), counter-clockwise, for any number of leading axes.")


def _near(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> bool:
    """Equal up to float32 rounding, or up to the rounding of a float16/bfloat16 result."""
    if dtype in _LOW_TOLERANCE:
        return _close(actual.float(), expected.float(), **_LOW_TOLERANCE[dtype])
    return _close(actual, expected, atol=1e-4, rtol=1e-4)


def _rope_candidates(x: torch.Tensor, positions: torch.Tensor, base: float) -> dict[str, torch.Tensor]:
    """What each known buggy rotation returns for these inputs (float32)."""
    T = x.size(-2)
    candidates = {hint: _rope(x.float(), positions, base, **bug) for hint, bug in _ROPE_BUGS.items()}
    candidates["the base argument is ignored (10000 is used whatever base is passed): "
               "θ_i = base^(-2i/Dh)."] = _rope(x.float(), positions, 10000.0)
    candidates["the positions argument is ignored: the tokens are rotated as if at positions "
               "0 .. T-1. Use positions[t] as the position of token t."] = \
        _rope(x.float(), torch.arange(T), base)
    candidates[_LOW_PRECISION_ANGLES] = _rope(x, positions, base, precision="low").float()
    return candidates


@exercise("4.2", reference="scratchformer.positional")
def rotate_pairs(fn: Callable) -> None:
    """Check ``fn(x, positions, base=10000.0) -> x rotated`` on several ranks, dtypes and bases."""
    __tracebackhide__ = True
    name = "rotate_pairs"
    g = _generator()
    B, H, T = distinct_ints(g, 3, 2, 7)                   # all different
    Dh = 2 * _randint(g, 7, 9)                 # 14 .. 18: Dh and Dh/2 never equal B, H or T

    def draw_positions(limit: int, lead: tuple = (), fraction: bool = False) -> torch.Tensor:
        """Distinct positions below ``limit`` in random order (not 0 .. T-1), shape (*lead, T)."""
        rows = [torch.randperm(limit, generator=g)[:T] for _ in range(math.prod(lead))]
        out = torch.stack(rows).reshape(*lead, T)
        return out + torch.rand(out.shape, generator=g) if fraction else out

    any_rank = ("Hint: x may have any number of leading axes, (..., T, Dh): index from the end "
                "(x.shape[-2], x[..., 0::2]) and let positions[..., None] broadcast.")
    low = ("Hint: for float16/bfloat16 input compute in float32 and cast the result back with "
           ".to(x.dtype) (torch.view_as_complex, for one, does not accept bfloat16).")
    probes = [  # (what, x, positions, base (None: the default), hint if the code raises)
        ("a 4-D x (B, H, T, Dh)", _randn(g, B, H, T, Dh), draw_positions(64), None, ""),
        ("a 3-D x (B, T, Dh) with base=100", _randn(g, B, T, Dh), draw_positions(64), 100.0,
         any_rank),
        ("a 2-D x (T, Dh) with float positions", _randn(g, T, Dh),
         draw_positions(64, fraction=True), None, any_rank),
        ("a 4-D x with positions of shape (B, 1, T)", _randn(g, B, H, T, Dh),
         draw_positions(64, (B, 1)), None,
         "Hint: positions may carry leading axes that broadcast to x's, (B, 1, T) here; "
         "positions[..., None] * theta works for every shape."),
        ("a float16 x (B, T, Dh) at positions up to 300", _randn(g, B, T, Dh).half(),
         draw_positions(300), None, low),
        ("a bfloat16 x (B, H, T, Dh) with base=500", _randn(g, B, H, T, Dh).bfloat16(),
         draw_positions(300), 500.0, low),
    ]

    evidence = _Evidence()
    for what, x, pos, base, crash_hint in probes:
        where = f"for {what}"
        args = (x, pos) if base is None else (x, pos, base)
        base = 10000.0 if base is None else base
        before = snapshot(x, pos)
        actual = _run(name, fn, args, where, crash_hint)
        require_unchanged(name, ["x", "positions"], before, [x, pos])
        _require_tensor(name, f"the rotated tensor {where}", actual, x.shape)
        require_dtype(name, f"the rotated tensor {where}", actual, x.dtype)
        _require_finite(name, f"the rotated tensor {where}", actual)
        expected = _rope(x.float(), pos, base)
        correct = _near(actual, expected, x.dtype)
        if not correct and x.dtype == torch.float32 and not _close(
                actual.norm(dim=-1), x.norm(dim=-1), atol=1e-3):
            problem = ("changes the length of the vectors; a rotation keeps every length. Each "
                       "pair (a, b) must become (a·cos − b·sin, a·sin + b·cos).")
        else:
            difference = (actual.float() - expected).abs().max().item()
            problem = f"is wrong (largest difference {difference:.3g})."
        matching = {hint for hint, candidate in _rope_candidates(x, pos, base).items()
                    if _near(actual, candidate, x.dtype)}
        evidence.add(correct, matching, f"{where} the rotated tensor {problem}")
    evidence.verdict(name, _ROPE)

    # Autograd flows through the learner's code to x.
    x = _randn(g, B, H, T, Dh).requires_grad_(True)
    out = _run(name, fn, (x, draw_positions(64)), "with x requiring gradients")
    _require_tensor(name, "the rotated tensor", out, x.shape)
    require_gradients(name, out, {"x": x})
    _passed(name, f"rotates pairs (2i, 2i+1) by m·θ_i counter-clockwise: 2-D, 3-D and 4-D x, "
                  f"head size {Dh}, three bases, float and broadcast positions, float16 and "
                  "bfloat16, inputs unchanged, gradients flow.")
