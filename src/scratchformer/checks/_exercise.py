"""What a check cell does around a checker: report, fall back to the reference, fail alone.

Every public checker is wrapped with :func:`exercise`. When the learner's code passes, the
checker prints one ``✅`` line. When it is *not attempted* or *wrong*, the wrapper

1. rebinds the learner's names in the notebook (``padding_mask``, ``MultiHeadAttention``, ...)
   to the package's reference implementation (module ``reference``) and prints a one-line
   note saying so, so the cells after the check run on working code and only this check cell
   fails;
2. raises :class:`ExerciseNotAttempted` or :class:`ExerciseWrong`. In a notebook these are shown
   as one short message (no traceback into the checker), and the cell still counts as failed,
   so ``pytest --nbval-lax`` reports exactly the unsolved exercises.

Outside a notebook (pytest, a script) nothing is rebound: only names in ``__main__`` are. A
checker never changes the caller's random state (it runs inside ``torch.random.fork_rng``), so
the cells after a check print the same numbers whether or not the check ran.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from collections.abc import Callable

import torch

from scratchformer.checks._common import ExerciseNotAttempted, ExerciseWrong

__all__ = ["exercise", "REGISTRY"]

# checker name -> (exercise number, reference module); read by `scratchformer check`.
REGISTRY: dict[str, tuple[str, str]] = {}


def exercise(number: str, reference: str) -> Callable[[Callable], Callable]:
    """Mark ``checker`` as the check of exercise ``number`` whose reference lives in module
    ``reference`` (e.g. ``"scratchformer.attention"``)."""

    def wrap(checker: Callable) -> Callable:
        REGISTRY[checker.__name__] = (number, reference)

        @functools.wraps(checker)
        def run(*learner, **options):
            __tracebackhide__ = True
            try:
                with torch.random.fork_rng(devices=[]):   # the notebook's random state is kept
                    return checker(*learner, **options)
            except (ExerciseNotAttempted, ExerciseWrong) as outcome:
                outcome.exercise = number
                _fall_back(number, reference, learner, outcome)
                raise

        run.exercise_number = number
        return run

    return wrap


def _notebook_namespace() -> dict | None:
    """The globals of the code that called the checker, if that code is a notebook (``__main__``)."""
    frame = inspect.currentframe()
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("scratchformer.checks"):
            return frame.f_globals if module == "__main__" else None
        frame = frame.f_back
    return None


def _fall_back(number: str, reference: str, learner: tuple, outcome: Exception) -> None:
    """Rebind the learner's objects, in the notebook, to the reference; print one line."""
    namespace = _notebook_namespace()
    if namespace is None:
        return
    module = importlib.import_module(reference)
    replaced = []
    for obj in learner:
        name = getattr(obj, "__name__", None)
        if name and namespace.get(name) is obj and hasattr(module, name):
            namespace[name] = getattr(module, name)
            replaced.append(name)
    state = "not solved yet" if isinstance(outcome, ExerciseNotAttempted) else "not right yet"
    if replaced:
        names = " and ".join(f"`{n}`" for n in replaced)
        print(f"↪ Exercise {number} {state}: the cells below use scratchformer's {names}.")


def _show_outcome(shell, etype, value, tb, tb_offset=None) -> list[str]:
    """IPython handler: show an exercise outcome as one short message, not a traceback."""
    mark = "⏳" if issubclass(etype, ExerciseNotAttempted) else "❌"
    lines = [f"\x1b[1m{mark} {line}\x1b[0m" if i == 0 else line
             for i, line in enumerate(str(value).splitlines() or [""])]
    shell._showtraceback(etype, value, lines)
    return lines


def install_notebook_display() -> None:
    """In IPython/Jupyter, show exercise outcomes without a traceback (the cell still fails)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and hasattr(shell, "set_custom_exc"):
        shell.set_custom_exc((ExerciseNotAttempted, ExerciseWrong), _show_outcome)
