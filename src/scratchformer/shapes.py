"""Input validation shared by the public functions: clear errors that name the shapes."""

# Hand-written (no notebook exports here). Every check raises before the input reaches torch,
# so a user sees *which* argument is wrong and what shape was expected, instead of a matmul
# error from deep inside torch. (Module docstrings stay at most 3 lines: longer ones make
# nbdev-export rewrite the package docstring in __init__.py.)

from __future__ import annotations

import torch

__all__ = ["fmt", "require_tensor", "require_last_dims_match", "require_mask", "require_head_mask"]


def fmt(x: torch.Tensor) -> str:
    """``(2, 3, 4)``-style text for a tensor's shape."""
    return str(tuple(x.shape))


def require_tensor(name: str, x, min_dim: int = 2, floating: bool = True) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor with at least ``min_dim`` axes."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} axes (..., length, features), got shape {fmt(x)}. "
            "Add a batch axis with x.unsqueeze(0) if you have a single sequence."
        )
    if floating and not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}. Convert it with x.float()."
        )


def require_last_dims_match(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
    """Check ``q (..., T, d_k)``, ``k (..., S, d_k)`` and, if given, ``v (..., S, d_v)``."""
    require_tensor("q", q)
    require_tensor("k", k)
    if q.size(-1) != k.size(-1):
        raise ValueError(
            f"q and k must have the same feature size d_k (last axis): q has shape {fmt(q)}, "
            f"k has shape {fmt(k)}. Project them to a common size first."
        )
    if v is not None:
        require_tensor("v", v)
        if v.size(-2) != k.size(-2):
            raise ValueError(
                f"k and v must have the same length S (second-to-last axis): k has shape {fmt(k)}, "
                f"v has shape {fmt(v)}. Every key needs exactly one value."
            )
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], *([] if v is None else [v.shape[:-2]]))
    except RuntimeError:
        shapes = f"q {fmt(q)}, k {fmt(k)}" + ("" if v is None else f", v {fmt(v)}")
        raise ValueError(
            f"the leading (batch/head) axes of {shapes} do not broadcast. Use the same batch size "
            "for all of them."
        ) from None


def require_mask(mask, scores_shape: torch.Size) -> None:
    """Check a boolean mask that must broadcast to ``scores_shape = (..., T, S)``.

    The convention everywhere in scratchformer: **True means "may attend"**.
    """
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a boolean torch.Tensor, got {type(mask).__name__}.")
    if mask.dtype != torch.bool:
        raise ValueError(
            f"mask must have dtype torch.bool (True = may attend), got {mask.dtype}. "
            "Build it with a comparison such as `positions < lengths[:, None]`; for 0/1 tensors use "
            "mask.bool()."
        )
    try:
        broadcast = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(scores_shape):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
            f"{tuple(scores_shape)} = (..., T, S). A key-padding mask is (B, 1, S); a causal mask is "
            "(T, S); a full mask is (B, T, S)."
        )


def require_head_mask(mask, B: int, H: int, T: int, S: int) -> None:
    """Check a multi-head attention mask: boolean (True = may attend) of shape (T, S), (B, T, S)
    or (B, H, T, S), where any axis but the last (S) may be 1 (so (B, 1, S) is a key-padding mask)."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a boolean torch.Tensor (True = may attend), got {type(mask).__name__}.")
    if mask.dtype != torch.bool:
        raise ValueError(
            f"mask must have dtype torch.bool with True = may attend, got {mask.dtype}. For a 0/1 mask "
            "use mask.bool(); a mask in nn.MultiheadAttention's convention (True = may NOT attend) "
            "must be inverted, ~mask. Additive float masks are not accepted."
        )
    accepted = "(T, S) for every sequence and head, (B, T, S) or (B, 1, S) per sequence, (B, H, T, S) per head"
    expected = {2: (T, S), 3: (B, T, S), 4: (B, H, T, S)}.get(mask.dim())
    if expected is None or mask.size(-1) != S or any(m not in (1, e) for m, e in zip(mask.shape, expected)):
        hint = ""
        if mask.dim() == 2 and tuple(mask.shape) == (B, S):
            hint = " A 2-D mask is read as (T, S); for a (B, S) key-padding mask use mask[:, None, :], (B, 1, S)."
        raise ValueError(
            f"mask of shape {fmt(mask)} does not fit B={B}, H={H}, T={T} (queries), S={S} (keys). "
            f"Accepted: {accepted}; any axis but the last (S) may be 1.{hint}"
        )


# --- chapter 07 ---
# Validation for scratchformer.causal: mask sizes, key-padding masks, the block and the LM.

__all__ += ["require_causal_sizes", "require_keep_mask", "require_block_input", "require_tokens",
            "require_generation"]


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

__all__ += ["require_decoder_inputs"]


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


# --- chapter 04 ---


def require_sizes(at_least: int = 1, **sizes) -> None:
    """Raise ``ValueError`` unless every keyword argument is an int >= ``at_least``."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < at_least:
            raise ValueError(f"{name} must be an int >= {at_least}, got {value!r}.")


def require_even_head_dim(head_dim) -> None:
    """Rotary embeddings rotate pairs of coordinates: ``head_dim`` must be an even int >= 2."""
    require_sizes(at_least=2, head_dim=head_dim)
    if head_dim % 2:
        raise ValueError(f"rotary embeddings rotate pairs of coordinates, so the head size must be "
                         f"even; got head_dim={head_dim}.")


def require_sequence(module, x) -> None:
    """Check ``x (..., T, module.d_model)`` for a positional module; if the module has a
    ``max_len`` (a learned table), also ``T <= max_len``."""
    d_model, max_len = module.d_model, getattr(module, "max_len", None)
    owner = type(module).__name__ + (f"(max_len={max_len}, " if max_len else "(")
    owner += f"d_model={d_model})"
    require_tensor("x", x, min_dim=2)
    if x.size(-1) != d_model:
        raise ValueError(f"{owner} got x of shape {fmt(x)}; expected (B, T, {d_model}).")
    T = x.size(-2)
    if max_len is not None and T > max_len:
        raise ValueError(
            f"{owner} got a sequence of length T={T} (x of shape {fmt(x)}): a learned table has "
            f"no row for positions >= {max_len}. Truncate the input to {max_len} tokens, or build "
            f"the module with max_len >= {T} and train it on sequences that long."
        )


def require_rotary_input(x, positions, head_dim: int | None = None) -> None:
    """Check ``x (..., T, Dh)`` with an even ``Dh`` and ``positions``, a tensor that broadcasts
    to ``x.shape[:-1]`` (usually ``(T,)``). With ``head_dim`` (``RotaryEmbedding``), ``Dh`` must
    equal it and ``positions`` may also be None or an int offset."""
    require_tensor("x", x, min_dim=2)
    if head_dim is not None and x.size(-1) != head_dim:
        raise ValueError(f"RotaryEmbedding(head_dim={head_dim}) got a tensor of shape {fmt(x)}; "
                         f"expected (..., T, {head_dim}).")
    if x.size(-1) % 2:
        raise ValueError(f"rotary embeddings rotate pairs of coordinates, so the head size must be "
                         f"even; x has shape {fmt(x)} (head size {x.size(-1)}).")
    if positions is None or (isinstance(positions, int) and not isinstance(positions, bool)):
        if head_dim is not None:                           # RotaryEmbedding: 0.. or offset..
            return
    if not isinstance(positions, torch.Tensor):
        raise ValueError(f"positions must be a tensor of shape (T,), got {type(positions).__name__}; "
                         "for 0 .. T-1 use torch.arange(x.size(-2)).")
    try:
        fits = torch.broadcast_shapes(positions.shape, x.shape[:-1]) == x.shape[:-1]
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"positions of shape {fmt(positions)} do not broadcast to x's (..., T) = "
                         f"{tuple(x.shape[:-1])} (x has shape {fmt(x)}); pass one position per "
                         "token, (T,).")


def require_same_length(q, k) -> None:
    """Queries and keys rotated with one set of positions must have the same length T."""
    require_tensor("q", q, min_dim=2)
    require_tensor("k", k, min_dim=2)
    if q.size(-2) != k.size(-2):
        raise ValueError(f"q of shape {fmt(q)} and k of shape {fmt(k)} have different lengths; "
                         "they share one set of positions here. Rotate each with its own "
                         "positions: rotary.rotate(q, q_positions), rotary.rotate(k, k_positions).")


# --- chapter 05 ---


def per_layer(kernel_sizes, dilations) -> tuple[list[int], list[int]]:
    """Two lists of equal length, one entry per layer, from ints or sequences of positive ints.
    An int is repeated for every layer (two ints describe a single layer)."""
    from collections.abc import Sequence

    def as_list(name, value):
        values = ([value] if isinstance(value, int)
                  else list(value) if isinstance(value, Sequence) else None)
        if values is None or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                     for v in values):
            raise ValueError(f"{name} must be a positive int or a sequence of positive ints, one "
                             f"per layer; got {value!r}.")
        return values

    ks, ds = as_list("kernel_sizes", kernel_sizes), as_list("dilations", dilations)
    if isinstance(kernel_sizes, int) and not isinstance(dilations, int):
        ks = ks * len(ds)
    elif isinstance(dilations, int) and not isinstance(kernel_sizes, int):
        ds = ds * len(ks)
    if len(ks) != len(ds):
        raise ValueError(f"kernel_sizes {list(ks)} and dilations {list(ds)} must have one entry "
                         f"per layer; got {len(ks)} and {len(ds)}.")
    return ks, ds


def conv_stack(kernel_size, n_layers, dilation) -> list[int]:
    """Check a ConvEncoder configuration; return the dilation of each layer."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int (symmetric zero padding), got "
                         f"{kernel_size!r}.")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive int, got {n_layers!r}.")
    return per_layer([kernel_size] * n_layers, dilation)[1]


def require_rnn_config(d_model: int, cell: str, bidirectional: bool, cells) -> None:
    """Check an RNNEncoder configuration: a known cell, an even d_model if bidirectional."""
    if cell not in cells:
        raise ValueError(f"cell must be one of {sorted(cells)}, got {cell!r}.")
    if bidirectional and d_model % 2:
        raise ValueError(f"a bidirectional RNNEncoder gives each direction d_model // 2 units, so "
                         f"d_model must be even; got d_model={d_model}.")


def padded_batch(module, x, mask, right_padded: bool = False):
    """Check ``x (B, T, module.d_model)`` and an optional padding mask, boolean ``(B, T)`` or
    ``(B, 1, T)``, True at the real tokens. Return the mask as ``(B, T)`` (or None). With
    ``right_padded``, the real tokens must come first in every row (``padding_mask``)."""
    d_model = module.d_model
    owner = f"{type(module).__name__}(d_model={d_model})"
    require_tensor("x", x, min_dim=3)
    if x.dim() != 3 or x.size(-1) != d_model:
        raise ValueError(f"{owner} expects x of shape (B, T, {d_model}), got {fmt(x)}.")
    if mask is None:
        return None
    B, T = x.shape[0], x.shape[1]
    name = type(module).__name__
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name}: mask must be a boolean tensor (B, T) or (B, 1, T), True at the "
                         f"real tokens; got {got}. Build it with padding_mask(lengths, T).")
    if mask.dim() == 3 and mask.size(1) == 1:
        mask = mask[:, 0]                                                  # (B, 1, T) -> (B, T)
    if tuple(mask.shape) != (B, T):
        raise ValueError(f"{name}: mask of shape {tuple(mask.shape)} does not fit x of shape "
                         f"{fmt(x)}; expected (B, T) = ({B}, {T}) or (B, 1, T), True at the real "
                         "tokens.")
    if right_padded:
        lengths = mask.sum(dim=-1, keepdim=True)                           # (B, 1)
        if not torch.equal(mask, torch.arange(T, device=mask.device) < lengths):
            raise ValueError(f"{name}: mask must be a right-padding mask (True at the first "
                             "lengths[b] positions of row b, False after them); build it with "
                             "padding_mask(lengths, T).")
    return mask


# --- chapter 01 ---


def require_last_sizes(owner: str, **inputs: tuple[torch.Tensor, int]) -> None:
    """Check each ``name=(x, size)``: ``x`` a floating tensor ``(..., T, size)``.

    ``owner`` names the caller in the message, e.g.
    ``require_last_sizes("AdditiveScore", q=(q, 6), k=(k, 4))``.
    """
    for name, (x, size) in inputs.items():
        require_tensor(name, x)
        if x.size(-1) != size:
            raise ValueError(
                f"{owner} expects {name} of shape (..., T, {size}), got {name} of shape "
                f"{fmt(x)}: its last axis must be the feature size {size}."
            )


def require_pool_inputs(scores, values) -> None:
    """Check ``scores (..., T, S)`` and ``values (..., S, d_v)`` with the same ``S``."""
    require_tensor("scores", scores)
    require_tensor("values", values)
    if scores.size(-1) != values.size(-2):
        raise ValueError(
            f"attention_pool expects scores (..., T, S) and values (..., S, d_v) with the same "
            f"S; got scores {fmt(scores)} and values {fmt(values)}."
        )


# --- chapter 02 ---


def require_lengths(lengths, max_len) -> None:
    """Check ``lengths``: a 1-D integer tensor ``(B,)`` with values in ``[0, max_len]``."""
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        raise ValueError(f"lengths must be a 1-D tensor of sequence lengths (B,), got {lengths!r}.")
    if lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must hold integers, got dtype {lengths.dtype}.")
    if len(lengths) and (lengths.min() < 0 or lengths.max() > max_len):
        raise ValueError(f"lengths must lie in [0, max_len={max_len}], got {lengths.tolist()}.")


def require_scores(scores, mask=None) -> None:
    """Check ``scores (..., S)`` (floating, at least one axis) and, if given, a boolean ``mask``
    (True = may attend) that broadcasts to the scores' shape."""
    require_tensor("scores", scores, min_dim=1)
    if mask is not None:
        require_mask(mask, scores.shape)


# --- chapter 06 ---
# Validation for scratchformer.encoder (and the layers of chapters 07-09 that reuse it).

__all__ += ["require_positive_int", "require_dropout", "require_features",
            "require_feed_forward_config", "require_norm_config", "require_layer_config"]

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


# --- chapter 03 ---
# Validation for scratchformer.multihead: split/merge heads and MultiHeadAttention.

__all__ += ["require_split_heads", "require_merge_heads", "require_mha_config",
            "require_mha_inputs"]


def _is_int(value) -> bool:
    """An integer (Python or NumPy), not a bool."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require_split_heads(x, n_heads) -> None:
    """Check ``x (..., T, D)`` and ``n_heads``: a positive integer that divides ``D``."""
    require_tensor("x", x, min_dim=2, floating=False)
    if not _is_int(n_heads) or n_heads < 1 or x.size(-1) % n_heads:
        raise ValueError(
            f"split_heads: n_heads={n_heads!r} must be a positive integer that divides "
            f"D = {x.size(-1)} (x has shape {fmt(x)}); each head gets D / n_heads features."
        )


def require_merge_heads(x) -> None:
    """Check ``x (..., H, T, Dh)``: at least three axes, heads before time."""
    require_tensor("x", x, min_dim=1, floating=False)
    if x.dim() < 3:
        raise ValueError(f"merge_heads expects x of shape (..., H, T, Dh), as split_heads "
                         f"returns it, got shape {fmt(x)}.")


def require_mha_config(d_model, n_heads, dropout=0.0) -> None:
    """The arguments of ``MultiHeadAttention``: positive integers, ``d_model`` divisible by
    ``n_heads``, a dropout probability in [0, 1)."""
    if not (_is_int(d_model) and _is_int(n_heads)) or d_model < 1 or n_heads < 1:
        raise ValueError(f"d_model and n_heads must be positive integers, got "
                         f"d_model={d_model!r}, n_heads={n_heads!r}.")
    if d_model % n_heads:
        divisors = [h for h in range(1, int(d_model) + 1) if d_model % h == 0]
        raise ValueError(
            f"d_model={d_model} is not divisible by n_heads={n_heads}: every head gets "
            f"d_model / n_heads features. Choose n_heads among the divisors of {d_model}: "
            f"{divisors}."
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")


def require_mha_inputs(module, query, key, value, mask) -> None:
    """Check the inputs of ``module``, a ``MultiHeadAttention`` (it has ``d_model`` and
    ``n_heads``): ``query (B, T, D)``, ``key`` and ``value (B, S, D)``, and ``mask`` None or a
    head mask that fits (B, H, T, S) (see :func:`require_head_mask`). Errors name the shapes."""
    d_model, n_heads = module.d_model, module.n_heads
    this = f"{type(module).__name__}(d_model={d_model}, n_heads={n_heads})"
    for name, x, length in (("query", query, "T"), ("key", key, "S"), ("value", value, "S")):
        require_tensor(name, x, min_dim=3)
        if x.dim() != 3 or x.size(-1) != d_model:
            raise ValueError(f"{this}: {name} has shape {fmt(x)}; expected "
                             f"(B, {length}, {d_model}).")
    if key.shape[:2] != value.shape[:2] or query.size(0) != key.size(0):
        raise ValueError(
            f"{this}: query {fmt(query)}, key {fmt(key)} and value {fmt(value)} must be "
            "(B, T, D), (B, S, D), (B, S, D): the same batch size B, and one value for every key."
        )
    if mask is not None:
        require_head_mask(mask, query.size(0), n_heads, query.size(1), key.size(1))


# --- chapter 09 ---
# The full Transformer (scratchformer.model): its configuration, token ids and the inputs of
# encode / decode / forward. One call each from the model.

__all__ += ["POSITIONAL_KINDS", "require_transformer_config", "require_token_ids",
            "require_transformer_inputs"]

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
