"""Chapter 12: the inputs of the training step, decoding and the training loop."""

from __future__ import annotations

import torch

from scratchformer.shapes._tensors import fmt

__all__ = [
    "PRECISIONS",
    "require_target_batch",
    "require_token_batch",
    "require_micro_batches",
    "require_precision",
    "require_fit_arguments",
]


# --- chapter 12 ---
# Training (scratchformer.training): target batches for teacher forcing, the micro-batches of
# one optimizer step, the precision, and the loop's step counts. One call each.


PRECISIONS = ("fp32", "bf16", "fp16")


def require_token_batch(name: str, x, min_length: int = 1) -> None:
    """Raise ``ValueError`` unless ``x`` is a (B, L) integer tensor of token ids, L >= min_length."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of token ids (B, L), got {type(x).__name__}.")
    if x.dim() != 2:
        raise ValueError(f"{name} must be a (batch, length) tensor of token ids, got shape {fmt(x)}. "
                         "Add a batch axis with x.unsqueeze(0) for a single sequence.")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {x.dtype}. Use x.long().")
    if x.shape[1] < min_length:
        raise ValueError(f"{name} must have at least {min_length} positions, got shape {fmt(x)}.")


def require_target_batch(name: str, tgt) -> None:
    """A target batch ``<s> y_1 ... </s>``: a (B, T) integer tensor with T >= 2, so that the
    decoder input and the labels, each one position shorter, are not empty."""
    require_token_batch(name, tgt, min_length=2)


def require_micro_batches(micro_batches) -> None:
    """A non-empty list of ``(src (B, S), tgt (B, T))`` pairs with the same B within a pair."""
    if isinstance(micro_batches, tuple) and len(micro_batches) == 2 and all(
            isinstance(x, torch.Tensor) for x in micro_batches):
        raise ValueError("micro_batches must be a list of (src, tgt) pairs; for a single batch "
                         "pass [(src, tgt)].")
    if not isinstance(micro_batches, (list, tuple)) or not micro_batches:
        raise ValueError("micro_batches must be a non-empty list of (src, tgt) pairs, got "
                         f"{type(micro_batches).__name__} of length "
                         f"{len(micro_batches) if hasattr(micro_batches, '__len__') else '?'}.")
    for i, pair in enumerate(micro_batches):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"micro_batches[{i}] must be a (src, tgt) pair, got "
                             f"{type(pair).__name__}.")
        src, tgt = pair
        require_token_batch(f"micro_batches[{i}] src", src)
        require_target_batch(f"micro_batches[{i}] tgt", tgt)
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"micro_batches[{i}]: src {fmt(src)} and tgt {fmt(tgt)} must have the "
                             "same batch size (first axis).")


def require_precision(precision, scaler=None) -> None:
    """``precision`` in PRECISIONS; "fp16" needs a gradient scaler (``torch.amp.GradScaler``),
    because fp16 gradients underflow to zero without one."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "fp16" and scaler is None:
        raise ValueError("precision='fp16' needs scaler=torch.amp.GradScaler(device_type): small "
                         "fp16 gradients underflow to zero without loss scaling. Use 'bf16' to "
                         "train without a scaler.")


def _positive_int(name: str, value, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "an int >= 0" if allow_zero else "a positive int"
        raise ValueError(f"{name} must be {what}, got {value!r}.")


def require_fit_arguments(steps, start_step, log_every, eval_every, precision, evaluate_fn) -> None:
    """The step counts of ``fit``: positive ``steps`` and ``log_every``, ``0 <= start_step <=
    steps``, ``eval_every >= 0`` (0: no evaluation; > 0 needs ``evaluate_fn``)."""
    _positive_int("steps", steps)
    _positive_int("start_step", start_step, allow_zero=True)
    _positive_int("log_every", log_every)
    _positive_int("eval_every", eval_every, allow_zero=True)
    if start_step > steps:
        raise ValueError(f"start_step={start_step} is past steps={steps}: nothing to train. "
                         "Ask for more steps to continue a run.")
    if eval_every and evaluate_fn is None:
        raise ValueError(f"eval_every={eval_every} needs evaluate_fn, a function model -> dict.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
