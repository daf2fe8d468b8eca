"""Helpers for the tests of the exercise checkers."""

import pytest

from scratchformer import checks


def fails_with(checker, implementation, hint):
    """The checker rejects ``implementation`` and its message contains ``hint``."""
    with pytest.raises(checks.ExerciseWrong) as error:
        checker(implementation)
    assert hint in str(error.value), str(error.value)
    return str(error.value)
