"""Checkers for chapter 05 (``scratchformer.baselines``): receptive fields and the cost of attention."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from scratchformer.checks._common import ExerciseWrong, _call, _generator, _passed
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import as_int, distinct_ints
from scratchformer.checks.positional import _Evidence, _run

__all__ = ["receptive_field", "self_attention_macs"]


def _integer(name: str, what: str, value) -> int:
    """Accept ints, NumPy integers and integer 0-d tensors; say what to do for a float."""
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        raise ExerciseWrong(f"{name}: {what} is a float tensor ({value.item():g}); return an int "
                            "(integer arithmetic, or int(...) at the end).")
    return as_int(name, what, value)


def _int32(value: int) -> int:
    """``value`` as a 32-bit integer would hold it (wrapped around on overflow)."""
    return (value + 2**31) % 2**32 - 2**31


_OVERFLOW = (
    "integer overflow: the answer does not fit in 32 bits (above 2,147,483,647), and a 32-bit "
    "integer wrapped around (torch.int32, numpy.int32 or dtype=torch.int). Python ints never "
    "overflow: use them, or int64."
)


# --------------------------------------------------------------------------------------------
# Exercise 5.1: the receptive field of a stack of convolutions
# --------------------------------------------------------------------------------------------

_RF = ("Build the window one layer at a time: how many input positions does one output of a "
       "layer with kernel size k and dilation d reach, from its first tap to its last? Each "
       "layer widens the window below it by that much, less the one position they share.")


def _receptive_field(ks: list[int], ds: list[int]) -> int:
    return 1 + sum((k - 1) * d for k, d in zip(ks, ds))


_RF_BUGS: dict[str, Callable[[list[int], list[int]], int]] = {
    "you added the kernel sizes (k·L for L equal layers). The windows of neighbouring positions "
    "overlap, so each layer adds fewer new positions than k.": lambda ks, ds: sum(ks),
    "you added k·d per layer. A kernel of size k with dilation d reaches from its first tap to "
    "its last across (k - 1)·d + 1 inputs, not k·d.": lambda ks, ds: sum(k * d for k, d in zip(ks, ds)),
    "the dilation is ignored. A dilated kernel has its k taps d positions apart, so it spans "
    "(k - 1)·d + 1 inputs.": lambda ks, ds: 1 + sum(k - 1 for k in ks),
    "you added the span (k - 1)·d + 1 of every layer. Consecutive windows share one position: "
    "the +1 is counted once, for the output's own position.":
        lambda ks, ds: len(ks) + sum((k - 1) * d for k, d in zip(ks, ds)),
    "you multiplied the kernel sizes. With stride 1 the receptive field grows by addition, not "
    "multiplication (products appear with strides or pooling).": lambda ks, ds: math.prod(ks),
    "you multiplied the spans (k - 1)·d + 1 of the layers. With stride 1 each layer adds to the "
    "window; it does not multiply it.": lambda ks, ds: math.prod((k - 1) * d + 1 for k, d in zip(ks, ds)),
    "only the last layer is counted. Every layer of the stack widens the window.":
        lambda ks, ds: 1 + (ks[-1] - 1) * ds[-1] if ks else 1,
    "only the first layer is counted. Every layer of the stack widens the window.":
        lambda ks, ds: 1 + (ks[0] - 1) * ds[0] if ks else 1,
    "off by one: one too small. A stack of no layers sees exactly one position, the output's "
    "own: start from 1.": lambda ks, ds: _receptive_field(ks, ds) - 1,
    "off by one: one too large. A stack of no layers sees exactly one position, the output's "
    "own.": lambda ks, ds: _receptive_field(ks, ds) + 1,
    _OVERFLOW: lambda ks, ds: _int32(_receptive_field(ks, ds)),
}


@exercise("5.1", reference="scratchformer.baselines")
def receptive_field(fn: Callable) -> None:
    """Check ``fn(kernel_sizes, dilations=1) -> int`` on many stacks; name a bug only if it
    explains every answer."""
    __tracebackhide__ = True
    name = "receptive_field"
    g = _generator()
    stacks = [
        ([3, 5, 2, 4], [2, 1, 3, 2]),                 # every field different
        ([3, 3, 3], [1, 1, 1]),
        ([3, 3, 3, 3], [1, 3, 9, 27]),
        ([1, 1], [5, 2]),                             # kernel size 1: sees only itself
        ([7], [3]),
        ([2, 6], [4, 1]),
        ([], []),                                     # no layers at all
        ([3] * 12, [3**layer for layer in range(12)]),  # deep: 3^12
        ([5] * 6, [10**8] * 6),                       # above 2^31: 32-bit integers overflow
    ]
    for _ in range(4):                                # and fresh random stacks
        layers = int(torch.randint(1, 7, (1,), generator=g))
        stacks.append(([int(k) for k in torch.randint(1, 8, (layers,), generator=g)],
                       [int(d) for d in torch.randint(1, 6, (layers,), generator=g)]))
    evidence = _Evidence()
    for ks, ds in stacks:
        where = f"for kernel sizes {ks} and dilations {ds}"
        if len(ks) > 8:
            where = "for 12 layers of kernel size 3 and dilations 1, 3, 9, ..., 3^11"
        value = _integer(name, f"the receptive field {where}",
                         _run(name, fn, (list(ks), list(ds)), where))
        expected = _receptive_field(ks, ds)
        evidence.add(value == expected, {hint for hint, bug in _RF_BUGS.items() if bug(ks, ds) == value},
                     f"{where} you return {value}, expected {expected}.")
    evidence.verdict(name, _RF)
    # The int shorthand, through the function's own first line.
    for args, expected in [((3,), 3), ((3, [1, 3, 9]), 27), (([5, 5],), 9), (([2, 4], 3), 13)]:
        value = _integer(name, f"receptive_field{args}", _call(name, fn, *args))
        if value != expected:
            raise ExerciseWrong(
                f"{name}{args} returns {value}, expected {expected}. Keep the function's first "
                "line, which turns an int into one entry per layer."
            )
    _passed(name, f"the right width on {len(stacks)} stacks (dilated, kernel size 1, empty, deep, "
                  "random) and with the int shorthand.")


# --------------------------------------------------------------------------------------------
# Exercise 5.2: the multiply-adds of a self-attention layer
# --------------------------------------------------------------------------------------------

_MACS = ("A product (a, b) @ (b, c) costs a·b·c multiply-adds. Write down the shapes of the five "
         "products (the three projections, Q Kᵀ and P V) and add up their costs.")


def _expected_macs(n: int, d_model: int, d_k: int, d_v: int) -> int:
    """Multiply-adds of SelfAttention(d_model, d_k, d_v) on one sequence: what
    torch.utils.flop_counter.FlopCounterMode counts, divided by 2 (tests/test_baselines.py)."""
    return n * d_model * (2 * d_k + d_v) + n * n * (d_k + d_v)


def _macs_bugs(n: int, dm: int, dk: int, dv: int) -> dict[str, int]:
    projections = n * dm * (2 * dk + dv)
    scores, weighted = n * n * dk, n * n * dv
    right = projections + scores + weighted
    return {
        "you counted FLOPs. A multiply-add is 2 floating-point operations; count each "
        "multiply-add once (FlopCounterMode's FLOPs / 2).": 2 * right,
        "only the projections X W_Q, X W_K, X W_V are counted; they grow like n·d², as in a "
        "recurrent layer. Add the attention itself: Q Kᵀ and P V.": projections,
        "the three projections Q = X W_Q, K = X W_K, V = X W_V are missing.": scores + weighted,
        "the weighted sum of the values P V is missing: (n, n) @ (n, d_v).": projections + scores,
        "the scores Q Kᵀ are missing: (n, d_k) @ (d_k, n).": projections + weighted,
        "the scores pair every query with every key: Q Kᵀ is (n, d_k) @ (d_k, n), an n × n "
        "matrix, and P V is (n, n) @ (n, d_v).": projections + n * dk + n * dv,
        "you used d_model where d_k or d_v belong. Q and K have size d_k, V has size d_v.":
            3 * n * dm * dm + 2 * n * n * dm,
        "the value projection W_V is d_model × d_v, not d_model × d_k.":
            3 * n * dm * dk + scores + weighted,
        "P V multiplies the (n, n) weights by the values of size d_v, not d_k.":
            projections + 2 * scores,
        "only one projection is counted; there are three (W_Q, W_K, W_V).":
            n * dm * dk + scores + weighted,
        "you counted the scaling by 1/sqrt(d_k) (n·n multiplications). It is not a matrix "
        "product; count only the products.": right + n * n,
        "you counted an output projection. Chapter 02's SelfAttention has none (multi-head "
        "attention adds W_O later).": right + n * dv * dm,
        _OVERFLOW: _int32(right),
    }


@exercise("5.2", reference="scratchformer.baselines")
def self_attention_macs(fn: Callable) -> None:
    """Check ``fn(n, d_model, d_k=None, d_v=None) -> int`` on many layer sizes; name a bug only
    if it explains every answer."""
    __tracebackhide__ = True
    name = "self_attention_macs"
    g = _generator()
    cases = [(7, 12, 5, 3),                           # every size different
             (1, 9, 4, 6),                            # one token: n·n = n
             (50000, 3000, 128, 250)]                 # the answer is above 2^31
    for _ in range(3):                                # sizes that all differ, freshly drawn
        cases.append(tuple(distinct_ints(g, 4, 2, 40)))
    evidence = _Evidence()
    for sizes in cases:
        where = "for " + ", ".join(f"{k}={v}" for k, v in zip(("n", "d_model", "d_k", "d_v"), sizes))
        value = _integer(name, f"the number of multiply-adds {where}", _run(name, fn, sizes, where))
        expected = _expected_macs(*sizes)
        evidence.add(value == expected,
                     {hint for hint, bug in _macs_bugs(*sizes).items() if bug == value},
                     f"{where} you return {value:,}, expected {expected:,}.")
    evidence.verdict(name, _MACS)
    # The defaults, through the function's own first lines: d_k = d_model, d_v = d_k.
    for args, sizes in [((10, 6), (10, 6, 6, 6)), ((5, 8, 3), (5, 8, 3, 3))]:
        value = _integer(name, f"self_attention_macs{args}", _call(name, fn, *args))
        if value != _expected_macs(*sizes):
            raise ExerciseWrong(
                f"{name}{args} returns {value:,}; with the defaults d_k = {sizes[2]} and "
                f"d_v = {sizes[3]} the layer costs {_expected_macs(*sizes):,}. Keep the "
                "function's first lines, which fill in the defaults."
            )
    _passed(name, f"the multiply-adds FlopCounterMode counts, on {len(cases) + 2} layer sizes "
                  "(one token, defaults, an answer past 2^31).")
