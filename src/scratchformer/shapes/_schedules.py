"""Chapter 11: the arguments of the learning-rate schedules."""

from __future__ import annotations

import math
import numbers

import torch

__all__ = [
    "require_noam_args",
    "require_cosine_args",
    "require_noam_schedule",
    "require_cosine_schedule",
]


# --- chapter 11 ---
# Learning-rate schedules (scratchformer.schedules): the closed forms take a step and sizes,
# the factories an optimizer as well. One call each. Steps, sizes and counts are ints (NumPy
# ints too); the step may be 0 (treated as 1 by the schedules).


def _int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _require_step(step) -> None:
    if not _int(step) or step < 0:
        raise ValueError(f"step must be an int >= 0 (optimizer steps count from 1; step 0 is "
                         f"treated as step 1), got step={step!r}.")


def _require_positive_int(name: str, value, why: str = "") -> None:
    if not _int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int{why}, got {name}={value!r}.")


def _require_noam_sizes(d_model, warmup, factor) -> None:
    _require_positive_int("d_model", d_model)
    _require_positive_int("warmup", warmup, " (the number of warmup steps; the rate uses "
                                            "warmup^-1.5)")
    if not _real(factor) or not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor must be a finite number > 0 (it scales the whole schedule), "
                         f"got factor={factor!r}.")


def _require_cosine_sizes(warmup, total_steps, min_ratio) -> None:
    _require_positive_int("warmup", warmup, " (warmup=1 means no warmup: step 1 already uses "
                                            "the full rate)")
    _require_positive_int("total_steps", total_steps)
    if warmup > total_steps:
        raise ValueError(f"warmup={warmup} is larger than total_steps={total_steps}: the warmup "
                         "must end by the last step. Use a shorter warmup or more steps.")
    if not _real(min_ratio) or not 0 <= min_ratio <= 1:
        raise ValueError(f"min_ratio must lie in [0, 1] (the final rate as a fraction of the "
                         f"peak), got min_ratio={min_ratio!r}.")


def require_noam_args(step, d_model, warmup, factor) -> None:
    """Raise ``ValueError`` unless ``step >= 0``, ``d_model >= 1`` and ``warmup >= 1`` are ints and
    ``factor > 0`` is finite."""
    _require_step(step)
    _require_noam_sizes(d_model, warmup, factor)


def require_cosine_args(step, warmup, total_steps, min_ratio) -> None:
    """Raise ``ValueError`` unless ``step >= 0``, ``1 <= warmup <= total_steps`` are ints and
    ``0 <= min_ratio <= 1``."""
    _require_step(step)
    _require_cosine_sizes(warmup, total_steps, min_ratio)


def _require_optimizer(optimizer, divides: bool) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer (e.g. torch.optim.Adam), "
                         f"got {type(optimizer).__name__}.")
    for index, group in enumerate(optimizer.param_groups):
        lr = group.get("initial_lr", group["lr"])
        if isinstance(lr, torch.Tensor):
            lr = lr.item()
        if not _real(lr) or not math.isfinite(lr) or lr < 0 or (divides and lr == 0):
            need = "> 0 (the schedule divides by it)" if divides else ">= 0"
            raise ValueError(f"the learning rate of parameter group {index} must be a finite "
                             f"number {need}, got lr={lr!r}.")


def require_noam_schedule(optimizer, d_model, warmup, factor) -> None:
    """:func:`require_noam_args` without the step, and an optimizer whose every parameter group
    has a learning rate > 0 (``noam_schedule`` divides by it)."""
    _require_optimizer(optimizer, divides=True)
    _require_noam_sizes(d_model, warmup, factor)


def require_cosine_schedule(optimizer, warmup, total_steps, min_ratio) -> None:
    """:func:`require_cosine_args` without the step, and a ``torch.optim.Optimizer``."""
    _require_optimizer(optimizer, divides=False)
    _require_cosine_sizes(warmup, total_steps, min_ratio)
