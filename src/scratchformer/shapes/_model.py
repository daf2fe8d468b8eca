"""Chapter 09: the configuration and the inputs of the whole model."""

from __future__ import annotations

import torch

from scratchformer.shapes._tensors import (
    fmt,
)

__all__ = [
    "POSITIONAL_KINDS",
    "require_transformer_config",
    "require_token_ids",
    "require_transformer_inputs",
]


# --- chapter 09 ---
# The full Transformer (scratchformer.model): its configuration, token ids and the inputs of
# encode / decode / forward. One call each from the model.


POSITIONAL_KINDS = ("sinusoidal", "learned", "rotary")

_CONFIG_SIZES = ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_encoder_layers",
                 "n_decoder_layers", "d_ff", "max_len")


def require_transformer_config(config) -> None:
    """Raise ``ValueError`` unless ``config`` holds valid ``TransformerConfig`` fields: positive
    int sizes, ``d_model`` divisible by ``n_heads``, dropout in [0, 1), boolean flags, a
    ``pad_id`` in both vocabularies, a known ``positional`` kind (rotary: an even head size)."""
    missing = [f for f in (*_CONFIG_SIZES, "dropout", "norm_first", "tie_embeddings", "pad_id",
                           "positional") if not hasattr(config, f)]
    if missing:
        raise ValueError(f"expected a TransformerConfig, got {type(config).__name__} without "
                         f"the field(s) {', '.join(missing)}.")
    for name in _CONFIG_SIZES:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"TransformerConfig: {name} must be a positive int, got {name}={value!r}.")
    D, H = config.d_model, config.n_heads
    if D % H:
        divisors = [h for h in range(1, D + 1) if D % h == 0]
        raise ValueError(f"TransformerConfig: d_model={D} is not divisible by n_heads={H}: every "
                         f"head gets d_model / n_heads features. Choose n_heads among {divisors}.")
    dropout = config.dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"TransformerConfig: dropout must be a probability in [0, 1), got "
                         f"{dropout!r}.")
    for name in ("norm_first", "tie_embeddings"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"TransformerConfig: {name} must be True or False, got "
                             f"{getattr(config, name)!r}.")
    pad_id = config.pad_id
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"TransformerConfig: pad_id must be an int >= 0, got {pad_id!r}.")
    for name in ("src_vocab_size", "tgt_vocab_size"):
        if pad_id >= getattr(config, name):
            raise ValueError(f"TransformerConfig: pad_id={pad_id} is not an id of the vocabulary: "
                             f"{name}={getattr(config, name)}, so ids lie in [0, "
                             f"{getattr(config, name)}). The padding token must exist in both "
                             "vocabularies.")
    if config.positional not in POSITIONAL_KINDS:
        raise ValueError(f"TransformerConfig: positional must be one of {POSITIONAL_KINDS}, got "
                         f"{config.positional!r}.")
    if config.positional == "rotary" and (D // H) % 2:
        raise ValueError(f"TransformerConfig: positional='rotary' rotates pairs of coordinates of "
                         f"every head, so the head size d_model / n_heads must be even; got "
                         f"{D} / {H} = {D // H}.")


def require_token_ids(name: str, tokens, vocab_size: int, max_len: int | None = None) -> None:
    """Raise ``ValueError`` unless ``tokens`` is a (B, L) integer tensor, L >= 1, with ids in
    [0, vocab_size) and, if ``max_len`` is given (learned positions), L <= max_len. Checked before
    the ids reach an embedding lookup, where they would fail with an IndexError on the CPU and a
    device-side assert on a GPU."""
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of token ids (B, L), got "
                         f"{type(tokens).__name__}.")
    if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(f"{name} must hold integer token ids (torch.long), got dtype {tokens.dtype} "
                         f"(shape {fmt(tokens)}). Convert ids with .long(); do not pass embeddings "
                         "or masks.")
    if tokens.dim() != 2:
        raise ValueError(f"{name} must have shape (B, L), got {fmt(tokens)}. For a single sequence "
                         "add a batch axis: tokens.unsqueeze(0).")
    if tokens.size(1) == 0:
        raise ValueError(f"{name} has shape {fmt(tokens)}: every sequence needs at least one "
                         "position (pad empty sequences with pad_id).")
    if max_len is not None and tokens.size(1) > max_len:
        raise ValueError(f"{name} has shape {fmt(tokens)}: length {tokens.size(1)} exceeds "
                         f"max_len={max_len} of the learned positions, which have no row for "
                         f"positions >= {max_len}. Truncate the sequences or build the model with "
                         "a larger max_len.")
    if tokens.numel():
        low, high = tokens.min().item(), tokens.max().item()
        if low < 0:
            raise ValueError(f"{name} holds the negative token id {low}; ids must lie in "
                             f"[0, {vocab_size}).")
        if high >= vocab_size:
            raise ValueError(f"{name} holds the token id {high}, but the vocabulary size is "
                             f"{vocab_size}: ids must lie in [0, {vocab_size}). Was the model built "
                             "with the right vocabulary (src_vocab_size / tgt_vocab_size)?")


def require_transformer_inputs(config, src=None, tgt_in=None, memory=None, src_mask=None) -> None:
    """Check the inputs of ``Transformer.encode`` / ``decode`` / ``forward`` (those given):
    ``src`` (B, S) and ``tgt_in`` (B, T) token ids of the same batch size, ``memory`` (B, S, D),
    and ``src_mask``, the source key-padding mask (B, 1, S) or (B, 1, 1, S), boolean, True = may
    attend (a (B, S) mask would be read as (T, S) by the attention, so it is refused)."""
    max_len = config.max_len if config.positional == "learned" else None
    if src is not None:
        require_token_ids("src", src, config.src_vocab_size, max_len)
    if tgt_in is not None:
        require_token_ids("tgt_in", tgt_in, config.tgt_vocab_size, max_len)
    if src is not None and tgt_in is not None and src.size(0) != tgt_in.size(0):
        raise ValueError(f"src has shape {fmt(src)} and tgt_in {fmt(tgt_in)}: batch sizes "
                         f"{src.size(0)} and {tgt_in.size(0)} differ. Target sequence b is the "
                         "translation of source sequence b: pass batches of the same size.")
    if memory is not None:
        if (not isinstance(memory, torch.Tensor) or memory.dim() != 3
                or memory.size(-1) != config.d_model):
            got = fmt(memory) if isinstance(memory, torch.Tensor) else type(memory).__name__
            raise ValueError(f"memory must be the encoder's output (B, S, {config.d_model}), got "
                             f"{got}.")
        if tgt_in is not None and memory.size(0) != tgt_in.size(0):
            raise ValueError(f"memory has shape {fmt(memory)} and tgt_in {fmt(tgt_in)}: batch "
                             "sizes differ.")
    if src_mask is None:
        return
    if not isinstance(src_mask, torch.Tensor) or src_mask.dtype != torch.bool:
        raise ValueError("src_mask must be a boolean tensor (B, 1, S), True = may attend, got "
                         f"{getattr(src_mask, 'dtype', type(src_mask).__name__)}.")
    keys = src if src is not None else memory
    if keys is None:
        return
    B, S = keys.shape[:2]
    if tuple(src_mask.shape) not in ((B, 1, S), (B, 1, 1, S)):
        hint = ""
        if tuple(src_mask.shape) == (B, S):
            hint = " Give the (B, S) mask its query axis: src_mask[:, None, :]."
        raise ValueError(f"src_mask has shape {fmt(src_mask)}; expected the source key-padding "
                         f"mask (B, 1, S) = ({B}, 1, {S}) (or (B, 1, 1, S)), True at the real "
                         f"tokens.{hint}")
