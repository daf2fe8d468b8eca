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

On *not attempted* and *wrong*, the learner's names in the notebook are rebound to the package's
reference (``_exercise.py``), so the cells after a failed check still run and each unsolved
exercise fails only its own check cell. In a notebook the outcome is shown as one message,
without a traceback into the checker.

The checkers run the learner's code on fresh random inputs each time, so an implementation
cannot pass by returning memorised numbers. Hints come from structural checks (NaN, rows that
do not sum to 1, weight on masked keys) and from comparing the learner's output with the
outputs of known buggy variants; a hint names a bug only when every probe agrees with it.
"""

from scratchformer.checks import (
    attention,
    baselines,
    causal,
    decoder,
    decoding,
    encoder,
    losses,
    metrics,
    model,
    multihead,
    positional,
    schedules,
    scores,
    tips,
    training,
    translation,
)
from scratchformer.checks._common import ExerciseNotAttempted, ExerciseWrong
from scratchformer.checks._exercise import REGISTRY, install_notebook_display
from scratchformer.checks.attention import *  # noqa: F403  chapter 02
from scratchformer.checks.baselines import *  # noqa: F403  chapter 05
from scratchformer.checks.causal import *  # noqa: F403  chapter 07
from scratchformer.checks.decoder import *  # noqa: F403  chapter 08
from scratchformer.checks.decoding import *  # noqa: F403  chapter 13
from scratchformer.checks.encoder import *  # noqa: F403  chapter 06
from scratchformer.checks.losses import *  # noqa: F403  chapter 10
from scratchformer.checks.metrics import *  # noqa: F403  chapter 14
from scratchformer.checks.model import *  # noqa: F403  chapter 09
from scratchformer.checks.multihead import *  # noqa: F403  chapter 03
from scratchformer.checks.positional import *  # noqa: F403  chapter 04
from scratchformer.checks.schedules import *  # noqa: F403  chapter 11
from scratchformer.checks.scores import *  # noqa: F403  chapter 01
from scratchformer.checks.tips import *  # noqa: F403  chapter 15
from scratchformer.checks.training import *  # noqa: F403  chapter 12
from scratchformer.checks.translation import *  # noqa: F403  chapter 16

_CHAPTER_MODULES = (scores, attention, multihead, positional, baselines, encoder, causal, decoder, model, losses, schedules, training,
                    decoding, metrics, tips, translation)
__all__ = ["ExerciseNotAttempted", "ExerciseWrong", "REGISTRY"] + [name for m in _CHAPTER_MODULES for name in m.__all__]

install_notebook_display()
