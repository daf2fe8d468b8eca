"""Validation for chapter 16: real data, subword vocabularies, checkpoints."""

from __future__ import annotations

import numbers

import torch

__all__ = ["require_same_parameters", "require_label_counts"]


def require_same_parameters(states) -> None:
    """A non-empty list of state dicts (name -> tensor) with the same names and shapes."""
    if not isinstance(states, (list, tuple)) or not states:
        raise ValueError("average_checkpoints needs at least one checkpoint (a list of state "
                         "dicts or paths)")
    for k, state in enumerate(states):
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in state.values()):
            raise ValueError(f"checkpoint {k} is not a state dict of tensors (got "
                             f"{type(state).__name__}); pass model.state_dict() or a path")
    names = set(states[-1])
    for k, state in enumerate(states):
        if set(state) != names:
            diff = sorted(set(state) ^ names)[:5]
            raise ValueError(f"checkpoint {k} has different parameters from the last (e.g. "
                             f"{diff}); average checkpoints of the same model only")
        for name, tensor in state.items():
            if tensor.shape != states[-1][name].shape:
                raise ValueError(f"{name!r} has shape {tuple(tensor.shape)} in checkpoint {k} "
                                 f"but {tuple(states[-1][name].shape)} in the last one")


def _count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def require_label_counts(n_local, n_global, world_size) -> None:
    """Label counts of one rank and of the whole step, and the number of ranks."""
    n_local = _count("n_local", n_local, 0)
    n_global = _count("n_global", n_global, 1)
    _count("world_size", world_size, 1)
    if n_local > n_global:
        raise ValueError(f"n_local ({n_local}) cannot exceed n_global ({n_global}): the global "
                         f"count is the sum over all ranks")
