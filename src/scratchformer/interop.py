"""Conversion between scratchformer's modules and PyTorch's reference modules (parity checks):
mask polarity, parameter names and final norms are converted here, once."""

# Hand-written; no chapter teaches from this file and no model module imports it. The
# structures are the same; three things differ:
# * mask polarity: scratchformer's boolean masks mean True = may attend (the
#   F.scaled_dot_product_attention convention); nn.MultiheadAttention and nn.Transformer* read
#   True = may NOT attend;
# * parameter names: our in_proj.weight is torch's in_proj_weight, our feed_forward.linear1 is
#   its linear1, our cross_attn its multihead_attn;
# * final norms: nn.Transformer always builds final LayerNorms; a post-LN stack of this book
#   has none (a second LayerNorm after the last layer's own would change the function).
# (Module docstrings stay at most 3 lines: longer ones make nbdev-export rewrite the package
# docstring in __init__.py.)

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from scratchformer.shapes import fmt, require_head_mask

__all__ = [
    "to_torch_attn_mask", "to_torch_key_padding_mask", "multihead_from_torch",
    "encoder_layer_from_torch", "encoder_from_torch", "decoder_layer_from_torch",
    "decoder_from_torch", "transformer_core_to_torch", "load_transformer_core_from_torch",
]


# ---- masks ---------------------------------------------------------------------------------

def to_torch_attn_mask(mask: torch.Tensor, batch_size: int, n_heads: int, query_len: int,
                       key_len: int) -> torch.Tensor:
    """A scratchformer mask (True = may attend) as ``nn.MultiheadAttention``'s ``attn_mask``.

    ``mask``: (T, S), (B, T, S), (B, 1, S) or (B, H, T, S), as ``MultiHeadAttention`` accepts it.
    Returns a boolean mask with **True = may NOT attend**: (T, S) for a 2-D mask, otherwise
    (B·H, T, S) ordered batch-major, as ``nn.MultiheadAttention`` lays out its heads.
    """
    require_head_mask(mask, batch_size, n_heads, query_len, key_len)
    if mask.dim() == 2:
        return ~mask.expand(query_len, key_len)                          # (T, S)
    if mask.dim() == 3:
        mask = rearrange(mask, "b t s -> b 1 t s")
    mask = mask.expand(batch_size, n_heads, query_len, key_len)          # (B, H, T, S)
    return ~rearrange(mask, "b h t s -> (b h) t s")                      # inverted once


def to_torch_key_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """A key-padding mask (B, S) or (B, 1, S), True at the real tokens, as PyTorch's
    ``*_key_padding_mask``: (B, S) with **True = padding, may NOT attend**."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor (True = may attend), got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)}.")
    if mask.dim() == 3 and mask.size(1) == 1:
        mask = mask[:, 0, :]
    if mask.dim() != 2:
        raise ValueError(f"a key-padding mask has shape (B, S) or (B, 1, S), got {fmt(mask)}.")
    return ~mask


# ---- parameter names ------------------------------------------------------------------------

_RENAMES = [(r"(^|\.)feed_forward\.", r"\1"), (r"(^|\.)cross_attn\.", r"\1multihead_attn."),
            (r"in_proj\.weight$", "in_proj_weight"), (r"in_proj\.bias$", "in_proj_bias")]


def _torch_name(key: str) -> str:
    """Our parameter name -> PyTorch's (e.g. ``feed_forward.linear1.weight`` -> ``linear1.weight``)."""
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _copy_state(ours: nn.Module, theirs: nn.Module, prefix: str = "") -> None:
    """Copy every tensor of ``ours.state_dict()`` from the same-named tensor of ``theirs``."""
    state = theirs.state_dict()
    with torch.no_grad():
        for key, tensor in ours.state_dict().items():
            name = prefix + _torch_name(key)
            if name not in state:
                raise ValueError(f"no parameter {name!r} in the {type(theirs).__name__} for our {key!r}.")
            tensor.copy_(state[name])


def _like(new: nn.Module, reference: torch.Tensor, training: bool) -> nn.Module:
    return new.to(device=reference.device, dtype=reference.dtype).train(training)


def _activation_name(activation) -> str:
    """"relu" or "gelu" for a PyTorch layer's activation; ValueError otherwise."""
    if activation is F.relu or isinstance(activation, nn.ReLU):
        return "relu"
    if activation is F.gelu or (isinstance(activation, nn.GELU) and activation.approximate == "none"):
        return "gelu"
    raise ValueError(f"only the activations relu and (exact) gelu are supported, got {activation!r}.")


# ---- attention -------------------------------------------------------------------------------

def multihead_from_torch(mha: nn.MultiheadAttention, fused: bool = True):
    """A ``MultiHeadAttention`` holding a copy of the weights of ``mha`` (same dtype, device, mode).

    ``mha`` may be batch-first or not (the weights are the same). Refuses what our module does not
    have: ``kdim``/``vdim`` different from ``embed_dim``, ``add_bias_kv``, ``add_zero_attn``.
    """
    from scratchformer.multihead import MultiHeadAttention

    if not isinstance(mha, nn.MultiheadAttention):
        raise ValueError(f"expected an nn.MultiheadAttention, got {type(mha).__name__}.")
    if not mha._qkv_same_embed_dim:
        raise ValueError(f"kdim={mha.kdim} and vdim={mha.vdim} must equal embed_dim={mha.embed_dim}; "
                         "separate key/value sizes are not supported.")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError("add_bias_kv and add_zero_attn are not supported.")
    bias = mha.in_proj_bias is not None
    new = MultiHeadAttention(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=bias, fused=fused)
    new = _like(new, mha.in_proj_weight, mha.training)
    _copy_state(new, mha)
    return new


# ---- encoder and decoder layers and stacks -------------------------------------------------------

def _layer_from_torch(layer, torch_cls, our_cls, n_norms: int):
    if not isinstance(layer, torch_cls):
        raise ValueError(f"expected an nn.{torch_cls.__name__}, got {type(layer).__name__}.")
    if layer.linear1.bias is None or layer.norm1.bias is None:
        raise ValueError(f"nn.{torch_cls.__name__}(bias=False) is not supported.")
    activation = _activation_name(layer.activation)
    attention = layer.self_attn
    new = our_cls(attention.embed_dim, attention.num_heads, layer.linear1.out_features,
                  dropout=layer.dropout.p, norm_first=layer.norm_first)
    new.feed_forward.activation = activation
    new = _like(new, layer.linear1.weight, layer.training)
    _copy_state(new, layer)
    for i in range(1, n_norms + 1):
        getattr(new, f"norm{i}").eps = getattr(layer, f"norm{i}").eps
    return new


def encoder_layer_from_torch(layer: nn.TransformerEncoderLayer):
    """An ``EncoderLayer`` holding a copy of ``layer``'s weights: same ``norm_first``, dropout,
    LayerNorm eps and activation (relu or exact gelu), dtype, device and mode."""
    from scratchformer.encoder import EncoderLayer

    return _layer_from_torch(layer, nn.TransformerEncoderLayer, EncoderLayer, n_norms=2)


def decoder_layer_from_torch(layer: nn.TransformerDecoderLayer):
    """A ``DecoderLayer`` holding a copy of ``layer``'s weights (as :func:`encoder_layer_from_torch`)."""
    from scratchformer.decoder import DecoderLayer

    return _layer_from_torch(layer, nn.TransformerDecoderLayer, DecoderLayer, n_norms=3)


def _stack_from_torch(stack, torch_cls, our_cls, layer_from_torch):
    """Copy a ``nn.TransformerEncoder``/``nn.TransformerDecoder``: layers and final norm. A pre-LN
    stack must have a final ``norm`` and a post-LN one must not: that is our stacks' structure."""
    if not isinstance(stack, torch_cls):
        raise ValueError(f"expected an nn.{torch_cls.__name__}, got {type(stack).__name__}.")
    layers = [layer_from_torch(layer) for layer in stack.layers]
    norm_first = layers[0].norm_first
    if any(layer.norm_first != norm_first for layer in layers):
        raise ValueError("the stack's layers mix norm_first=True and False.")
    if norm_first and not isinstance(stack.norm, nn.LayerNorm):
        raise ValueError("a pre-LN (norm_first=True) stack needs a final LayerNorm: build it with "
                         f"nn.{torch_cls.__name__}(layer, n_layers, norm=nn.LayerNorm(d_model)).")
    if not norm_first and stack.norm is not None:
        raise ValueError("a post-LN (norm_first=False) stack has no final norm here; build it with "
                         "norm=None.")
    first = layers[0]
    new = our_cls(first.d_model, first.self_attn.n_heads, first.feed_forward.d_ff, len(layers),
                  dropout=first.dropout1.p, norm_first=norm_first)
    new.layers = nn.ModuleList(layers)
    if norm_first:
        new.norm = _like(new.norm, stack.norm.weight, stack.training)
        _copy_state(new.norm, stack.norm)
        new.norm.eps = stack.norm.eps
    return new.train(stack.training)


def encoder_from_torch(encoder: nn.TransformerEncoder):
    """An ``Encoder`` holding a copy of ``encoder``'s layers and final norm."""
    from scratchformer.encoder import Encoder

    return _stack_from_torch(encoder, nn.TransformerEncoder, Encoder, encoder_layer_from_torch)


def decoder_from_torch(decoder: nn.TransformerDecoder):
    """A ``Decoder`` holding a copy of ``decoder``'s layers and final norm."""
    from scratchformer.decoder import Decoder

    return _stack_from_torch(decoder, nn.TransformerDecoder, Decoder, decoder_layer_from_torch)


# ---- the whole model's core --------------------------------------------------------------------

def _core_state(model) -> dict[str, torch.Tensor]:
    """The encoder's and decoder's tensors of ``model``, under ``nn.Transformer``'s names."""
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in model.decoder.state_dict().items()})
    return {_torch_name(k): v for k, v in state.items()}


def transformer_core_to_torch(model) -> nn.Transformer:
    """An ``nn.Transformer(batch_first=True)`` holding a copy of ``model``'s encoder and decoder.

    Same sizes, ``norm_first``, dropout, dtype, device and mode. For a post-LN model the final
    norms that ``nn.Transformer`` always builds are removed (set to None); for pre-LN they receive
    ours. Embeddings, positions and the generator sit outside ``nn.Transformer``.
    """
    c = model.config
    if getattr(c, "positional", None) == "rotary":
        raise ValueError("a model with positional='rotary' rotates queries and keys inside its "
                         "self-attentions; nn.Transformer cannot, so its core would compute "
                         "something else. Convert a sinusoidal or learned model.")
    weight = model.generator.weight
    reference = nn.Transformer(c.d_model, c.n_heads, c.n_encoder_layers, c.n_decoder_layers, c.d_ff,
                               c.dropout, batch_first=True, norm_first=c.norm_first,
                               device=weight.device, dtype=weight.dtype)
    if not c.norm_first:
        reference.encoder.norm = None
        reference.decoder.norm = None
    reference.load_state_dict(_core_state(model), strict=True)
    return reference.train(model.training)


def load_transformer_core_from_torch(model, reference: nn.Transformer):
    """Copy the encoder and decoder weights of ``reference`` into ``model``; returns ``model``.

    ``reference`` must have the model's sizes, ``norm_first`` and the relu activation. A post-LN
    ``reference`` must have its final norms removed (``reference.encoder.norm = None``, same for
    the decoder): ``LayerNorm(LayerNorm(x))`` differs from ``LayerNorm(x)`` once trained.
    """
    if not isinstance(reference, nn.Transformer):
        raise ValueError(f"expected an nn.Transformer, got {type(reference).__name__}.")
    c = model.config
    layer = reference.encoder.layers[0]
    theirs = dict(d_model=reference.d_model, n_heads=reference.nhead,
                  n_encoder_layers=len(reference.encoder.layers),
                  n_decoder_layers=len(reference.decoder.layers), d_ff=layer.linear1.out_features,
                  norm_first=layer.norm_first)
    ours = {k: getattr(c, k) for k in theirs}
    if theirs != ours:
        raise ValueError(f"the nn.Transformer has {theirs} but the model {ours}.")
    if _activation_name(layer.activation) != "relu":
        raise ValueError("only the relu activation is supported.")
    if not c.norm_first and (reference.encoder.norm is not None or reference.decoder.norm is not None):
        raise ValueError("this post-LN model has no final LayerNorms, but the nn.Transformer has "
                         "encoder.norm/decoder.norm (it always builds them). Remove them first: "
                         "reference.encoder.norm = reference.decoder.norm = None.")
    state = reference.state_dict()
    with torch.no_grad():
        for key, tensor in _core_state(model).items():
            tensor.copy_(state[key])
    return model
