"""Chapter 10: the inputs of the label-smoothed loss and of its helpers."""

from __future__ import annotations

import numbers

import torch

from scratchformer.shapes._tensors import fmt

__all__ = ["require_smoothing", "require_loss_inputs"]


# --- chapter 10 ---
# Label smoothing (scratchformer.losses): the smoothing settings, and the logits and targets of
# label_smoothed_loss. One call each from the module's functions.


def require_smoothing(vocab_size, epsilon, pad_id, pad_gets_mass) -> None:
    """Raise ``ValueError`` unless ``vocab_size`` is an int (at least 3 when the smoothing mass
    avoids ``<pad>``, so that some class other than the gold one and the pad gets it, at least
    2 otherwise), ``epsilon`` a number in [0, 1], ``pad_id`` an id of the vocabulary and
    ``pad_gets_mass`` a bool."""
    if not isinstance(pad_gets_mass, bool):
        raise ValueError(f"pad_gets_mass must be True or False, got {pad_gets_mass!r}.")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral):
        raise ValueError(f"the vocabulary size V must be an int, got {vocab_size!r}.")
    smallest = 2 if pad_gets_mass else 3
    if vocab_size < smallest:
        why = ("" if pad_gets_mass else ": the smoothing mass goes to the classes that are "
               "neither the gold token nor <pad>, so there must be at least one")
        raise ValueError(f"the vocabulary size V must be at least {smallest}, got "
                         f"{vocab_size}{why}.")
    if (isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real)
            or not 0 <= float(epsilon) <= 1):
        raise ValueError(f"epsilon (the smoothing mass) must be a number in [0, 1], got "
                         f"{epsilon!r}; the paper uses 0.1.")
    if isinstance(pad_id, bool) or not isinstance(pad_id, numbers.Integral):
        raise ValueError(f"pad_id must be an int, got {pad_id!r}.")
    if not 0 <= pad_id < vocab_size:
        raise ValueError(f"pad_id={pad_id} is not an id of the vocabulary: ids lie in "
                         f"[0, {vocab_size}).")


def require_loss_inputs(logits, target, epsilon, pad_id, pad_gets_mass) -> None:
    """Raise ``ValueError`` unless ``logits`` is a floating (B, T, V) tensor and ``target`` a
    (B, T) integer tensor of ids in [0, V) (padding included), with valid smoothing settings
    (:func:`require_smoothing`)."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        got = f"dtype {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating-point tensor (B, T, V), got {got}.")
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (B, T, V), got {fmt(logits)}. For a single "
                         "sequence add a batch axis with logits.unsqueeze(0).")
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a tensor of token ids (B, T), got "
                         f"{type(target).__name__}.")
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must hold integer token ids (torch.long), got dtype "
                         f"{target.dtype}. Convert ids with .long().")
    if tuple(target.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"target has shape {fmt(target)} but logits {fmt(logits)}: target must "
                         f"be (B, T) = {tuple(logits.shape[:2])}, one id per position. Are the "
                         "labels shifted by one against the decoder input (teacher forcing)?")
    V = logits.size(-1)
    require_smoothing(V, epsilon, pad_id, pad_gets_mass)
    if target.numel():
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= V:
            bad = low if low < 0 else high
            raise ValueError(f"target holds the id {bad}, but the logits score V={V} classes: "
                             f"ids (and pad_id) must lie in [0, {V}). PyTorch's "
                             "ignore_index=-100 has no counterpart here: pad with pad_id.")
