"""interop: scratchformer modules <-> torch.nn reference modules, weights copied, outputs equal."""

import copy

import pytest
import torch
from torch import nn

from scratchformer import interop
from scratchformer.attention import padding_mask
from scratchformer.causal import causal_mask
from scratchformer.model import Transformer, TransformerConfig


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_and_decoder_stacks_match_torch(norm_first):
    torch.manual_seed(0)
    B, S, T, D, H, F = 2, 5, 4, 16, 4, 24
    enc_layer = nn.TransformerEncoderLayer(D, H, F, 0.0, batch_first=True, norm_first=norm_first)
    dec_layer = nn.TransformerDecoderLayer(D, H, F, 0.0, batch_first=True, norm_first=norm_first)
    final = (lambda: nn.LayerNorm(D)) if norm_first else (lambda: None)
    encoder = nn.TransformerEncoder(enc_layer, 2, norm=final(), enable_nested_tensor=False).eval()
    decoder = nn.TransformerDecoder(dec_layer, 3, norm=final()).eval()
    ours_enc, ours_dec = interop.encoder_from_torch(encoder), interop.decoder_from_torch(decoder)
    x, y = torch.randn(B, S, D), torch.randn(B, T, D)
    keep = padding_mask(torch.tensor([5, 3]), S)
    memory = ours_enc(x, keep[:, None, :])
    reference = encoder(x, src_key_padding_mask=interop.to_torch_key_padding_mask(keep))
    torch.testing.assert_close(memory[0], reference[0], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(memory[1, :3], reference[1, :3], atol=2e-6, rtol=1e-5)
    causal = causal_mask(T)
    out = ours_dec(y, memory, causal, keep[:, None, :])
    expected = decoder(y, memory, tgt_mask=~causal,
                       memory_key_padding_mask=interop.to_torch_key_padding_mask(keep))
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)


def test_multihead_round_trip_and_mask_conversion():
    torch.manual_seed(1)
    B, T, S, D, H = 2, 3, 5, 8, 2
    mha = nn.MultiheadAttention(D, H, batch_first=True).eval()
    ours = interop.multihead_from_torch(mha, fused=False)
    q, kv = torch.randn(B, T, D), torch.randn(B, S, D)
    mask = torch.rand(B, T, S) < 0.7
    mask[..., 0] = True
    out, _ = ours(q, kv, kv, mask=mask)
    attn_mask = interop.to_torch_attn_mask(mask, B, H, T, S)
    expected, _ = mha(q, kv, kv, attn_mask=attn_mask)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_core_round_trip(norm_first):
    torch.manual_seed(2)
    config = TransformerConfig(src_vocab_size=11, tgt_vocab_size=13, d_model=16, n_heads=2, d_ff=20,
                               n_encoder_layers=2, n_decoder_layers=3, norm_first=norm_first)
    model = Transformer(config).eval()
    reference = interop.transformer_core_to_torch(model)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in [*other.encoder.parameters(), *other.decoder.parameters()]:
            p.normal_()                                   # forget the core's weights
    assert not torch.allclose(other(torch.ones(1, 2).long(), torch.ones(1, 2).long()),
                              model(torch.ones(1, 2).long(), torch.ones(1, 2).long()))
    interop.load_transformer_core_from_torch(other, reference)
    src, tgt = torch.randint(1, 11, (2, 6)), torch.randint(1, 13, (2, 4))
    torch.testing.assert_close(other(src, tgt), model(src, tgt))


def test_wrong_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="expected an nn.MultiheadAttention"):
        interop.multihead_from_torch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="key-padding mask has shape"):
        interop.to_torch_key_padding_mask(torch.ones(2, 3, 4, dtype=torch.bool))
    post_ln = Transformer(TransformerConfig(src_vocab_size=5, tgt_vocab_size=5, d_model=8, n_heads=2,
                                            d_ff=8, n_encoder_layers=1, n_decoder_layers=1))
    reference = nn.Transformer(8, 2, 1, 1, 8, batch_first=True)
    with pytest.raises(ValueError, match="Remove them first"):
        interop.load_transformer_core_from_torch(post_ln, reference)
