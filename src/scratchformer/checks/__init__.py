"""Exercise checkers: each compares a learner's implementation with the package's reference.

Hand-written (no notebook exports here); one module per chapter module it checks, all
re-exported here so a notebook calls ``checks.scaled_dot_product_attention(my_fn)``. Every
checker has three outcomes:

* **pass** — prints one line starting with ``✅``;
* **not attempted** — the learner's function still raises the stub's ``NotImplementedError``:
  raises :class:`ExerciseNotAttempted` with a friendly message;
* **wrong** — raises :class:`ExerciseWrong` (an ``AssertionError``) whose message names the likely
  bug: softmax over the wrong axis, missing ``1/sqrt(d_k)``, mask polarity flipped, NaN from a
  fully masked row, scores computed as ``k @ q.T``, ...

The checkers run the learner's code on fresh random inputs each time, so an implementation
cannot pass by returning memorised numbers. Hints come from structural checks (NaN, rows that
do not sum to 1, weight on masked keys) and from comparing the learner's output with the
outputs of the known buggy variants in ``shared/PITFALLS.md``.
"""

from scratchformer.checks._common import ExerciseNotAttempted, ExerciseWrong
from scratchformer.checks.attention import (
    masked_softmax,
    padding_mask,
    scaled_dot_product_attention,
)
from scratchformer.checks.scores import additive_score, attention_pool, dot_product_score

__all__ = [
    "ExerciseNotAttempted",
    "ExerciseWrong",
    "dot_product_score",
    "attention_pool",
    "additive_score",
    "padding_mask",
    "masked_softmax",
    "scaled_dot_product_attention",
]
