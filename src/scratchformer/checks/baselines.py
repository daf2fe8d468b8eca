"""Checkers for chapter 05 (``scratchformer.baselines``): receptive fields and the cost of attention."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from scratchformer.checks._common import ExerciseWrong, _call, _generator, _passed

__all__ = ["receptive_field", "self_attention_macs"]


def _require_number(name: str, actual, what: str) -> None:
    __tracebackhide__ = True
    if isinstance(actual, torch.Tensor) and actual.numel() == 1:
        return
    if not isinstance(actual, numbers.Real) or isinstance(actual, bool):
        raise ExerciseWrong(f"{name}: {what} should be a number (an int), got {type(actual).__name__}.")


def _first_match(actual, candidates: dict[str, int]) -> str | None:
    for hint, value in candidates.items():
        if actual == value:
            return hint
    return None


# --------------------------------------------------------------------------------------------
# Exercise 5.1: the receptive field of a stack of convolutions
# --------------------------------------------------------------------------------------------

RF_FORMULA = "r = 1 + Σ_l (k_l - 1) · d_l"


def _receptive_field_bugs(ks: list[int], ds: list[int]) -> dict[str, int]:
    """What the known buggy formulas return for one stack (kernel sizes ks, dilations ds)."""
    expected = 1 + sum((k - 1) * d for k, d in zip(ks, ds))
    product = 1
    for k in ks:
        product *= k
    return {
        "you added the kernel sizes (k·L for L equal layers). The windows of neighbouring positions "
        f"overlap by k - 1, so each layer adds (k - 1)·d new positions: {RF_FORMULA}.": sum(ks),
        "you added k·d per layer. A kernel of size k with dilation d spans (k - 1)·d + 1 inputs, so "
        f"each layer widens the field by (k - 1)·d: {RF_FORMULA}.": sum(k * d for k, d in zip(ks, ds)),
        "the dilation is ignored. A dilated kernel has its k taps d positions apart, so it spans "
        f"(k - 1)·d + 1 inputs: {RF_FORMULA}.": 1 + sum(k - 1 for k in ks),
        "you added 1 per layer. The +1 is counted once, for the output's own position; each layer "
        f"then adds (k - 1)·d: {RF_FORMULA}.": len(ks) + sum((k - 1) * d for k, d in zip(ks, ds)),
        "you multiplied the kernel sizes. With stride 1 the receptive field grows by addition, "
        f"not multiplication (products appear with strides or pooling): {RF_FORMULA}.": product,
        "only one layer is counted. Sum (k - 1)·d over every layer of the stack: "
        f"{RF_FORMULA}.": 1 + (ks[-1] - 1) * ds[-1] if ks else 1,
        "off by one: one too small. Start from 1 (a stack of no layers sees exactly one position, "
        f"the output's own): {RF_FORMULA}.": expected - 1,
        f"off by one: one too large. {RF_FORMULA}.": expected + 1,
    }


def receptive_field(fn: Callable) -> None:
    """Check ``fn(kernel_sizes, dilations=1) -> int``: ``1 + Σ (k_l - 1) d_l`` over the layers."""
    __tracebackhide__ = True
    name = "receptive_field"
    g = _generator()
    # A first stack whose buggy answers all differ, then edge cases, then fresh random stacks.
    cases = [([3, 5, 2, 4], [2, 1, 3, 2]), ([3, 3, 3], [1, 1, 1]), ([3, 3, 3, 3], [1, 3, 9, 27]),
             ([1, 1], [5, 2]), ([7], [3]), ([], [])]
    for _ in range(6):
        layers = int(torch.randint(1, 7, (1,), generator=g))
        cases.append(([int(k) for k in torch.randint(1, 8, (layers,), generator=g)],
                      [int(d) for d in torch.randint(1, 6, (layers,), generator=g)]))
    for ks, ds in cases:
        expected = 1 + sum((k - 1) * d for k, d in zip(ks, ds))
        actual = _call(name, fn, list(ks), list(ds))
        _require_number(name, actual, f"the receptive field of kernels {ks}, dilations {ds}")
        if actual == expected:
            continue
        hint = _first_match(actual, _receptive_field_bugs(ks, ds))
        if hint:
            raise ExerciseWrong(
                f"{name}: for kernel sizes {ks} and dilations {ds} you return {actual}, expected "
                f"{expected}. Likely bug: {hint}"
            )
        raise ExerciseWrong(
            f"{name}: for kernel sizes {ks} and dilations {ds} you return {actual}, expected {expected}. "
            f"Each layer of kernel size k and dilation d widens the field by (k - 1)·d: {RF_FORMULA}."
        )
    # The int shorthand, through the function's own first line.
    for args, expected in [((3,), 3), ((3, [1, 3, 9]), 27), (([5, 5],), 9)]:
        actual = _call(name, fn, *args)
        if actual != expected:
            raise ExerciseWrong(
                f"{name}{args} returns {actual}, expected {expected}. Keep the function's first line, "
                "which turns an int into one entry per layer."
            )
    _passed(name, f"{RF_FORMULA} on {len(cases)} stacks (dilated, kernel size 1, empty, random).")


# --------------------------------------------------------------------------------------------
# Exercise 5.2: the multiply-adds of a self-attention layer
# --------------------------------------------------------------------------------------------

MACS_FORMULA = "n·d_model·(2·d_k + d_v) + n·n·d_k + n·n·d_v"


def _expected_macs(n: int, d_model: int, d_k: int, d_v: int) -> int:
    """Multiply-adds of SelfAttention(d_model, d_k, d_v) on one sequence: what
    torch.utils.flop_counter.FlopCounterMode counts, divided by 2 (tests/test_baselines.py)."""
    return n * d_model * (2 * d_k + d_v) + n * n * (d_k + d_v)


def _macs_bugs(n: int, dm: int, dk: int, dv: int) -> dict[str, int]:
    projections = n * dm * (2 * dk + dv)
    scores, weighted = n * n * dk, n * n * dv
    return {
        "you counted FLOPs. A multiply-add is 2 floating-point operations; count each multiply-add "
        "once (FlopCounterMode's FLOPs / 2).": 2 * (projections + scores + weighted),
        "only the projections X W_Q, X W_K, X W_V are counted; they grow like n·d², as in a "
        "recurrent layer. Add the attention itself: Q Kᵀ costs n·n·d_k and P V costs n·n·d_v.": projections,
        "the three projections Q = X W_Q, K = X W_K, V = X W_V are missing: n·d_model·(2·d_k + d_v) "
        "multiply-adds.": scores + weighted,
        "the weighted sum of the values P V is missing: (n, n) @ (n, d_v) costs n·n·d_v.": projections + scores,
        "the scores Q Kᵀ are missing: (n, d_k) @ (d_k, n) costs n·n·d_k.": projections + weighted,
        "the scores pair every query with every key: Q Kᵀ costs n·n·d_k and P V costs n·n·d_v, not "
        "n·d_k and n·d_v.": projections + n * dk + n * dv,
        "you used d_model where d_k or d_v belong. Q and K have size d_k, V has size d_v.":
            3 * n * dm * dm + 2 * n * n * dm,
        "the value projection W_V is d_model × d_v, not d_model × d_k: the projections cost "
        "n·d_model·(2·d_k + d_v).": 3 * n * dm * dk + scores + weighted,
        "P V multiplies the (n, n) weights by the values of size d_v: n·n·d_v, not n·n·d_k.":
            projections + 2 * scores,
        "only one projection is counted; there are three (W_Q, W_K, W_V).": n * dm * dk + scores + weighted,
    }


def self_attention_macs(fn: Callable) -> None:
    """Check ``fn(n, d_model, d_k=None, d_v=None) -> int``, the multiply-adds of SelfAttention."""
    __tracebackhide__ = True
    name = "self_attention_macs"
    g = _generator()
    # First a case whose buggy answers all differ, then square cases, then fresh random sizes.
    cases = [(7, 12, 5, 3), (16, 8, 8, 8), (1, 4, 2, 6)]
    for _ in range(4):
        cases.append(tuple(int(v) for v in torch.randint(1, 33, (4,), generator=g)))
    for n, dm, dk, dv in cases:
        expected = _expected_macs(n, dm, dk, dv)
        actual = _call(name, fn, n, dm, dk, dv)
        _require_number(name, actual, "the number of multiply-adds")
        if actual == expected:
            continue
        where = f"n={n}, d_model={dm}, d_k={dk}, d_v={dv}"
        hint = _first_match(actual, _macs_bugs(n, dm, dk, dv))
        if hint:
            raise ExerciseWrong(f"{name}: for {where} you return {actual}, expected {expected}. "
                                f"Likely bug: {hint}")
        raise ExerciseWrong(
            f"{name}: for {where} you return {actual}, expected {expected}. A product "
            f"(a, b) @ (b, c) costs a·b·c multiply-adds; the layer costs {MACS_FORMULA}."
        )
    # Defaults: d_k = d_model and d_v = d_k, as in SelfAttention.
    for n, dm in [(10, 6), (3, 16)]:
        expected = _expected_macs(n, dm, dm, dm)
        actual = _call(name, fn, n, dm)
        if actual != expected:
            raise ExerciseWrong(
                f"{name}({n}, {dm}) returns {actual}; with the defaults d_k = d_v = d_model the layer "
                f"costs {expected}. Keep the function's first lines, which fill in the defaults."
            )
    _passed(name, f"{MACS_FORMULA} (what FlopCounterMode counts) on {len(cases) + 2} layer sizes.")
