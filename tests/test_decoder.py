"""Chapter 08: DecoderLayer and Decoder; parity with nn.TransformerDecoderLayer / nn.TransformerDecoder,
padding invariance, causality, empty rows without NaN, clear errors."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from scratchformer import interop
from scratchformer.attention import padding_mask
from scratchformer.causal import causal_mask, causal_padding_mask
from scratchformer.decoder import Decoder, DecoderLayer
from scratchformer.encoder import LayerNorm

TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=5e-2, rtol=5e-2)}


def randomise(module: nn.Module, seed: int, std: float = 0.3) -> nn.Module:
    """Random weights everywhere (biases and LayerNorm gains included), so a missing piece shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g).to(p.dtype))
    return module.eval()


def torch_layer(D, H, d_ff, norm_first, activation="relu", dropout=0.1):
    return nn.TransformerDecoderLayer(D, H, d_ff, dropout=dropout, activation=activation, batch_first=True,
                                      norm_first=norm_first)


def torch_stack(D, H, d_ff, n_layers, norm_first, activation="relu"):
    return nn.TransformerDecoder(torch_layer(D, H, d_ff, norm_first, activation), n_layers,
                                 norm=nn.LayerNorm(D) if norm_first else None)


def masks(kind_tgt, kind_memory, B, H, T, S, g):
    """Our masks (True = may attend) and PyTorch's arguments (True = may NOT attend), converted once."""
    ours_tgt = ours_memory = None
    theirs = {}
    if kind_tgt in ("causal", "causal+padding"):
        ours_tgt = causal_mask(T)
        theirs["tgt_mask"] = ~ours_tgt
    if kind_tgt == "causal+padding":            # every target has >= 1 real token: no empty row
        tgt_keep = padding_mask(torch.randint(1, T + 1, (B,), generator=g), T)
        ours_tgt = causal_padding_mask(tgt_keep)
        theirs["tgt_key_padding_mask"] = ~tgt_keep
    if kind_memory == "padding":                # every source has >= 1 real token
        src_keep = padding_mask(torch.randint(1, S + 1, (B,), generator=g), S)
        ours_memory = src_keep[:, None, :]
        theirs["memory_key_padding_mask"] = ~src_keep
    elif kind_memory == "per_query":            # (B, T, S), at least one key per query
        ours_memory = torch.rand(B, T, S, generator=g) < 0.6
        ours_memory[..., torch.randint(0, S, (1,), generator=g)] = True
        theirs["memory_mask"] = interop.to_torch_attn_mask(ours_memory, B, H, T, S)
    return ours_tgt, ours_memory, theirs


# D = H * Dh >= 4: with 2 features, a vector whose two entries nearly agree has a variance far
# below LayerNorm's eps, and the normalisation amplifies float32 rounding (differences of 1e-4
# between two correct implementations), which says nothing about the decoder.
SHAPES = dict(B=st.integers(1, 3), T=st.integers(1, 6), S=st.integers(1, 7), H=st.sampled_from([1, 2, 4]),
              Dh=st.integers(1, 4), norm_first=st.booleans(), seed=st.integers(0, 2**16),
              kind_tgt=st.sampled_from(["none", "causal", "causal+padding"]),
              kind_memory=st.sampled_from(["none", "padding", "per_query"]))


# ---- parity with PyTorch -----------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(d_ff=st.integers(1, 12), activation=st.sampled_from(["relu", "gelu"]), grad=st.booleans(), **SHAPES)
def test_decoder_layer_matches_torch(B, T, S, H, Dh, d_ff, norm_first, activation, kind_tgt, kind_memory,
                                     grad, seed):
    """Eval mode, weights copied, masks converted once; every position compared."""
    D = H * Dh
    assume(D >= 4)
    g = torch.Generator().manual_seed(seed)
    reference = randomise(torch_layer(D, H, d_ff, norm_first, activation), seed)
    ours = interop.decoder_layer_from_torch(reference)
    assert not ours.training and ours.norm_first == norm_first
    x, memory = torch.randn(B, T, D, generator=g), torch.randn(B, S, D, generator=g)
    tgt_mask, memory_mask, torch_masks = masks(kind_tgt, kind_memory, B, H, T, S, g)
    with torch.set_grad_enabled(grad):
        expected = reference(x, memory, **torch_masks)
        out = ours(x, memory, tgt_mask, memory_mask)
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.float32])


@settings(max_examples=30, deadline=None)
@given(n_layers=st.integers(1, 3), **SHAPES)
def test_decoder_matches_torch_transformer_decoder(B, T, S, H, Dh, n_layers, norm_first, kind_tgt, kind_memory,
                                                   seed):
    """A stack, with nn.TransformerDecoder(norm=nn.LayerNorm) for pre-LN and norm=None for post-LN."""
    D = H * Dh
    assume(D >= 4)
    g = torch.Generator().manual_seed(seed)
    reference = randomise(torch_stack(D, H, 2 * D, n_layers, norm_first), seed)
    ours = interop.decoder_from_torch(reference)
    assert len(ours.layers) == n_layers and (ours.norm is None) == (not norm_first)
    x, memory = torch.randn(B, T, D, generator=g), torch.randn(B, S, D, generator=g)
    tgt_mask, memory_mask, torch_masks = masks(kind_tgt, kind_memory, B, H, T, S, g)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, memory, tgt_mask, memory_mask), reference(x, memory, **torch_masks),
                                   **TOLERANCE[torch.float32])


@pytest.mark.parametrize("norm_first", [False, True])
def test_parity_in_bfloat16_and_from_torch_keeps_dtype_and_mode(norm_first):
    g = torch.Generator().manual_seed(0)
    reference = randomise(torch_stack(16, 2, 32, 2, norm_first), 0).to(torch.bfloat16)
    ours = interop.decoder_from_torch(reference)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters()) and not ours.training
    x, memory = torch.randn(2, 5, 16, generator=g).bfloat16(), torch.randn(2, 6, 16, generator=g).bfloat16()
    src_keep = padding_mask(torch.tensor([6, 3]), 6)
    with torch.no_grad():
        out = ours(x, memory, causal_mask(5), src_keep[:, None, :])
        expected = reference(x, memory, tgt_mask=~causal_mask(5), memory_key_padding_mask=~src_keep)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, **TOLERANCE[torch.bfloat16])
    assert interop.decoder_from_torch(reference.train()).training


def test_gradients_match_torch():
    torch.manual_seed(0)
    reference = randomise(torch_layer(16, 4, 32, norm_first=False), 1)
    ours = interop.decoder_layer_from_torch(reference)
    x, memory = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    src_keep = padding_mask(torch.tensor([6, 2]), 6)
    upstream = torch.randn(2, 4, 16)
    (reference(x, memory, tgt_mask=~causal_mask(4), memory_key_padding_mask=~src_keep) * upstream).sum().backward()
    (ours(x, memory, causal_mask(4), src_keep[:, None, :]) * upstream).sum().backward()
    pairs = [(ours.self_attn.in_proj.weight, reference.self_attn.in_proj_weight),
             (ours.cross_attn.in_proj.weight, reference.multihead_attn.in_proj_weight),
             (ours.cross_attn.out_proj.weight, reference.multihead_attn.out_proj.weight),
             (ours.feed_forward.linear1.weight, reference.linear1.weight),
             (ours.norm2.weight, reference.norm2.weight), (ours.norm3.bias, reference.norm3.bias)]
    for mine, theirs in pairs:
        torch.testing.assert_close(mine.grad, theirs.grad)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_from_torch_copies_every_weight_exactly(activation):
    reference = randomise(torch_layer(8, 2, 16, norm_first=True, activation=activation, dropout=0.25), 3).train()
    reference.norm2.eps = 1e-6
    ours = interop.decoder_layer_from_torch(reference)
    pairs = [(ours.self_attn.in_proj.weight, reference.self_attn.in_proj_weight),
             (ours.self_attn.out_proj.bias, reference.self_attn.out_proj.bias),
             (ours.cross_attn.in_proj.weight, reference.multihead_attn.in_proj_weight),
             (ours.cross_attn.in_proj.bias, reference.multihead_attn.in_proj_bias),
             (ours.cross_attn.out_proj.weight, reference.multihead_attn.out_proj.weight),
             (ours.feed_forward.linear1.weight, reference.linear1.weight),
             (ours.feed_forward.linear2.bias, reference.linear2.bias),
             (ours.norm1.weight, reference.norm1.weight), (ours.norm3.bias, reference.norm3.bias)]
    for mine, theirs in pairs:
        assert torch.equal(mine, theirs) and mine.data_ptr() != theirs.data_ptr()    # a copy, not shared
    assert ours.training and ours.norm_first and ours.norm2.eps == 1e-6
    assert ours.feed_forward.activation == activation
    assert ours.dropout1.p == ours.dropout3.p == ours.cross_attn.dropout == 0.25


def test_from_torch_refuses_what_it_cannot_copy():
    with pytest.raises(ValueError, match="nn.TransformerDecoderLayer"):
        interop.decoder_layer_from_torch(nn.TransformerEncoderLayer(8, 2, 16))
    with pytest.raises(ValueError, match="bias=False"):
        interop.decoder_layer_from_torch(nn.TransformerDecoderLayer(8, 2, 16, bias=False))
    with pytest.raises(ValueError, match="activations relu and"):
        interop.decoder_layer_from_torch(nn.TransformerDecoderLayer(8, 2, 16, activation=nn.GELU(approximate="tanh")))
    with pytest.raises(ValueError, match="nn.TransformerDecoder"):
        interop.decoder_from_torch(torch_layer(8, 2, 16, norm_first=False))
    with pytest.raises(ValueError, match="needs a final LayerNorm"):
        interop.decoder_from_torch(nn.TransformerDecoder(torch_layer(8, 2, 16, norm_first=True), 2))
    with pytest.raises(ValueError, match="no final norm"):
        interop.decoder_from_torch(nn.TransformerDecoder(torch_layer(8, 2, 16, norm_first=False), 2, norm=nn.LayerNorm(8)))


# ---- the layer is its equations ----------------------------------------------------------------

@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_equals_its_equations(norm_first):
    """Self-attention, then cross-attention (queries from x, keys/values from the un-normalised memory),
    then the feed-forward network, each with its residual and its own LayerNorm."""
    layer = randomise(DecoderLayer(12, 3, 20, norm_first=norm_first), 5)
    x, memory = torch.randn(2, 4, 12), torch.randn(2, 7, 12)
    tgt, mem = causal_mask(4), padding_mask(torch.tensor([7, 3]), 7)[:, None, :]

    def self_attn(h):
        return layer.self_attn(h, h, h, mask=tgt)[0]

    def cross_attn(h):
        return layer.cross_attn(h, memory, memory, mask=mem)[0]

    with torch.no_grad():
        if norm_first:
            h = x + self_attn(layer.norm1(x))
            h = h + cross_attn(layer.norm2(h))
            expected = h + layer.feed_forward(layer.norm3(h))
        else:
            h = layer.norm1(x + self_attn(x))
            h = layer.norm2(h + cross_attn(h))
            expected = layer.norm3(h + layer.feed_forward(h))
        torch.testing.assert_close(layer(x, memory, tgt, mem), expected)


def test_decoder_is_the_stack_with_a_final_norm_for_pre_ln_only():
    for norm_first in (False, True):
        decoder = randomise(Decoder(8, 2, 16, 3, norm_first=norm_first), 2)
        assert isinstance(decoder.norm, LayerNorm) if norm_first else decoder.norm is None
        assert len({id(layer) for layer in decoder.layers}) == 3                       # own weights each
        assert decoder.layers[0].cross_attn.in_proj.weight.data_ptr() != decoder.layers[1].cross_attn.in_proj.weight.data_ptr()
        x, memory = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
        with torch.no_grad():
            h = x
            for layer in decoder.layers:
                h = layer(h, memory, causal_mask(3))
            torch.testing.assert_close(decoder(x, memory, causal_mask(3)), decoder.norm(h) if norm_first else h)


def test_defaults_post_ln_and_parameter_names_follow_torch():
    layer = DecoderLayer(8, 2, 16)
    assert not layer.norm_first and not Decoder(8, 2, 16, 2).norm_first
    names = {name.split(".")[0] for name, _ in layer.named_parameters()}
    assert names == {"self_attn", "cross_attn", "feed_forward", "norm1", "norm2", "norm3"}


def test_eval_is_deterministic_and_training_uses_dropout():
    torch.manual_seed(0)
    decoder = Decoder(16, 2, 32, 2, dropout=0.3)
    x, memory = torch.randn(2, 4, 16), torch.randn(2, 5, 16)
    assert not torch.equal(decoder(x, memory), decoder(x, memory))                  # training: dropout
    decoder.eval()
    assert torch.equal(decoder(x, memory), decoder(x, memory))


def test_cross_attention_reads_the_memory():
    """The output depends on the memory, through the cross-attention only."""
    layer = randomise(DecoderLayer(8, 2, 16), 0)
    x, memory = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    with torch.no_grad():
        assert not torch.allclose(layer(x, memory), layer(x, memory + 1.0))
        layer.cross_attn.out_proj.weight.zero_()
        torch.testing.assert_close(layer(x, memory), layer(x, torch.randn(1, 6, 8)))


# ---- what the masks guarantee ------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 5), S=st.integers(1, 6), extra_tgt=st.integers(0, 3),
       extra_src=st.integers(0, 3), norm_first=st.booleans(), seed=st.integers(0, 2**16), data=st.data())
def test_padding_never_changes_real_positions(B, T, S, extra_tgt, extra_src, norm_first, seed, data):
    """Pad tokens added to the target (masked by tgt_mask) and/or the source (masked by memory_mask),
    filled with garbage, leave every real target position's output unchanged."""
    g = torch.Generator().manual_seed(seed)
    decoder = randomise(Decoder(8, 2, 16, 2, norm_first=norm_first), seed)
    tgt_lengths = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    src_lengths = torch.tensor(data.draw(st.lists(st.integers(0, S), min_size=B, max_size=B)))
    x, memory = torch.randn(B, T, 8, generator=g), torch.randn(B, S, 8, generator=g)
    tgt_keep = padding_mask(tgt_lengths, T)
    x_more = torch.cat([x, 100 * torch.randn(B, extra_tgt, 8, generator=g)], dim=1)
    memory_more = torch.cat([memory, 100 * torch.randn(B, extra_src, 8, generator=g)], dim=1)
    memory_more[~padding_mask(src_lengths, S + extra_src)] = 100.0                 # garbage in all padding
    with torch.no_grad():
        out = decoder(x, memory, causal_padding_mask(tgt_keep), padding_mask(src_lengths, S)[:, None, :])
        out_more = decoder(x_more, memory_more, causal_padding_mask(padding_mask(tgt_lengths, T + extra_tgt)),
                           padding_mask(src_lengths, S + extra_src)[:, None, :])
    torch.testing.assert_close(out_more[:, :T][tgt_keep], out[tgt_keep])


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(2, 6), S=st.integers(1, 6), norm_first=st.booleans(),
       seed=st.integers(0, 2**16), data=st.data())
def test_changing_target_token_j_never_changes_earlier_outputs(B, T, S, norm_first, seed, data):
    g = torch.Generator().manual_seed(seed)
    decoder = randomise(Decoder(8, 2, 16, 2, norm_first=norm_first), seed)
    j = data.draw(st.integers(1, T - 1))
    x, memory = torch.randn(B, T, 8, generator=g), torch.randn(B, S, 8, generator=g)
    changed = x.clone()
    changed[:, j] = 10 * torch.randn(B, 8, generator=g)
    with torch.no_grad():
        out, out_changed = (decoder(inp, memory, causal_mask(T)) for inp in (x, changed))
    torch.testing.assert_close(out_changed[:, :j], out[:, :j])
    assert not torch.allclose(out_changed[:, j], out[:, j])                        # position j does change


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm_first", [False, True])
def test_fully_padded_rows_give_no_nan(dtype, norm_first):
    """A source of length 0 and target rows with nothing to attend to: finite outputs and gradients."""
    torch.manual_seed(0)
    decoder = Decoder(16, 2, 32, 2, norm_first=norm_first).to(dtype)
    x = torch.randn(3, 4, 16, dtype=dtype, requires_grad=True)
    memory = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    src_keep = padding_mask(torch.tensor([5, 0, 2]), 5)                    # sequence 1: empty source
    tgt_keep = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1]]).bool()   # all pad; left-padded
    tgt_mask = causal_padding_mask(tgt_keep)
    assert not tgt_mask[1].any() and not tgt_mask[2, :2].any()               # rows with nothing to attend to
    out = decoder(x, memory, tgt_mask, src_keep[:, None, :])
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(memory.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in decoder.parameters())


# ---- clear errors ------------------------------------------------------------------------------

def test_clear_errors_name_the_shapes():
    layer, decoder = DecoderLayer(8, 2, 16), Decoder(8, 2, 16, 2)
    x, memory = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    cases = [
        (lambda: layer(x, torch.randn(2, 5, 6)), ["(2, 5, 6)", "d_model is 8", "same d_model"]),
        (lambda: decoder(x, torch.randn(4, 5, 8)), ["(2, 3, 8)", "(4, 5, 8)", "batch sizes 2 and 4"]),
        (lambda: layer(torch.randn(3, 8), memory), ["(3, 8)", "unsqueeze"]),
        (lambda: layer(torch.randn(2, 3, 6), memory), ["(2, 3, 6)", "(B, T, 8)"]),
        (lambda: layer(x, torch.randn(5, 8)), ["(5, 8)", "at least 3 axes"]),
        (lambda: layer(x, memory.double()), ["torch.float32", "torch.float64"]),
        (lambda: layer(x, memory, memory_mask=causal_mask(3)),
         ["memory_mask", "(3, 3)", "S=5", "belongs to tgt_mask"]),
        (lambda: layer(x, memory, tgt_mask=padding_mask(torch.tensor([5, 2]), 5)[:, None, :]),
         ["tgt_mask", "(2, 1, 5)", "T=3", "belongs to memory_mask"]),
        (lambda: layer(x, memory, memory_mask=padding_mask(torch.tensor([5, 2]), 5)),
         ["memory_mask", "(2, 5)", "mask[:, None, :]"]),
        (lambda: layer(x, memory, tgt_mask=causal_mask(3).float()), ["tgt_mask", "torch.bool", "~mask"]),
        (lambda: layer(x, memory, memory_mask=torch.ones(3, 2, 5, dtype=torch.bool)), ["(3, 2, 5)", "B=2"]),
        (lambda: DecoderLayer(10, 3, 16), ["d_model=10", "n_heads=3", "[1, 2, 5, 10]"]),
        (lambda: DecoderLayer(8, 2, 0), ["d_ff", "0"]),
        (lambda: DecoderLayer(8, 2, 16, dropout=1.0), ["dropout", "1.0"]),
        (lambda: Decoder(8, 2, 16, 0), ["n_layers", "0"]),
    ]
    for make, fragments in cases:
        with pytest.raises(ValueError) as error:
            make()
        for fragment in fragments:
            assert fragment in str(error.value), (fragment, str(error.value))
