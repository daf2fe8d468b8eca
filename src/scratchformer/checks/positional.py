"""Checkers for chapter 04 (``scratchformer.positional``): the sinusoidal table and rotary pairs."""

from __future__ import annotations

from collections.abc import Callable

import torch

from scratchformer.checks._common import (
    ExerciseNotAttempted,
    ExerciseWrong,
    _call,
    _close,
    _diagnose,
    _generator,
    _passed,
    _randn,
    _require_finite,
    _require_tensor,
)

__all__ = ["sinusoidal_table", "rotate_pairs"]


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """A random int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


# --------------------------------------------------------------------------------------------
# Exercise 4.1: the sinusoidal table
# --------------------------------------------------------------------------------------------


def _sinusoidal(length: int, d_model: int, *, base: float = 10000.0, exponent: str = "2i",
                swap: bool = False, layout: str = "interleaved", first: int = 0,
                divide: bool = True) -> torch.Tensor:
    """The sinusoidal table, with switches that reproduce the classic bugs.

    exponent: "2i" (correct), "i" (pair index i instead of 2i), "j" (each column its own index),
    "floor" (2i // d, integer division: always 0). swap: cos on even columns, sin on odd.
    layout: "interleaved" (correct) or "halves" (all sin columns first, then all cos).
    first: the first position (0 is correct). divide=False multiplies by base^(2i/d).
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
    power = {"2i": two_i / d_model, "i": pair / d_model, "j": column / d_model,
             "floor": torch.div(two_i, d_model, rounding_mode="floor")}[exponent]
    scale = base ** power
    angles = pos / scale if divide else pos * scale
    if swap:
        is_sin = ~is_sin
    return torch.where(is_sin, angles.sin(), angles.cos()).float()


_TABLE_BUGS = {
    "sin and cos swapped. Even columns 2i take sin, odd columns 2i+1 take cos: PE(0) must be "
    "[0, 1, 0, 1, ...].": dict(swap=True),
    "the exponent uses i instead of 2i, so the frequencies fall too fast. The pair (2i, 2i+1) "
    "turns at pos / 10000^(2i/d); with torch.arange(0, d_model, 2) the values are already 2i.":
        dict(exponent="i"),
    "each column uses its own index j in the exponent, pos / 10000^(j/d). The sin and the cos "
    "of one pair must share one frequency: columns 2i and 2i+1 both use 10000^(2i/d).":
        dict(exponent="j"),
    "integer division in the exponent: 2i // d is 0 for every pair, so every pair gets "
    "frequency 1. Use true division, 2i / d (a float).": dict(exponent="floor"),
    "base 1000 instead of 10000. The paper's wavelengths go up to 10000·2π.": dict(base=1000.0),
    "all sin columns first and all cos columns after (the concatenated tensor2tensor layout). "
    "This book interleaves them as in the paper: sin in even columns, cos in odd columns.":
        dict(layout="halves"),
    "positions start at 1 instead of 0. Row 0 is position 0: PE(0) = [0, 1, 0, 1, ...].":
        dict(first=1),
}


def sinusoidal_table(fn: Callable) -> None:
    """Check ``fn(length, d_model) -> (length, d_model)`` against the closed form and known bugs."""
    __tracebackhide__ = True
    name = "sinusoidal_table"
    g = _generator()
    length, d_model = _randint(g, 30, 60), 2 * _randint(g, 4, 12)      # length > d_model
    from scratchformer.positional import sinusoidal_table as reference

    actual = _call(name, fn, length, d_model)
    if isinstance(actual, torch.Tensor) and tuple(actual.shape) == (d_model, length):
        raise ExerciseWrong(
            f"{name}: the table has shape {tuple(actual.shape)} = (d_model, length). Likely bug: "
            "positions and dimensions swapped (the table is transposed). Row pos holds PE(pos), so "
            "positions go down the rows: shape (length, d_model)."
        )
    _require_tensor(name, "the table", actual, (length, d_model))
    if not actual.is_floating_point():
        raise ExerciseWrong(
            f"{name}: the table has dtype {actual.dtype}; it must be floating point (float32). "
            "Likely bug: integer arithmetic somewhere; build positions with dtype=torch.float32 "
            "(or float64) and convert the result with .float()."
        )
    _require_finite(name, "the table", actual,
                    "Likely bug: an overflow such as 10000 ** (2i) without dividing 2i by d_model.")
    expected = reference(length, d_model)
    # Multiplying gives angles up to ~1e5 rad, where float32 and float64 sines disagree: compare
    # the rows 0 and 1 only (angles below 1e4), loosely.
    multiplied = _sinusoidal(length, d_model, divide=False)
    if not _close(actual, expected, atol=1e-4) and _close(actual[:2], multiplied[:2], atol=1e-2):
        raise ExerciseWrong(
            f"{name}: the table is wrong. Likely bug: multiplied by 10000^(2i/d) instead of dividing. "
            "The angle is pos / 10000^(2i/d): one radian per position for the first pair, tiny "
            "steps for the last ones."
        )
    _diagnose(
        name, "the table", actual, expected,
        {hint: _sinusoidal(length, d_model, **bug) for hint, bug in _TABLE_BUGS.items()},
        "Entry [pos, 2i] must be sin(pos / 10000^(2i/d_model)) and entry [pos, 2i+1] "
        "cos(pos / 10000^(2i/d_model)).",
        atol=1e-4,
    )
    # An odd d_model: the last column is a sin without a cos partner.
    odd = d_model + 1
    try:
        actual = fn(length, odd)
    except NotImplementedError:
        raise ExerciseNotAttempted(f"{name}: not attempted yet.") from None
    except Exception as error:
        raise ExerciseWrong(
            f"{name}: fails for an odd d_model = {odd} with {type(error).__name__}: {error}. Likely "
            f"bug: odd d_model not handled. There are {odd // 2 + 1} sin columns (0, 2, ...) but "
            f"only {odd // 2} cos columns (1, 3, ...): give the cos columns the first d_model // 2 "
            "frequencies, e.g. pe[:, 1::2] = torch.cos(angles[:, : d_model // 2])."
        ) from error
    _require_tensor(name, f"the table for odd d_model = {odd}", actual, (length, odd))
    _diagnose(name, f"the table for odd d_model = {odd}", actual, reference(length, odd), {},
              "For odd d_model the formula is the same, column by column, with d = d_model in the "
              "exponent; the last column is sin(pos / 10000^((d_model - 1)/d_model)).", atol=1e-4)
    _passed(name, f"PE(pos, 2i) = sin(pos/10000^(2i/d)), PE(pos, 2i+1) = cos(...) for "
                  f"d_model = {d_model} and {odd}.")


# --------------------------------------------------------------------------------------------
# Exercise 4.2: rotating pairs (rotary position embedding)
# --------------------------------------------------------------------------------------------


def _rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0, *, sign: float = 1.0,
          pairing: str = "interleaved", angle: str = "m*theta", exponent: str = "2i") -> torch.Tensor:
    """Rotary embedding with switches that reproduce the classic bugs.

    sign=-1: clockwise (wrong direction). pairing="half": pairs (j, j + Dh/2).
    angle="theta": the angle is not multiplied by the position; "zero": nothing rotated.
    exponent="i": θ_i = base^(-i/Dh) instead of base^(-2i/Dh).
    """
    Dh = x.size(-1)
    i = torch.arange(Dh // 2, dtype=torch.float64)
    theta = base ** (-(2 * i if exponent == "2i" else i) / Dh)                 # (Dh/2,)
    m = positions.double()[..., None]
    phi = {"m*theta": m * theta, "theta": theta.expand_as(m * theta), "zero": 0 * m * theta}[angle]
    cos, sin = phi.cos().to(x.dtype), (sign * phi.sin()).to(x.dtype)
    if pairing == "half":
        x1, x2 = x[..., : Dh // 2], x[..., Dh // 2:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


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
}


def rotate_pairs(fn: Callable) -> None:
    """Check ``fn(x, positions, base=10000.0) -> x rotated`` against the reference and known bugs."""
    __tracebackhide__ = True
    name = "rotate_pairs"
    g = _generator()
    B, H, T, Dh = 2, 3, _randint(g, 4, 9), 2 * _randint(g, 3, 8)
    x = _randn(g, B, H, T, Dh)
    positions = torch.randperm(40, generator=g)[:T]                # distinct, not 0..T-1
    from scratchformer.positional import rotate_pairs as reference

    for base in (10000.0, 100.0):
        args = (x, positions) if base == 10000.0 else (x, positions, base)
        actual = _call(name, fn, *args)
        _require_tensor(name, "the rotated tensor", actual, x.shape)
        _require_finite(name, "the rotated tensor", actual)
        expected = reference(x, positions, base)
        candidates = {hint: _rope(x, positions, base, **bug) for hint, bug in _ROPE_BUGS.items()}
        if base != 10000.0:
            candidates["the base argument is ignored (10000 is used whatever base is passed): "
                       "θ_i = base^(-2i/Dh)."] = reference(x, positions, 10000.0)
        candidates["the positions argument is ignored: the tokens are rotated as if at "
                   "positions 0 .. T-1. Use positions[t] as the position of token t."] = \
            reference(x, torch.arange(T), base)
        if not _close(actual.norm(dim=-1), x.norm(dim=-1), atol=1e-4):
            generic = ("A rotation keeps the length of every vector, but yours changes it. Each pair "
                       "(a, b) must become (a·cos − b·sin, a·sin + b·cos).")
        else:
            generic = ("Rotate pair (x[2i], x[2i+1]) by positions[t]·θ_i with θ_i = "
                       "base^(-2i/Dh), counter-clockwise.")
        _diagnose(name, f"the rotated tensor (base={base:g})", actual, expected, candidates,
                  generic, atol=1e-4)
    _passed(name, f"rotates pairs (2i, 2i+1) by m·θ_i counter-clockwise, head size {Dh}, "
                  "two bases, arbitrary positions.")
