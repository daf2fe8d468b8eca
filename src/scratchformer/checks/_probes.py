"""Probes every checker uses, one per class of plausible wrong answer.

* :func:`mask_variants` — every mask shape a docstring allows, not just the full one;
* :func:`require_dtype` — the output keeps the input's dtype (float16, bfloat16);
* :func:`snapshot` / :func:`require_unchanged` — inputs are not modified in place;
* :func:`require_gradients` — autograd flows through the learner's code to its inputs;
* :func:`as_int` / :func:`as_pair` — equivalent return types are accepted;
* :func:`distinct_ints` — configurations in which every field differs;
* :func:`require_dropout_behaviour` — dropout: deterministic in eval, stochastic in train, with
  the reference's expectation;
* :func:`agreeing_bug` — the one known bug that every probe agrees with, or None.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch

from scratchformer.checks._common import ExerciseWrong

__all__ = [
    "LOW_PRECISION", "mask_variants", "require_dtype", "snapshot", "require_unchanged",
    "require_gradients", "as_int", "as_pair", "distinct_ints", "require_dropout_behaviour",
    "agreeing_bug",
]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def mask_variants(g: torch.Generator, lead: Sequence[int], T: int, S: int) -> dict[str, torch.Tensor]:
    """Random keep-masks (True = may attend, at least one True per row) of every shape that
    broadcasts to ``(*lead, T, S)``: ``(T, S)``, a key-padding mask ``(*lead[:1], 1.., 1, S)``, one
    with a broadcast head axis, and the full shape. Keys name the shapes."""
    def keep(*shape: int) -> torch.Tensor:
        mask = torch.rand(*shape, generator=g) < 0.6
        index = torch.randint(0, shape[-1], shape[:-1], generator=g)
        return mask.scatter(-1, index.unsqueeze(-1), True)

    lead = tuple(lead)
    variants = {"(T, S)": keep(T, S)}
    if lead:
        ones = (1,) * (len(lead) - 1)
        variants[f"key padding {(lead[0], *ones, 1, S)}"] = keep(lead[0], *ones, 1, S)
        if len(lead) >= 2:
            variants[f"{(lead[0], *ones, T, S)} (broadcast over heads)"] = keep(lead[0], *ones, T, S)
    variants[f"full {(*lead, T, S)}"] = keep(*lead, T, S)
    return variants


def require_dtype(name: str, what: str, out, dtype: torch.dtype) -> None:
    """The output must keep the input's dtype."""
    __tracebackhide__ = True
    if isinstance(out, torch.Tensor) and out.dtype != dtype:
        raise ExerciseWrong(
            f"{name}: for {dtype} input, {what} has dtype {out.dtype}; it must be {dtype}, the "
            "input's dtype. Likely bug: a float32 constant or buffer promoted it, or the result was "
            "computed in float32 and not cast back with .to(x.dtype)."
        )


def snapshot(*tensors) -> list:
    """Copies of the tensor arguments, to compare after the call."""
    return [t.detach().clone() if isinstance(t, torch.Tensor) else t for t in tensors]


def require_unchanged(name: str, labels: Sequence[str], before: Sequence, after: Sequence) -> None:
    """No input may be modified in place."""
    __tracebackhide__ = True
    for label, old, new in zip(labels, before, after):
        if isinstance(old, torch.Tensor) and not torch.equal(old, new.detach()):
            raise ExerciseWrong(
                f"{name}: your code changed its input `{label}` in place. Likely bug: an in-place "
                f"operation (`{label} -= ...`, `{label}[...] = ...`, `.masked_fill_`, `.add_`) on an "
                "input. Compute a new tensor instead: the caller still needs the original."
            )


def require_gradients(name: str, out: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
    """Backpropagate from ``out`` and require a finite gradient for every input in ``inputs``."""
    __tracebackhide__ = True
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise ExerciseWrong(
            f"{name}: the output does not depend on the inputs through autograd. Likely bug: "
            "`.detach()`, `.item()`, `torch.no_grad()` or a NumPy round trip inside your code; "
            "training needs gradients to flow through it."
        )
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.dtype)
    (out * weights).sum().backward()
    for label, tensor in inputs.items():
        if tensor.grad is None:
            raise ExerciseWrong(f"{name}: no gradient reaches `{label}`: the output ignores it.")
        if not torch.isfinite(tensor.grad).all():
            raise ExerciseWrong(f"{name}: the gradient with respect to `{label}` contains NaN or inf.")


def as_int(name: str, what: str, value) -> int:
    """Accept Python ints, NumPy integers and integer-valued 0-d tensors; reject the rest."""
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        raise ExerciseWrong(f"{name}: {what} is the float {value}; return an int (use // not /).")
    raise ExerciseWrong(f"{name}: {what} should be an int, got {type(value).__name__} {value!r}.")


def as_pair(name: str, what: str, value) -> tuple:
    """Accept a tuple or a list of two items."""
    __tracebackhide__ = True
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return tuple(value)
    raise ExerciseWrong(f"{name}: return {what} as a pair (a tuple of 2), got {type(value).__name__}.")


def distinct_ints(g: torch.Generator, n: int, low: int, high: int) -> list[int]:
    """``n`` different integers in ``[low, high)``, so no two configuration fields coincide."""
    if high - low < n:
        raise ValueError(f"cannot draw {n} distinct integers from [{low}, {high})")
    return (torch.randperm(high - low, generator=g)[:n] + low).tolist()


def require_dropout_behaviour(name: str, learner: torch.nn.Module, reference: torch.nn.Module,
                              run: Callable[[torch.nn.Module], torch.Tensor], samples: int = 200,
                              max_z: float | None = 1.5,
                              where: str = "to each sub-layer's output, before the residual "
                                           "addition") -> None:
    """``learner`` and ``reference`` hold the same weights and dropout p > 0; ``run(module)`` is one
    forward pass. In eval mode the learner must be deterministic and equal to the reference; in
    train mode it must be stochastic, with the reference's mean output: over ``samples`` passes
    each, the mean absolute z-score of the difference of the two means (each element's
    difference divided by its standard error) must stay below ``max_z`` (about 0.8 when both
    compute the same thing; ``None`` skips this test). ``where`` says where the dropout belongs,
    for the hint."""
    __tracebackhide__ = True
    learner.eval()
    reference.eval()
    with torch.no_grad():
        first, second, expected = run(learner), run(learner), run(reference)
    if not torch.equal(first, second):
        raise ExerciseWrong(
            f"{name}: in eval mode two forward passes differ. Likely bug: dropout applied in eval "
            "mode too. Use nn.Dropout modules (or F.dropout(x, p, training=self.training)): "
            "model.eval() switches them off."
        )
    if not torch.allclose(first.float(), expected.float(), atol=1e-5, rtol=1e-4):
        raise ExerciseWrong(
            f"{name}: in eval mode (dropout off) the output differs from the reference by "
            f"{(first.float() - expected.float()).abs().max().item():.3g}."
        )
    learner.train()
    reference.train()
    try:
        with torch.no_grad():
            draws = torch.stack([run(learner).double() for _ in range(samples)])
            reference_draws = torch.stack([run(reference).double() for _ in range(samples)])
    finally:
        learner.eval()
        reference.eval()
    if torch.equal(draws[0], draws[1]):
        raise ExerciseWrong(
            f"{name}: in train mode two forward passes with dropout p > 0 are identical. Likely "
            "bug: the dropout is missing, or created but never called in forward."
        )
    if max_z is None:
        return
    standard_error = ((draws.var(0) + reference_draws.var(0)) / samples).sqrt()
    varying = standard_error > 1e-6                 # elements that dropout does not touch: skip
    z = ((draws.mean(0) - reference_draws.mean(0)).abs() / standard_error)[varying].mean()
    if varying.any() and z > max_z:
        raise ExerciseWrong(
            f"{name}: in train mode the average output differs from the reference's (mean "
            f"|z| = {z.item():.1f} over {samples} passes; about 0.8 is expected). Likely bug: "
            f"dropout in the wrong place (it belongs {where}), or dropout that does not rescale "
            "the kept values by 1/(1-p). "
            "Use the nn.Dropout modules of __init__."
        )


def agreeing_bug(probes: Sequence[tuple[object, dict[str, object]]],
                 same: Callable[[object, object], bool] | None = None) -> str | None:
    """The hint of the one known bug that reproduces the learner's output at *every* probe.

    ``probes`` holds, per probe, ``(learner_output, {hint: output of the buggy variant})``; every
    probe names the same hints. ``same(a, b)`` compares two outputs (default: tensors or floats
    equal to float tolerance). Returns None when no hint, or more than one, agrees everywhere:
    a hint is never given on the strength of one coincidental number.
    """
    from scratchformer.checks._common import _close

    def default_same(a, b) -> bool:
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            return _close(a, b)
        try:
            return abs(float(a) - float(b)) <= 1e-5 + 1e-4 * abs(float(b))
        except (TypeError, ValueError):
            return False

    same = same or default_same
    if not probes:
        return None
    hints = set(probes[0][1])
    agreeing = [h for h in hints if all(same(out, variants[h]) for out, variants in probes)]
    return agreeing[0] if len(agreeing) == 1 else None
