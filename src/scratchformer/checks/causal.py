"""Checkers for chapter 07 (``scratchformer.causal``): the causal mask, and the causal mask
combined with a key-padding mask."""

# Both checkers call the learner's function on several probes (square and rectangular masks,
# both input shapes, another device) and compare every result with the reference. A bug is
# named only when one explanation fits every probe; otherwise the first wrong mask is shown.

from __future__ import annotations

from collections.abc import Callable

import torch

from scratchformer.checks._common import ExerciseWrong, _call, _generator, _passed
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import require_unchanged, snapshot

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


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:120]


WRONG_DTYPE = (
    "Likely bug: wrong dtype. The mask must be torch.bool with True = may attend. A float mask "
    "is *added* to the scores by F.scaled_dot_product_attention (1.0 and 0.0 just shift them and "
    "mask nothing), and our attention refuses it. Build it from a comparison of positions, or "
    "call .bool() on a 0/1 tensor."
)

# --------------------------------------------------------------------------------------------
# Exercise 7.1: the causal mask
# --------------------------------------------------------------------------------------------

DIAGONAL_EXCLUDED = (
    "off by one, the diagonal is excluded (a strict triangle, tril(-1) or j < i): a token cannot "
    "see itself, and the first query has nothing to attend to. Query i may attend to every key "
    "up to and including its own position."
)
FUTURE_LEAK = (
    "off by one, one step of the future leaks (tril(1) or j <= i + 1): query i sees the key after "
    "its own position, the very token it has to predict, so training looks perfect and "
    "generation fails. A query may attend to keys up to its own position only."
)
POLARITY = (
    "mask polarity flipped (the upper triangle, triu, or ~mask): True must mean 'may attend', so "
    "the allowed keys are the past and the present, not the future. (nn.Transformer's "
    "generate_square_subsequent_mask uses the opposite convention: -inf = may NOT attend.)"
)
NO_MASK = "the mask is all True: nothing is masked, so every token sees the future."
TOP_LEFT = (
    "top-left alignment when S > T: query i sees keys 0..i, as F.scaled_dot_product_attention("
    "is_causal=True) does. The T queries are the LAST T of the S positions (a KV cache holds the "
    "S - T earlier ones), so query i sits at position i + (S - T) and must see every key up to "
    "there: the triangle is aligned to the lower-right corner. With top-left alignment a single "
    "new query sees only the first key, and decoding repeats itself."
)
OFFSET_SIGN = (
    "the offset has the wrong sign: the queries sit S - T positions *after* the start of the "
    "keys, so query i's own position is i + (S - T), not i - (S - T)."
)
S_IGNORED = (
    "the mask is square although S > T: the second argument S (number of keys) was ignored. "
    "Return a (T, S) mask."
)
TRANSPOSED = (
    "the mask has shape (S, T): rows and columns are swapped. Rows are the T queries, columns "
    "the S keys: mask[i, j] says whether query i may attend to key j."
)
DEVICE_IGNORED = (
    "the mask is not created on the requested device: pass device=device to the function that "
    "creates it (torch.arange(..., device=device), torch.ones(..., device=device)). On a GPU, a "
    "CPU mask would be copied at every step, or refused."
)


def _mask_hypotheses(T: int, S: int) -> dict[str, list[torch.Tensor]]:
    """Known wrong masks for T queries and S keys, grouped by the bug they come from."""
    o = S - T
    ones = torch.ones(T, S, dtype=torch.bool)
    return {
        DIAGONAL_EXCLUDED: [_banded(T, S, o - 1)],
        FUTURE_LEAK: [_banded(T, S, o + 1)],
        POLARITY: [~_banded(T, S, o), ~_banded(T, S, o - 1), ones.triu(), ones.triu(1)],
        NO_MASK: [ones],
        TOP_LEFT: [ones.tril()],
        OFFSET_SIGN: [_banded(T, S, -o)],
    }


def _name_mask_bug(results: list[tuple[int, int, torch.Tensor]]) -> str | None:
    """The bug whose masks equal the learner's on every probe, the right ones included (the
    learner's mask is wrong somewhere); None if no single explanation fits them all."""
    names = _mask_hypotheses(1, 1).keys()
    for hint in names:
        fits, evidence = True, False
        for T, S, actual in results:
            matching = [c for c in _mask_hypotheses(T, S)[hint] if torch.equal(actual, c)]
            if not matching:                     # this bug would give another mask here
                fits = False
                break
            evidence |= not torch.equal(actual, _banded(T, S, S - T))
        if fits and evidence:
            return hint
    return None


@exercise("7.1", reference="scratchformer.causal")
def causal_mask(fn: Callable) -> None:
    """Check ``fn(T, S=None, device=None) -> (T, S)`` bool, True where query i may attend to key
    j; the T queries are the last T of the S positions (lower-right aligned)."""
    __tracebackhide__ = True
    name = "causal_mask"
    g = _generator()
    T1, T2 = (_randint(g, 3, 7) for _ in range(2))
    probes = [((T1,), T1, T1), ((1,), 1, 1), ((T2, T2), T2, T2)]          # square
    for T, extra in ((_randint(g, 2, 5), _randint(g, 1, 4)), (1, _randint(g, 2, 6)),
                     (_randint(g, 3, 6), _randint(g, 2, 5))):
        probes.append(((T, T + extra), T, T + extra))                       # S > T
    results, shapes = [], []
    for args, T, S in probes:
        what = f"causal_mask{args}"
        actual = _call(name, fn, *args)
        if not isinstance(actual, torch.Tensor):
            raise ExerciseWrong(f"{name}: {what} returned {_describe(actual)}; return a torch.Tensor.")
        if actual.dtype != torch.bool:
            raise ExerciseWrong(f"{name}: {what} has dtype {actual.dtype}. {WRONG_DTYPE}")
        shapes.append((T, S, tuple(actual.shape)))
        results.append((T, S, actual.detach().cpu()))
    wrong_shapes = [(T, S, shape) for T, S, shape in shapes if shape != (T, S)]
    if wrong_shapes:
        T, S, shape = wrong_shapes[0]
        rectangular = [(T, S, shape) for T, S, shape in shapes if S != T]
        hint = ""
        if all(shape == (T, T) for T, S, shape in rectangular):
            hint = f" Likely bug: {S_IGNORED}"
        elif all(shape == (S, T) for T, S, shape in rectangular):
            hint = f" Likely bug: {TRANSPOSED}"
        raise ExerciseWrong(f"{name}: causal_mask({T}, {S}) has shape {shape}, expected ({T}, {S}).{hint}")
    if not all(torch.equal(actual, _banded(T, S, S - T)) for T, S, actual in results):
        hint = _name_mask_bug(results)
        if hint is not None:
            raise ExerciseWrong(f"{name}: the mask is wrong. Likely bug: {hint}")
        T, S, actual = next((T, S, a) for T, S, a in results if not torch.equal(a, _banded(T, S, S - T)))
        raise ExerciseWrong(
            f"{name}: causal_mask({T}, {S}) is wrong: expected (1 = may attend)\n"
            f"{_format(_banded(T, S, S - T))}\ngot\n{_format(actual)}\n"
            "Query i sits at position i + (S - T) and may attend to every key up to there."
        )
    # the device argument: 'meta' tensors have a shape and a dtype but no data
    T, S = probes[3][1], probes[3][2]
    for device in ("meta", torch.device("cpu")):
        try:
            actual = _call(name, fn, T, S, device=device)
        except ExerciseWrong as error:
            raise ExerciseWrong(
                f"{str(error).rstrip('.')} (called with device={device!r}, a device on which tensors "
                "have a shape but no values: build the mask with tensor operations only, on that "
                "device, without .item(), .tolist() or Python loops over values)."
            ) from error
        if not isinstance(actual, torch.Tensor) or actual.device.type != torch.device(device).type:
            where = actual.device if isinstance(actual, torch.Tensor) else type(actual).__name__
            raise ExerciseWrong(f"{name}: causal_mask({T}, {S}, device={device!r}) returned a mask "
                                f"on {where}. Likely bug: {DEVICE_IGNORED}")
        if tuple(actual.shape) != (T, S) or actual.dtype != torch.bool:
            raise ExerciseWrong(f"{name}: causal_mask({T}, {S}, device={device!r}) returned "
                                f"{_describe(actual)}; expected ({T}, {S}) torch.bool.")
    _passed(name, "lower triangle with its diagonal on square masks; lower-right aligned when S > T; "
                  "bool, on the requested device.")


# --------------------------------------------------------------------------------------------
# Exercise 7.2: causal and padding masks together
# --------------------------------------------------------------------------------------------

FLOAT_SUM = (
    "Likely bug: the masks were combined as floats (added, or multiplied) instead of as booleans. "
    "Adding two additive masks puts -inf + -inf or finfo.min + finfo.min where both forbid, which "
    "overflows to -inf and gives NaN in a row with nothing to attend to. Keep both masks boolean "
    "(True = may attend) and combine them with a logical and; fill the scores once, in the "
    "attention."
)
OR_INSTEAD_OF_AND = (
    "combined with | (or) instead of & (and): a key then passes if EITHER mask allows it, so "
    "every real token in the future is visible, and padding in the past too. A key may be "
    "attended only if BOTH masks allow it."
)
QUERIES_MASKED = (
    "the padding mask was put on the queries (the rows, axis 1) instead of the keys (the columns, "
    "the last axis). A padded key must be invisible to every query: the padding mask must vary "
    "along the last axis of the (B, T, S) result and be broadcast over the queries."
)
QUERIES_AND_KEYS = (
    "padded queries are masked too (their whole row is False). Mask keys, not queries: a padded "
    "query's output is simply ignored by the loss, and masking its row only adds rows with "
    "nothing to attend to."
)
PADDING_IGNORED = "the padding mask is ignored: padded keys stay visible."
CAUSAL_IGNORED = "the causal mask is missing: every query sees the future."
PAD_TOP_LEFT = (
    "the causal part is top-left aligned when T < S. The T queries are the last T positions: use "
    "causal_mask(T, S), which is aligned to the lower-right corner."
)
CAUSAL_PART_WRONG = (
    "the causal part is wrong (it matches a known causal_mask bug: the diagonal excluded or one "
    "step of the future). Check Exercise 7.1 first, then combine its mask with the padding."
)
EMPTY_ROWS_FILLED = (
    "rows with nothing to attend to were given keys anyway (to avoid NaN?). A query whose allowed "
    "keys are all padding must keep an all-False row: the attention of this book returns zeros "
    "for it, never NaN, and its output is never used. Letting it attend to padding (or to itself) "
    "is what the mask is there to prevent."
)
AXES_SWAPPED = (
    "the result has shape (B, S, T): the query and key axes are swapped. The result is "
    "(B, T, S): mask[b, i, j] says whether query i of sequence b may attend to key j."
)
THREE_D_KEEP = (
    "a key-padding mask of shape (B, 1, S) must give the same (B, T, S) mask as the (B, S) one. "
    "Bring it to (B, S) first (index or reshape away its axis of size 1)."
)
DEVICE_KEEP = (
    "the causal part is not created on keep's device: pass device=keep.device to causal_mask. On "
    "a GPU, a CPU mask combined with a GPU mask fails."
)


def _padding_batch(g: torch.Generator, B: int, S: int) -> torch.Tensor:
    """Key-padding masks (B, S), True at real tokens: no padding, right padding, left padding,
    an empty sequence, then random lengths and sides."""
    positions = torch.arange(S)
    rows = [torch.ones(S, dtype=torch.bool),
            positions < _randint(g, 1, S - 2),             # right padding
            positions >= S - _randint(g, 1, S - 2),        # left padding: leaves empty rows
            torch.zeros(S, dtype=torch.bool)]              # an empty sequence
    while len(rows) < B:
        n = _randint(g, 1, S - 1)
        rows.append(positions < n if _randint(g, 0, 1) else positions >= S - n)
    return torch.stack(rows[:B])


def _padding_hypotheses(keep: torch.Tensor, T: int) -> dict[str, list[torch.Tensor]]:
    B, S = keep.shape
    causal = _banded(T, S, S - T)[None]                       # (1, T, S)
    keys = keep[:, None, :]                                   # (B, 1, S)
    queries = keep[:, S - T:, None]                           # (B, T, 1): the queries' own padding
    expected = causal & keys
    empty = ~expected.any(-1, keepdim=True)                   # (B, T, 1): rows with nothing
    diagonal = _banded(T, S, S - T) & ~_banded(T, S, S - T - 1)
    top_left = torch.ones(T, S, dtype=torch.bool).tril()[None]
    return {
        OR_INSTEAD_OF_AND: [causal | keys],
        QUERIES_MASKED: [causal & queries, causal.expand(B, T, S) & queries],
        QUERIES_AND_KEYS: [causal & queries & keys],
        PADDING_IGNORED: [causal.expand(B, T, S)],
        CAUSAL_IGNORED: [keys.expand(B, T, S)],
        PAD_TOP_LEFT: [top_left & keys],
        CAUSAL_PART_WRONG: [_banded(T, S, S - T - 1)[None] & keys, _banded(T, S, S - T + 1)[None] & keys],
        EMPTY_ROWS_FILLED: [expected | (empty & diagonal), expected | empty,
                            expected | (empty & (torch.arange(S) == 0)), expected | (empty & keys)],
    }


def _name_padding_bug(results: list[tuple[torch.Tensor, int, torch.Tensor]]) -> str | None:
    """The bug whose masks equal the learner's on every probe; None if none fits them all."""
    for hint in _padding_hypotheses(torch.ones(1, 2, dtype=torch.bool), 1):
        fits, evidence = True, False
        for keep, T, actual in results:
            correct = _banded(T, keep.size(1), keep.size(1) - T)[None] & keep[:, None, :]
            matching = [c for c in _padding_hypotheses(keep, T)[hint] if torch.equal(actual, c)]
            if not matching:                     # this bug would give another mask here
                fits = False
                break
            evidence |= not torch.equal(actual, correct)
        if fits and evidence:
            return hint
    return None


@exercise("7.2", reference="scratchformer.causal")
def causal_padding_mask(fn: Callable) -> None:
    """Check ``fn(keep (B, S) or (B, 1, S) bool, T=None) -> (B, T, S)`` bool: the causal mask
    (lower-right aligned) and the key-padding mask, combined on the keys."""
    __tracebackhide__ = True
    name = "causal_padding_mask"
    g = _generator()
    while True:                                   # sizes that all differ, so no axis hides another
        B, S, T = _randint(g, 4, 5), _randint(g, 6, 9), _randint(g, 2, 5)
        if len({B, S, T}) == 3:
            break
    keep = _padding_batch(g, B, S)
    probes = [("keep (B, S)", keep, None), (f"keep (B, S), T={T}", keep, T),
              ("keep (B, S), T=1", keep, 1), (f"keep (B, S), T=S={S}", keep, S),
              ("keep (B, 1, S)", keep[:, None, :], None), (f"keep (B, 1, S), T={T}", keep[:, None, :], T)]
    results, three_d_wrong = [], []
    for label, k, t in probes:
        what = f"the mask for {label}"
        Tq = S if t is None else t
        before = snapshot(k)
        args = (k,) if t is None else (k, t)
        actual = _call(name, fn, *args)
        require_unchanged(name, ["keep"], before, [k])
        if not isinstance(actual, torch.Tensor):
            raise ExerciseWrong(f"{name}: {what} is {_describe(actual)}; return a torch.Tensor.")
        if actual.is_floating_point():
            raise ExerciseWrong(f"{name}: {what} has dtype {actual.dtype}. {FLOAT_SUM}")
        if actual.dtype != torch.bool:
            raise ExerciseWrong(f"{name}: {what} has dtype {actual.dtype}. {WRONG_DTYPE}")
        if tuple(actual.shape) != (B, Tq, S):
            if k.dim() == 3:
                three_d_wrong.append(f"{label}: shape {tuple(actual.shape)}")
                continue
            hint = f" Likely bug: {AXES_SWAPPED}" if tuple(actual.shape) == (B, S, Tq) != (B, Tq, S) else ""
            raise ExerciseWrong(f"{name}: {what} has shape {tuple(actual.shape)}, expected "
                                f"(B, T, S) = {(B, Tq, S)}.{hint}")
        if k.dim() == 3 and not torch.equal(actual, _banded(Tq, S, S - Tq)[None] & keep[:, None, :]):
            three_d_wrong.append(f"{label}: wrong values")
            continue
        results.append((keep, Tq, actual.detach().cpu()))
    wrong = [(k, t, a) for k, t, a in results
             if not torch.equal(a, _banded(t, S, S - t)[None] & k[:, None, :])]
    if wrong:
        hint = _name_padding_bug(results)
        if hint is not None:
            raise ExerciseWrong(f"{name}: the mask is wrong. Likely bug: {hint}")
        k, t, a = wrong[0]
        expected = _banded(t, S, S - t)[None] & k[:, None, :]
        bad = int((a != expected).flatten(1).any(1).nonzero()[0])
        raise ExerciseWrong(
            f"{name}: the mask for T={t} queries and S={S} keys is wrong. For the key-padding mask "
            f"{k[bad].int().tolist()} (1 = real token) expected (1 = may attend)\n"
            f"{_format(expected[bad])}\ngot\n{_format(a[bad])}\n"
            "Query i may attend to key j when the causal mask allows it and key j is a real token."
        )
    if three_d_wrong:
        raise ExerciseWrong(f"{name}: {'; '.join(three_d_wrong)}. Likely bug: {THREE_D_KEEP}")
    # the device: keep on 'meta' (a shape and a dtype, no data): the result must be there too
    meta = keep.to("meta")
    try:
        actual = _call(name, fn, meta, T)
    except ExerciseWrong as error:
        hint = f" Likely bug: {DEVICE_KEEP}" if "device" in str(error.__cause__) else (
            " (keep was on the 'meta' device, which holds no values: use tensor operations only, "
            "without .item(), .tolist() or Python loops over values.)")
        raise ExerciseWrong(f"{str(error).rstrip('.')}, for keep on another device.{hint}") from error
    if not isinstance(actual, torch.Tensor) or actual.device.type != "meta":
        raise ExerciseWrong(f"{name}: for keep on another device the result is not on that device. "
                            f"Likely bug: {DEVICE_KEEP}")
    _passed(name, "causal & padding on the keys; right, left and full padding, empty rows kept empty; "
                  "T = S and T < S lower-right aligned; (B, 1, S) accepted; on keep's device.")
