"""Machinery shared by the exercise checkers: outcomes, calling the learner's code, diagnosis."""


from __future__ import annotations

import textwrap
from collections.abc import Callable

import torch

__all__ = ["ExerciseNotAttempted", "ExerciseWrong"]


class ExerciseNotAttempted(Exception):
    """The exercise still holds its ``raise NotImplementedError`` stub."""


class ExerciseWrong(AssertionError):
    """The learner's code runs but gives a wrong answer; the message holds a hint."""


# --------------------------------------------------------------------------------------------
# Machinery shared by all checkers
# --------------------------------------------------------------------------------------------


def _generator() -> torch.Generator:
    """A generator with a fresh seed, so every check sees new random inputs."""
    g = torch.Generator()
    g.seed()
    return g


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


NOT_ATTEMPTED = (
    "{name}: not attempted yet. Replace the `raise NotImplementedError` line in the cell marked "
    "`# YOUR CODE HERE` with your code, run that cell, then run this check again."
)


def _learner_line(tb) -> str:
    """`` (line N: `code`)`` for the innermost frame of the traceback that is the learner's own
    code (not torch, not the standard library, not scratchformer); empty if there is none."""
    import linecache
    import os
    import traceback

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    skip = (package, os.path.dirname(torch.__file__), os.path.dirname(os.__file__))
    found = ""
    for frame in traceback.extract_tb(tb):
        filename = os.path.abspath(frame.filename) if not frame.filename.startswith("<") else frame.filename
        if filename.startswith(skip) or "site-packages" in filename:
            continue
        code = (frame.line or linecache.getline(frame.filename, frame.lineno)).split("  #")[0].strip()
        found = f" (line {frame.lineno}: `{code}`)" if code else f" (line {frame.lineno})"
    return found


def _raised(name: str, error: Exception, hint: str = "") -> ExerciseWrong:
    """An :class:`ExerciseWrong` that names the learner's exception and line."""
    where = _learner_line(error.__traceback__)
    text = f"{name}: your code raised {type(error).__name__}{where}: {error}"
    return ExerciseWrong(f"{text.rstrip('.')}." + (f" {hint}" if hint else ""))


def _call(name: str, fn: Callable, *args, **kwargs):
    """Call the learner's ``fn``. The stub's NotImplementedError is 'not attempted'; any other
    exception is 'wrong', naming the exception and the learner's line."""
    __tracebackhide__ = True
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise ExerciseNotAttempted(NOT_ATTEMPTED.format(name=name)) from None
    except (ExerciseNotAttempted, ExerciseWrong):
        raise
    except Exception as error:  # the learner's code crashed: report it with a hint
        text = str(error)
        hint = ""
        if "shape" in text or "size" in text or "dimension" in text:
            hint = (
                "Hint: a shape error. Write the shape of every intermediate tensor next to the "
                "line that makes it."
            )
        raise _raised(name, error, hint) from error


def _close(a, b, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol, equal_nan=False)
    )


def _require_tensor(name: str, what: str, x, shape: tuple[int, ...]) -> None:
    __tracebackhide__ = True
    if not isinstance(x, torch.Tensor):
        raise ExerciseWrong(f"{name}: {what} should be a torch.Tensor, got {type(x).__name__}.")
    if tuple(x.shape) != tuple(shape):
        raise ExerciseWrong(
            f"{name}: {what} has shape {tuple(x.shape)}, expected {tuple(shape)}."
        )


def _require_finite(name: str, what: str, x: torch.Tensor, hint: str = "") -> None:
    __tracebackhide__ = True
    if not torch.isfinite(x).all():
        raise ExerciseWrong(f"{name}: {what} contains NaN or inf. {hint}".rstrip())


def _diagnose(name: str, what: str, actual, expected, candidates: dict[str, torch.Tensor],
              generic_hint: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Pass if ``actual`` matches ``expected``; else name the first buggy variant it matches."""
    __tracebackhide__ = True
    if _close(actual, expected, atol, rtol):
        return
    for hint, candidate in candidates.items():
        if _close(actual, candidate, atol, rtol):
            raise ExerciseWrong(f"{name}: {what} is wrong. Likely bug: {hint}")
    error = (actual.float() - expected.float()).abs().max().item()
    raise ExerciseWrong(
        f"{name}: {what} differs from the reference (largest difference {error:.3g}). {generic_hint}"
    )


def _passed(name: str, detail: str) -> None:
    """One ✅ line, wrapped at 80 columns so that it fits the book's output column."""
    print(textwrap.fill(f"✅ {name}: passed — {detail}", width=80, subsequent_indent="   "))


def _random_keep_mask(g: torch.Generator, *shape: int) -> torch.Tensor:
    """A random boolean mask (True = may attend) with at least one True and one False per row."""
    mask = torch.rand(*shape, generator=g) < 0.5
    mask[..., 0] = True
    mask[..., -1] = False
    return mask


def _naive_softmax_with_fill(scores: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~mask, fill), dim=-1)




def _require_empty_row_is_zero(name: str, weights_row: torch.Tensor, out_row: torch.Tensor | None) -> None:
    """A query with nothing to attend to must get weights (and output) exactly 0, not 1/S."""
    __tracebackhide__ = True
    S = weights_row.numel()
    if torch.allclose(weights_row.float(), torch.full((S,), 1 / S)):
        raise ExerciseWrong(
            f"{name}: a query with nothing to attend to got uniform weights 1/S, so it averages "
            "values it may not see. Likely bug: a fully masked row is not zeroed. Filling every key "
            "with the same big negative number makes the softmax uniform; after the softmax, zero "
            "the masked weights: weights.masked_fill(~mask, 0)."
        )
    zero_out = out_row is None or torch.equal(out_row, torch.zeros_like(out_row))
    if not (torch.equal(weights_row, torch.zeros_like(weights_row)) and zero_out):
        raise ExerciseWrong(
            f"{name}: a query with nothing to attend to must get weights"
            f"{'' if out_row is None else ' and output'} of exactly 0; got weights {weights_row.tolist()}."
        )


NAN_FROM_EMPTY_ROW = (
    "Likely bug: NaN from a fully masked row. softmax over a row that is all -inf is 0/0 = NaN, "
    "and torch.where/nan_to_num after it hides the NaN in the output but not in the gradient. "
    "A query with nothing to attend to must get weights and output 0: fill with "
    "torch.finfo(scores.dtype).min and zero the masked weights after the softmax "
    "(weights.masked_fill(~mask, 0))."
)
