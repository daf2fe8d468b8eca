"""Checkers for chapter 07 (``scratchformer.causal``): the causal mask, and the causal mask
combined with a key-padding mask."""

from __future__ import annotations

from collections.abc import Callable

import torch

from scratchformer.checks._common import (
    ExerciseWrong,
    _call,
    _generator,
    _passed,
    _require_tensor,
)

__all__ = ["causal_mask", "causal_padding_mask"]


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """A random int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _banded(T: int, S: int, offset: int) -> torch.Tensor:
    """``mask[i, j] = j <= i + offset``, shape (T, S): offset S - T is the correct causal mask."""
    i = torch.arange(T)[:, None]
    j = torch.arange(S)[None, :]
    return j <= i + offset


def _format(mask: torch.Tensor) -> str:
    return "\n".join("    " + " ".join(str(int(v)) for v in row) for row in mask.tolist())


# --------------------------------------------------------------------------------------------
# Exercise 7.1: the causal mask
# --------------------------------------------------------------------------------------------

WRONG_DTYPE = (
    "Likely bug: wrong dtype. The mask must be torch.bool with True = may attend. A float mask "
    "is *added* to the scores by F.scaled_dot_product_attention (1.0 and 0.0 just shift them and "
    "mask nothing), and our attention refuses it. Build it with a comparison (j <= i + (S - T)) "
    "or call .bool() on a 0/1 tensor."
)
DIAGONAL_EXCLUDED = (
    "off by one, the diagonal is excluded (a strict lower triangle, tril(-1) or j < i): a token "
    "cannot see itself, and the first query has nothing to attend to. Query i may attend to every "
    "key j <= i, its own position included."
)
FUTURE_LEAK = (
    "off by one, one step of the future leaks (tril(1) or j <= i + 1): query i sees key i + 1, "
    "the very token it has to predict, so training looks perfect and generation fails. Query i "
    "may attend to keys j <= i only."
)
POLARITY = (
    "mask polarity flipped (upper triangle, triu): True above the diagonal lets every token see "
    "the future and hides the past. In this book True means 'may attend': keep the lower "
    "triangle, torch.ones(T, T).tril().bool(). (nn.Transformer's generate_square_subsequent_mask "
    "uses the opposite convention: True or -inf = may NOT attend.)"
)
NO_MASK = "the mask is all True: nothing is masked, so every token sees the future. Keep j <= i only."
TOP_LEFT = (
    "top-left alignment when S > T: query i sees keys j <= i, as F.scaled_dot_product_attention("
    "is_causal=True) does. The T queries are the LAST T of the S positions (a KV cache holds the "
    "S - T earlier ones), so query i sits at position i + (S - T) and must see every key up to "
    "it: mask[i, j] = j <= i + (S - T), aligned to the lower-right corner. With top-left "
    "alignment a single new query sees only the first key, and decoding repeats itself."
)
S_IGNORED = (
    "the mask is square although S > T: the second argument S (number of keys) was ignored. "
    "Return a (T, S) mask."
)


def _square_candidates(T: int) -> dict[str, torch.Tensor]:
    ones = torch.ones(T, T, dtype=torch.bool)
    return {
        DIAGONAL_EXCLUDED: ones.tril(-1),
        FUTURE_LEAK: ones.tril(1),
        POLARITY: ones.triu(),
        POLARITY + " ": ones.triu(1),
        NO_MASK: ones,
    }


def _rect_candidates(T: int, S: int) -> dict[str, torch.Tensor]:
    ones = torch.ones(T, S, dtype=torch.bool)
    return {
        TOP_LEFT: ones.tril(),
        DIAGONAL_EXCLUDED + " (here with S > T: mask[i, j] = j < i + (S - T).)": _banded(T, S, S - T - 1),
        FUTURE_LEAK + " (here with S > T: mask[i, j] = j <= i + (S - T) + 1.)": _banded(T, S, S - T + 1),
        POLARITY: ~_banded(T, S, S - T - 1),
        POLARITY + " ": ~_banded(T, S, S - T),
        POLARITY + "  ": ones.triu(),
        NO_MASK: ones,
    }


def _compare_mask(name: str, actual, expected: torch.Tensor, candidates: dict[str, torch.Tensor],
                  what: str) -> None:
    __tracebackhide__ = True
    _require_tensor(name, what, actual, tuple(expected.shape))
    if actual.dtype != torch.bool:
        raise ExerciseWrong(f"{name}: {what} has dtype {actual.dtype}. {WRONG_DTYPE}")
    if torch.equal(actual, expected):
        return
    for hint, candidate in candidates.items():
        if torch.equal(actual, candidate):
            raise ExerciseWrong(f"{name}: {what} is wrong. Likely bug: {hint.strip()}")
    raise ExerciseWrong(
        f"{name}: {what} is wrong: expected (1 = may attend)\n{_format(expected)}\ngot\n{_format(actual)}\n"
        "Query i may attend to key j exactly when j <= i + (S - T)."
    )


def causal_mask(fn: Callable) -> None:
    """Check ``fn(T, S=None) -> (T, S)`` bool: True where key j may be seen by query i, j <= i + (S - T)."""
    __tracebackhide__ = True
    name = "causal_mask"
    g = _generator()
    for T in (_randint(g, 3, 7), 1):            # T = 1 last: its 1x1 mask cannot tell bugs apart
        actual = _call(name, fn, T)
        _compare_mask(name, actual, _banded(T, T, 0), _square_candidates(T), f"causal_mask({T})")
    T = _randint(g, 2, 5)
    actual = _call(name, fn, T, T)
    _compare_mask(name, actual, _banded(T, T, 0), _square_candidates(T), f"causal_mask({T}, {T})")
    for T, S in ((_randint(g, 2, 5), None), (1, _randint(g, 3, 6))):
        S = S if S is not None else T + _randint(g, 1, 4)
        actual = _call(name, fn, T, S)
        what = f"causal_mask({T}, {S})"
        if isinstance(actual, torch.Tensor) and actual.dim() == 2 and actual.size(0) == actual.size(1) \
                and actual.size(0) in (T, S):
            raise ExerciseWrong(f"{name}: {what} has shape {tuple(actual.shape)}. Likely bug: {S_IGNORED}")
        _compare_mask(name, actual, _banded(T, S, S - T), _rect_candidates(T, S), what)
    _passed(name, "j <= i on the square mask, the diagonal included; lower-right aligned when S > T; bool.")


# --------------------------------------------------------------------------------------------
# Exercise 7.2: causal and padding masks together
# --------------------------------------------------------------------------------------------

FLOAT_SUM = (
    "Likely bug: the masks were combined as floats (added, or multiplied) instead of as booleans. "
    "Adding two additive masks puts -inf + -inf or finfo.min + finfo.min where both forbid, which "
    "overflows to -inf and gives NaN in a row with nothing to attend to. Keep both masks boolean "
    "(True = may attend) and combine them with &; fill the scores once, in the attention."
)
OR_INSTEAD_OF_AND = (
    "combined with | (or) instead of & (and): a key then passes if EITHER mask allows it, so "
    "every real token in the future is visible, and padding in the past too. A key may be "
    "attended only if BOTH allow it: causal & padding."
)
QUERIES_MASKED = (
    "the padding mask was put on the queries (rows, keep[:, :, None]) instead of the keys "
    "(columns, keep[:, None, :]). A padded key must be invisible to every query: mask[b, i, j] "
    "needs keep[b, j]."
)
QUERIES_AND_KEYS = (
    "padded queries are masked too (keep[:, :, None] & keep[:, None, :]). Mask keys, not "
    "queries: a padded query's output is simply ignored by the loss, and masking its row only "
    "adds rows with nothing to attend to. Use causal & keep[:, None, :]."
)
PADDING_IGNORED = "the padding mask is ignored: padded keys stay visible. Combine: causal & keep[:, None, :]."
CAUSAL_IGNORED = "the causal mask is missing: every query sees the future. Combine: causal & keep[:, None, :]."
PAD_TOP_LEFT = (
    "the causal part is top-left aligned when T < S. The T queries are the last T positions: use "
    "causal_mask(T, S), which is aligned to the lower-right corner (mask[i, j] = j <= i + (S - T))."
)


def _padding_batch(g: torch.Generator) -> torch.Tensor:
    """Key-padding masks (B, S), True at real tokens: no padding, right padding, left padding."""
    S = _randint(g, 5, 7)
    right = _randint(g, 1, S - 2)
    left = _randint(g, 2, S - 1)
    positions = torch.arange(S)
    return torch.stack([
        torch.ones(S, dtype=torch.bool),
        positions < right,              # right padding: the last S - right keys are padding
        positions >= S - left,          # left padding: the first S - left keys are padding
    ])


def causal_padding_mask(fn: Callable) -> None:
    """Check ``fn(keep (B, S) or (B, 1, S) bool, T=None) -> (B, T, S)`` bool = causal & padding."""
    __tracebackhide__ = True
    name = "causal_padding_mask"
    g = _generator()
    keep = _padding_batch(g)
    B, S = keep.shape
    for T in (S, _randint(g, 2, S - 1)):
        causal = _banded(T, S, S - T)[None]                            # (1, T, S)
        query_keep = keep[:, S - T:, None]                             # (B, T, 1): the queries' own padding
        expected = causal & keep[:, None, :]
        args = (keep,) if T == S else (keep, T)
        what = "the mask" if T == S else f"the mask for T={T} queries and S={S} keys"
        actual = _call(name, fn, *args)
        _require_tensor(name, what, actual, (B, T, S))
        if actual.is_floating_point():
            raise ExerciseWrong(f"{name}: {what} has dtype {actual.dtype}. {FLOAT_SUM}")
        if actual.dtype != torch.bool:
            raise ExerciseWrong(f"{name}: {what} has dtype {actual.dtype}. {WRONG_DTYPE}")
        candidates = {
            OR_INSTEAD_OF_AND: causal | keep[:, None, :],
            QUERIES_MASKED: causal & query_keep,
            QUERIES_AND_KEYS: causal & query_keep & keep[:, None, :],
            PADDING_IGNORED: causal.expand(B, T, S),
            CAUSAL_IGNORED: keep[:, None, :].expand(B, T, S),
        }
        if T < S:
            top_left = torch.ones(T, S, dtype=torch.bool).tril()[None]
            candidates[PAD_TOP_LEFT] = top_left & keep[:, None, :]
        if not torch.equal(actual, expected):
            for hint, candidate in candidates.items():
                if torch.equal(actual, candidate):
                    raise ExerciseWrong(f"{name}: {what} is wrong. Likely bug: {hint}")
            bad = int((actual != expected).any(-1).any(-1).nonzero()[0])
            raise ExerciseWrong(
                f"{name}: {what} is wrong. For the key-padding mask {keep[bad].int().tolist()} "
                f"(1 = real token) expected (1 = may attend)\n{_format(expected[bad])}\ngot\n"
                f"{_format(actual[bad])}\nmask[b, i, j] = causal[i, j] and keep[b, j]."
            )
    actual = _call(name, fn, keep[:, None, :])
    if not (isinstance(actual, torch.Tensor) and actual.shape == (B, S, S) and torch.equal(actual, _banded(S, S, 0) & keep[:, None, :])):
        raise ExerciseWrong(
            f"{name}: a key-padding mask of shape (B, 1, S) = {(B, 1, S)} must give the same (B, S, S) "
            "mask as the (B, S) one. Squeeze the query axis first: keep[:, 0] (or keep.reshape(B, S))."
        )
    _passed(name, "causal & padding on the keys; left and right padding; T < S lower-right aligned; (B, 1, S) accepted.")
