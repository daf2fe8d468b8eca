"""Input validation shared by the public functions: clear errors that name the shapes."""

# Hand-written (no notebook exports here). Every check raises before the input reaches torch,
# so a user sees *which* argument is wrong and what shape was expected, instead of a matmul
# error from deep inside torch. One submodule per group of chapters; import from
# `scratchformer.shapes`. (Module docstrings stay at most 3 lines: longer ones make
# nbdev-export rewrite the package docstring in scratchformer/__init__.py.)

from scratchformer.shapes import (
    _attention,
    _decoding,
    _layers,
    _losses,
    _metrics,
    _model,
    _positions,
    _schedules,
    _tensors,
    _tips,
    _training,
    _translation,
)
from scratchformer.shapes._attention import *  # noqa: F403
from scratchformer.shapes._decoding import *  # noqa: F403
from scratchformer.shapes._layers import *  # noqa: F403
from scratchformer.shapes._losses import *  # noqa: F403
from scratchformer.shapes._metrics import *  # noqa: F403
from scratchformer.shapes._model import *  # noqa: F403
from scratchformer.shapes._positions import *  # noqa: F403
from scratchformer.shapes._schedules import *  # noqa: F403
from scratchformer.shapes._tensors import *  # noqa: F403
from scratchformer.shapes._tips import *  # noqa: F403
from scratchformer.shapes._training import *  # noqa: F403
from scratchformer.shapes._translation import *  # noqa: F403

__all__ = [name for module in (_tensors, _attention, _positions, _layers, _model, _training,
                               _schedules, _losses, _decoding, _metrics, _tips, _translation)
           for name in module.__all__]
