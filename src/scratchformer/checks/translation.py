"""Checkers for chapter 16 (``scratchformer.translation``): checkpoint averaging (exercise
16.1) and the loss weight of a data-parallel rank (exercise 16.2)."""

from __future__ import annotations

import numbers
import random
from collections.abc import Callable

import numpy as np
import torch

from scratchformer.checks._common import ExerciseWrong, _call, _close, _passed
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import agreeing_bug, require_unchanged, snapshot

__all__ = ["average_checkpoints", "ddp_loss_weight"]


# --------------------------------------------------------------------------------------------
# Exercise 16.1: average_checkpoints(state_dicts) -> state dict
# --------------------------------------------------------------------------------------------

LAST_TWO = (
    "the result is the mean of the last two checkpoints only: average over all K state dicts "
    "you are given (len(states) of them)."
)
WRONG_COUNT_LOW = (
    "the sum is divided by K - 1 instead of K, the number of checkpoints: divide by "
    "len(states)."
)
WRONG_COUNT_HIGH = (
    "the sum is divided by K + 1 instead of K, the number of checkpoints (an accumulator "
    "that started from one of them counted twice?): divide by len(states)."
)
NOT_DIVIDED = "the tensors are summed but not divided by K, the number of checkpoints."
FIRST_ONLY = "the result is the first checkpoint itself, not the mean of all K."
LAST_ONLY = "the result is the last checkpoint itself, not the mean of all K."
INT_AVERAGED = (
    "an integer tensor ({key!r}, a counter such as a step or num_batches_tracked) was "
    "averaged{how}: counts are not weights. Copy integer and bool tensors from the last "
    "checkpoint (tensor.is_floating_point() tells them apart)."
)
INT_FROM_FIRST = (
    "the integer tensor {key!r} was copied from the first checkpoint: take the last one "
    "(the most recent count)."
)
DTYPE_NOT_KEPT = (
    "{key!r} came in as {dtype_in} and went out as {dtype_out}: averaging must keep each "
    "tensor's dtype (accumulate in a wider type if you like, then convert back with "
    ".to(tensor.dtype))."
)
DICT_CHANGED = (
    "your code changed the state dict `states[{k}]` itself (it replaced its entry {key!r}): "
    "build a new dict; the caller's checkpoints, maybe a live model's, must stay as they were."
)
NOT_A_DICT = "must return a dict (name -> tensor) with the same keys as the checkpoints."


def _checkpoints(rng: random.Random, g: torch.Generator, K: int) -> list[dict]:
    """K state dicts with every kind of entry: fp32, bf16, fp16, int64 counters, a bool."""
    shape = (rng.randint(2, 5), rng.randint(2, 6))
    states = []
    for k in range(K):
        offset = float(rng.uniform(-3, 3))
        states.append({
            "encoder.weight": torch.randn(shape, generator=g) + offset,
            "decoder.bias": (torch.randn(shape[1], generator=g) * 2 + offset).bfloat16(),
            "generator.weight": (torch.randn(shape[0], generator=g) + offset).half(),
            "norm.num_batches_tracked": torch.tensor(100 * (k + 1) + rng.randint(0, 9)),
            "step": torch.tensor([rng.randint(1, 10_000)], dtype=torch.int32),
            "mask": torch.rand(shape[1], generator=g) > 0.5,
        })
    return states


def _reference_average(states: list[dict]) -> dict:
    out = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            out[key] = (sum(s[key].double() for s in states) / len(states)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out


def _mean_variants(states: list[dict], key: str) -> dict[str, torch.Tensor]:
    values = [s[key].double() for s in states]
    K, total = len(values), sum(values)
    return {LAST_TWO: (values[-1] + values[-2]) / 2, WRONG_COUNT_LOW: total / (K - 1),
            WRONG_COUNT_HIGH: total / (K + 1), NOT_DIVIDED: total, FIRST_ONLY: values[0],
            LAST_ONLY: values[-1]}


def _tolerance(dtype: torch.dtype) -> dict:
    return {torch.bfloat16: dict(atol=2e-2, rtol=1e-2),
            torch.float16: dict(atol=2e-3, rtol=2e-3)}.get(dtype, dict(atol=1e-5, rtol=1e-5))


@exercise("16.1", reference="scratchformer.translation")
def average_checkpoints(average_checkpoints: Callable) -> None:
    """Check ``average_checkpoints(states) -> state dict`` on checkpoints with fp32, bf16 and
    fp16 weights, integer counters and a bool buffer, K = 2..5."""
    __tracebackhide__ = True
    name = "average_checkpoints"
    rng = random.Random()
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    probes: list[tuple[object, dict]] = []
    failure: str | None = None
    for K in (3, 4, 5, 2):
        states = _checkpoints(rng, g, K)
        objects = [dict(s) for s in states]
        before = [snapshot(*s.values()) for s in states]
        out = _call(name, average_checkpoints, states)
        for k, (s, old) in enumerate(zip(states, objects)):
            for key in old:
                if s.get(key) is not old[key]:
                    raise ExerciseWrong(f"{name}: {DICT_CHANGED.format(k=k, key=key)}")
            require_unchanged(name, [f"states[{k}][{key!r}]" for key in s], before[k],
                              list(s.values()))
        if not isinstance(out, dict) or set(out) != set(states[-1]):
            got = sorted(out) if isinstance(out, dict) else type(out).__name__
            raise ExerciseWrong(f"{name}: {NOT_A_DICT} Expected keys {sorted(states[-1])}, "
                                f"got {got}.")
        expected = _reference_average(states)
        for key, want in expected.items():
            got = out[key]
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                raise ExerciseWrong(f"{name}: {key!r} should be a tensor of shape "
                                    f"{tuple(want.shape)}, got {shape}.")
            if not want.is_floating_point():
                if got.is_floating_point():
                    raise ExerciseWrong(f"{name}: " + INT_AVERAGED.format(
                        key=key, how=f" into {got.dtype}"))
                if not torch.equal(got.to(want.dtype), want):
                    first = states[0][key]
                    hint = (INT_FROM_FIRST.format(key=key) if torch.equal(got.to(first.dtype),
                                                                          first)
                            else INT_AVERAGED.format(key=key, how=""))
                    raise ExerciseWrong(f"{name}: {hint}")
                continue
            if got.dtype != want.dtype:
                raise ExerciseWrong(f"{name}: " + DTYPE_NOT_KEPT.format(
                    key=key, dtype_in=want.dtype, dtype_out=got.dtype))
        weights = "encoder.weight"
        if K >= 3:
            probes.append((out[weights].double(), _mean_variants(states, weights)))
        for key, want in expected.items():
            if want.is_floating_point() and failure is None and not _close(
                    out[key].double(), want.double(), **_tolerance(want.dtype)):
                failure = (f"{key!r} (K = {K}) differs from the element-wise mean: largest "
                           f"difference {(out[key].double() - want.double()).abs().max():.3g}.")
    if failure is not None:
        hint = agreeing_bug(probes, same=lambda a, b: _close(a, b, atol=1e-4, rtol=1e-4))
        raise ExerciseWrong(f"{name}: " + (f"Likely bug: {hint}" if hint else failure))
    _passed(name, "means over all K in each tensor's dtype, counters copied from the last, "
                  "inputs untouched")


# --------------------------------------------------------------------------------------------
# Exercise 16.2: ddp_loss_weight(n_local, n_global, world_size) -> float
# --------------------------------------------------------------------------------------------

MEAN_OF_MEANS = (
    "every rank's weight is 1, so the step is the mean of the per-rank means: a rank with few "
    "labels then counts as much as a busy one. Weight each rank by its share of the labels."
)
FORGOT_WORLD = (
    "the weight is n_local / n_global, the rank's share of the labels, but DDP then divides "
    "the sum of the gradients by world_size (it averages over ranks): the gradients come out "
    "world_size times too small. Multiply by world_size."
)
DIVIDED_BY_WORLD = (
    "the weight divides by world_size, but DDP already averages over the ranks: multiply by "
    "world_size to undo that average instead."
)
INVERTED = "the weight is upside down: it must grow with n_local, not shrink."
INTEGER_DIVISION = (
    "the weight is rounded to an integer (// instead of /): it is a fraction in general."
)


def _weight_variants(n: int, total: int, world: int) -> dict[str, float]:
    return {MEAN_OF_MEANS: 1.0, FORGOT_WORLD: n / total, DIVIDED_BY_WORLD: n / (total * world),
            INVERTED: total / (world * n) if n else float("inf"),
            INTEGER_DIVISION: float(world * n // total)}


def _as_number(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ExerciseWrong(f"{name}: must return a number (a float), got "
                            f"{type(value).__name__}.")
    return float(value)


@exercise("16.2", reference="scratchformer.translation")
def ddp_loss_weight(ddp_loss_weight: Callable) -> None:
    """Check ``ddp_loss_weight(n_local, n_global, world_size)`` on random label counts over
    2..8 ranks (some rank without labels, numpy integers too): the weighted, rank-averaged
    loss must equal the mean over all labels."""
    __tracebackhide__ = True
    name = "ddp_loss_weight"
    rng = random.Random()
    probes, failure = [], None
    for case in range(6):
        world = rng.randint(2, 8)
        counts = [rng.randint(1, 400) for _ in range(world)]
        if case % 2:
            counts[rng.randrange(world)] = 0                  # a rank without labels
        total = sum(counts)
        losses = [[rng.uniform(0.5, 5.0) for _ in range(n)] for n in counts]
        target = sum(map(sum, losses)) / total                 # single-process loss
        weights = []
        for n in counts:
            args = (np.int64(n), np.int64(total), world) if case == 2 else (n, total, world)
            w = _as_number(name, _call(name, ddp_loss_weight, *args))
            weights.append(w)
            probes.append((w, _weight_variants(n, total, world)))
        means = [sum(x) / len(x) if x else 0.0 for x in losses]
        ddp = sum(w * m for w, m in zip(weights, means)) / world   # DDP averages the ranks
        if failure is None and not abs(ddp - target) <= 1e-6 + 1e-5 * abs(target):
            failure = (f"with label counts {counts} on {world} ranks the weighted, "
                       f"rank-averaged loss is {ddp:.6g}, but the mean over all {total} "
                       f"labels is {target:.6g}.")
    if failure is not None:
        hint = agreeing_bug(probes)
        raise ExerciseWrong(f"{name}: " + (f"Likely bug: {hint}" if hint else failure))
    _passed(name, "the weighted, rank-averaged loss equals the mean over all labels, "
                  "for every split of the labels")
