"""Chapters 06-08: feed-forward, norms, encoder and decoder layers, causal blocks."""

from __future__ import annotations

import torch

from scratchformer.shapes._tensors import (
    fmt,
    require_head_mask,
    require_tensor,
)

__all__ = [
    "ACTIVATIONS",
    "require_positive_int",
    "require_dropout",
    "require_features",
    "require_feed_forward_config",
    "require_norm_config",
    "require_layer_config",
    "require_causal_sizes",
    "require_keep_mask",
    "require_block_input",
    "require_tokens",
    "require_generation",
    "require_decoder_inputs",
]


# --- chapter 06 ---
# Validation for scratchformer.encoder (and the layers of chapters 07-09 that reuse it).


ACTIVATIONS = ("gelu", "relu")


def require_positive_int(name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 1 (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}.")


def require_dropout(dropout) -> None:
    """Raise ``ValueError`` unless ``dropout`` is a probability in [0, 1)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}.")


def require_features(module, x, batched: bool = False) -> None:
    """Check the input ``x`` of ``module`` (which has ``d_model``): a floating tensor (..., D),
    or (B, S, D) if ``batched``, with D = ``module.d_model``. The error names the module."""
    d_model = module.d_model
    this = f"{type(module).__name__}(d_model={d_model})"
    require_tensor("x", x, min_dim=1)
    if (batched and x.dim() != 3) or x.size(-1) != d_model:
        expected = f"(B, S, {d_model})" if batched else f"(..., {d_model})"
        hint = ""
        if batched and x.dim() == 2:
            hint = " For a single sequence add a batch axis: x.unsqueeze(0)."
        raise ValueError(f"{this} got x of shape {fmt(x)}; expected {expected}.{hint}")


def require_feed_forward_config(d_model, d_ff, dropout, activation) -> None:
    """The arguments of ``FeedForward``: sizes >= 1, a dropout probability, relu or gelu."""
    require_positive_int("d_model", d_model)
    require_positive_int("d_ff", d_ff)
    require_dropout(dropout)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}.")


def require_norm_config(d_model, eps) -> None:
    """The arguments of ``LayerNorm``: a size >= 1 and a number eps >= 0."""
    require_positive_int("d_model", d_model)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}.")


def require_layer_config(d_model, n_heads, d_ff, dropout, n_layers=None) -> None:
    """The arguments of an encoder/decoder layer (and, with ``n_layers``, of a stack): sizes
    >= 1, ``d_model`` divisible by ``n_heads``, a dropout probability."""
    for name, value in (("d_model", d_model), ("n_heads", n_heads), ("d_ff", d_ff)):
        require_positive_int(name, value)
    if d_model % n_heads:
        divisors = [h for h in range(1, d_model + 1) if d_model % h == 0]
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}: every head "
                         f"gets d_model / n_heads features. Choose n_heads among {divisors}.")
    require_dropout(dropout)
    if n_layers is not None:
        require_positive_int("n_layers", n_layers)

# --- chapter 07 ---
# Validation for scratchformer.causal: mask sizes, key-padding masks, the block and the LM.



def require_causal_sizes(T, S) -> None:
    """Check the sizes of a causal mask: integers with 1 <= T <= S (T queries, S keys)."""
    for name, value in (("T", T), ("S", S)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"causal_mask: {name} must be a positive int, got {name}={value!r}.")
    if T > S:
        raise ValueError(
            f"causal_mask: T={T} queries but only S={S} keys. The queries are the last T of the S "
            "positions, so T must be <= S; pass S >= T (S=None gives a square T x T mask)."
        )


def require_keep_mask(keep, name: str = "keep") -> None:
    """Check a key-padding mask: boolean (B, S) or (B, 1, S), True at the real tokens."""
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
        raise ValueError(
            f"{name} must be a boolean tensor (B, S), True at the real tokens, got "
            f"{getattr(keep, 'dtype', type(keep).__name__)}. Additive float masks (0 / -inf) are not "
            "accepted: build a boolean one, e.g. padding_mask(lengths, S), or `tokens != pad_id`."
        )
    if not (keep.dim() == 2 or (keep.dim() == 3 and keep.size(1) == 1)):
        raise ValueError(f"{name} must have shape (B, S) or (B, 1, S), got {fmt(keep)}.")


def require_block_input(x, d_model: int, pad_mask=None) -> None:
    """Check a decoder-only block's input: x (B, T, d_model) and, if given, pad_mask (B, T) or
    (B, 1, T), boolean, True at the real tokens."""
    require_tensor("x", x, min_dim=3)
    if x.dim() != 3 or x.size(-1) != d_model:
        raise ValueError(f"DecoderOnlyBlock(d_model={d_model}) got x of shape {fmt(x)}; "
                         f"expected (B, T, {d_model}).")
    if pad_mask is None:
        return
    require_keep_mask(pad_mask, "pad_mask")
    B, T = x.shape[:2]
    if pad_mask.size(0) != B or pad_mask.size(-1) != T:
        raise ValueError(f"pad_mask has shape {fmt(pad_mask)}; for x of shape {fmt(x)} it must be "
                         f"(B, T) = {(B, T)} or (B, 1, T), True at the real tokens.")


def require_tokens(tokens, vocab_size: int, max_len: int) -> None:
    """Check a language model's input: token ids (B, T) of dtype torch.long, 1 <= T <= max_len,
    every id in [0, vocab_size)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
        got = (f"{fmt(tokens)} {tokens.dtype}" if isinstance(tokens, torch.Tensor)
               else type(tokens).__name__)
        raise ValueError(f"expected tokens of shape (B, T) and dtype torch.long, got {got}.")
    T = tokens.size(1)
    if not 1 <= T <= max_len:
        raise ValueError(f"a model with max_len={max_len} got tokens of shape {fmt(tokens)}: T must be in "
                         f"1..{max_len}. Keep the last {max_len} tokens: tokens[:, -{max_len}:].")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(f"token ids must lie in [0, vocab_size={vocab_size}), got ids from "
                         f"{tokens.min().item()} to {tokens.max().item()}.")


def require_generation(n_new, temperature) -> None:
    """Check the arguments of a generation loop: n_new an int >= 0, temperature a number >= 0."""
    if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 0:
        raise ValueError(f"n_new must be an int >= 0, got {n_new!r}.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}.")

# --- chapter 08 ---
# Validation for scratchformer.decoder: the inputs of a decoder layer or stack.



def require_decoder_inputs(module, x, memory, tgt_mask=None, memory_mask=None) -> None:
    """Check the inputs of a decoder layer or stack ``module`` (with ``d_model`` and ``n_heads``):
    x (B, T, D) and memory (B, S, D), D = d_model, same batch size and dtype; ``tgt_mask`` fits the
    self-attention (T queries x T keys) and ``memory_mask`` the cross-attention (T queries x S keys),
    in the shapes :func:`require_head_mask` accepts."""
    this = f"{type(module).__name__}(d_model={module.d_model})"
    D = module.d_model
    require_tensor("x", x, min_dim=3)
    if x.dim() != 3 or x.size(-1) != D:
        raise ValueError(f"{this} got x of shape {fmt(x)}; expected the target's vectors (B, T, {D}).")
    require_tensor("memory", memory, min_dim=3)
    if memory.dim() != 3:
        raise ValueError(f"{this} got memory of shape {fmt(memory)}; expected the encoder's output "
                         f"(B, S, {D}).")
    if memory.size(-1) != D:
        raise ValueError(
            f"{this} got memory of shape {fmt(memory)}, with {memory.size(-1)} features per position, "
            f"but the decoder's d_model is {D}: the encoder and the decoder must use the same d_model "
            f"(memory (B, S, {D}))."
        )
    if memory.size(0) != x.size(0):
        raise ValueError(
            f"{this}: x has shape {fmt(x)} and memory {fmt(memory)}, batch sizes {x.size(0)} and "
            f"{memory.size(0)}. Target sequence b attends to memory[b], the encoded source sequence b: "
            "pass the memory of the same batch."
        )
    if memory.dtype != x.dtype:
        raise ValueError(f"{this}: x is {x.dtype} but memory is {memory.dtype}; convert one of them.")
    B, T, S = x.size(0), x.size(1), memory.size(1)
    for name, mask, keys, role in (
        ("tgt_mask", tgt_mask, T, f"self-attention: T={T} queries x T={T} keys"),
        ("memory_mask", memory_mask, S, f"cross-attention: T={T} queries x S={S} keys"),
    ):
        if mask is None:
            continue
        try:
            require_head_mask(mask, B, module.n_heads, T, keys)
        except ValueError as error:
            hint = ""
            if isinstance(mask, torch.Tensor) and mask.dim() >= 2 and T != S:
                if name == "tgt_mask" and mask.size(-1) == S:
                    hint = (f" Its last axis has the source length S={S}: it looks like the source "
                            "padding mask, which belongs to memory_mask.")
                if name == "memory_mask" and mask.size(-1) == T:
                    hint = (f" Its last axis has the target length T={T}: it looks like a causal or "
                            "target mask, which belongs to tgt_mask. The cross-attention needs no causal "
                            "mask; its keys are the S memory positions: memory_mask is typically (B, 1, S).")
            raise ValueError(f"{this}: {name} ({role}): {error}{hint}") from None
