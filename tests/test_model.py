"""Chapter 09: the full Transformer. Scaled embeddings and their initialisation, weight tying,
exact parity of the core with nn.Transformer (post-LN and pre-LN, weights copied both ways),
padding invariance, causality, no NaN for fully padded rows, rotary positions, clear errors,
parameter counts."""

import dataclasses
import io
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from scratchformer import interop
from scratchformer.causal import causal_mask, causal_padding_mask
from scratchformer.model import (
    ScaledEmbedding,
    Transformer,
    TransformerConfig,
    transformer_parameter_count,
)
from scratchformer.positional import RotaryEmbedding, sinusoidal_table

PAD = 0


def small_config(**overrides) -> TransformerConfig:
    fields = dict(src_vocab_size=17, tgt_vocab_size=13, d_model=16, n_heads=4, n_encoder_layers=2,
                  n_decoder_layers=3, d_ff=24, dropout=0.1, max_len=12, pad_id=PAD)
    fields.update(overrides)
    return TransformerConfig(**fields)


def model_for(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(small_config(**overrides)).eval()


def padded(g, B, L, vocab, min_len=1):
    """Random ids (no pad) padded at the end to length L; lengths in [min_len, L], sequence 0 full."""
    tokens = torch.randint(1, vocab, (B, L), generator=g)
    lengths = torch.randint(min_len, L + 1, (B,), generator=g)
    lengths[0] = L
    tokens[torch.arange(L)[None, :] >= lengths[:, None]] = PAD
    return tokens


def default_masks(src, tgt_in, pad_id=PAD):
    """The masks the model builds when none are given: (B, 1, S) and (B, T, T)."""
    return (src != pad_id)[:, None, :], causal_padding_mask(tgt_in != pad_id)


def torch_transformer(cfg: TransformerConfig) -> nn.Transformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nn.Transformer(cfg.d_model, cfg.n_heads, cfg.n_encoder_layers, cfg.n_decoder_layers, cfg.d_ff,
                              cfg.dropout, batch_first=True, norm_first=cfg.norm_first)


VARIANTS = [dict(norm_first=False), dict(norm_first=True), dict(positional="learned"),
            dict(norm_first=True, positional="learned", tie_embeddings=False),
            dict(positional="rotary"), dict(norm_first=True, positional="rotary")]
VARIANT_IDS = ["post-LN", "pre-LN", "learned", "pre-LN-learned-untied", "rotary", "pre-LN-rotary"]


# ---- embeddings ------------------------------------------------------------------------------

def test_scaled_embedding_equals_nn_embedding_times_sqrt_d():
    embed = ScaledEmbedding(11, 9)
    tokens = torch.randint(0, 11, (3, 4))
    reference = nn.Embedding.from_pretrained(embed.weight.detach())
    torch.testing.assert_close(embed(tokens), reference(tokens) * 3.0)


@pytest.mark.parametrize("d_model", [64, 256, 512])
def test_embedding_to_positions_norm_ratio_is_order_one(d_model):
    """Vaswani et al. (2017) §3.4 multiply the embeddings by sqrt(d_model). With E ~ N(0, 1/d), at
    init ‖E[i]·√d‖ / ‖PE‖ is about √2; with nn.Embedding's default N(0, 1) it is about √(2d)."""
    torch.manual_seed(0)
    model = Transformer(small_config(src_vocab_size=500, tgt_vocab_size=500, d_model=d_model, n_heads=4))
    pe_norm = sinusoidal_table(50, d_model).norm(dim=-1).mean()
    for embed in (model.src_embed, model.tgt_embed):
        token_norm = (embed.weight.detach() * math.sqrt(d_model)).norm(dim=-1).mean()
        assert 1.2 < token_norm / pe_norm < 1.6
    default = nn.Embedding(500, d_model).weight.detach()            # PyTorch's default N(0, 1)
    default_ratio = (default * math.sqrt(d_model)).norm(dim=-1).mean() / pe_norm
    assert default_ratio > 0.8 * math.sqrt(2 * d_model)


def test_learned_positions_start_at_the_same_ratio():
    torch.manual_seed(0)
    model = Transformer(small_config(src_vocab_size=500, tgt_vocab_size=500, d_model=256, positional="learned",
                                     max_len=200))
    token_norm = (model.tgt_embed.weight.detach() * 16).norm(dim=-1).mean()
    for positions in (model.src_pos, model.tgt_pos):
        ratio = token_norm / positions.embedding.weight.detach().norm(dim=-1).mean()
        assert 1.2 < ratio < 1.6


# ---- weight tying -------------------------------------------------------------------------------

def test_tied_generator_shares_storage_and_untied_does_not():
    tied, untied = model_for(), model_for(tie_embeddings=False)
    assert tied.generator.weight is tied.tgt_embed.weight
    assert tied.generator.weight.data_ptr() == tied.tgt_embed.weight.data_ptr()
    assert untied.generator.weight.data_ptr() != untied.tgt_embed.weight.data_ptr()


def test_tying_survives_to():
    model = model_for().to(torch.float64)
    assert model.generator.weight.dtype == torch.float64
    assert model.generator.weight.data_ptr() == model.tgt_embed.weight.data_ptr()
    model = model.to(torch.float32)
    assert model.generator.weight.data_ptr() == model.tgt_embed.weight.data_ptr()
    if torch.cuda.is_available():
        model = model.to("cuda")
        assert model.generator.weight.data_ptr() == model.tgt_embed.weight.data_ptr()


def test_tying_survives_a_state_dict_round_trip():
    source, fresh = model_for(seed=1), model_for(seed=2)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.generator.weight.data_ptr() == fresh.tgt_embed.weight.data_ptr()
    torch.testing.assert_close(fresh.tgt_embed.weight, source.tgt_embed.weight)
    src, tgt = torch.randint(1, 17, (2, 5)), torch.randint(1, 13, (2, 4))
    torch.testing.assert_close(fresh(src, tgt), source(src, tgt))
    with torch.no_grad():                                   # still one tensor after loading
        fresh.tgt_embed.weight[3, 0] = 7.0
    assert fresh.generator.weight[3, 0] == 7.0


def test_tied_gradient_flows_into_one_tensor():
    model = model_for()
    model.train()
    model(torch.randint(1, 17, (2, 5)), torch.randint(1, 13, (2, 4))).sum().backward()
    assert model.generator.weight.grad is model.tgt_embed.weight.grad


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_tying_removes_exactly_v_times_d(variant):
    variant = {k: v for k, v in variant.items() if k != "tie_embeddings"}
    tied, untied = model_for(**variant, tie_embeddings=True), model_for(**variant, tie_embeddings=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == 13 * 16


# ---- parity with nn.Transformer (through scratchformer.interop) -----------------------------------

def run_core(ours: Transformer, reference: nn.Transformer, g, B=3, S=7, T=5):
    D = ours.config.d_model
    x, y = torch.randn(B, S, D, generator=g), torch.randn(B, T, D, generator=g)
    src_keep = torch.arange(S)[None, :] < torch.randint(1, S + 1, (B,), generator=g)[:, None]
    tgt_keep = torch.arange(T)[None, :] < torch.randint(1, T + 1, (B,), generator=g)[:, None]
    memory = ours.encoder(x, src_keep[:, None, :])
    out = ours.decoder(y, memory, causal_mask(T) & tgt_keep[:, None, :], src_keep[:, None, :])
    pad = interop.to_torch_key_padding_mask                                        # inverted exactly once
    ref_memory = reference.encoder(x, src_key_padding_mask=pad(src_keep))
    ref_out = reference.decoder(y, ref_memory, tgt_mask=~causal_mask(T), tgt_key_padding_mask=pad(tgt_keep),
                                memory_key_padding_mask=pad(src_keep))
    return memory[src_keep], ref_memory[src_keep], out, ref_out


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("seed", range(3))
def test_core_to_torch_parity(norm_first, seed):
    g = torch.Generator().manual_seed(seed)
    ours = model_for(seed, norm_first=norm_first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference = interop.transformer_core_to_torch(ours).eval()
    assert (reference.encoder.norm is None) == (not norm_first)
    assert len(reference.decoder.layers) == 3 and len(reference.encoder.layers) == 2
    memory, ref_memory, out, ref_out = run_core(ours, reference, g)
    torch.testing.assert_close(memory, ref_memory, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("seed", range(3))
def test_load_core_from_torch_parity(norm_first, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = small_config(norm_first=norm_first)
    reference = torch_transformer(cfg)
    with torch.no_grad():
        for p in reference.parameters():                    # move LayerNorms away from (1, 0) as well
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    if not norm_first:
        reference.encoder.norm = reference.decoder.norm = None
    ours = interop.load_transformer_core_from_torch(Transformer(cfg), reference).eval()
    reference.eval()
    memory, ref_memory, out, ref_out = run_core(ours, reference, g)
    torch.testing.assert_close(memory, ref_memory, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


def test_load_core_from_torch_refuses_post_ln_with_final_norms():
    cfg = small_config(norm_first=False)
    with pytest.raises(ValueError, match=r"encoder.norm = reference.decoder.norm = None"):
        interop.load_transformer_core_from_torch(Transformer(cfg), torch_transformer(cfg))


def test_load_core_from_torch_refuses_other_sizes():
    with pytest.raises(ValueError, match="d_ff"):
        interop.load_transformer_core_from_torch(Transformer(small_config()),
                                                 torch_transformer(small_config(d_ff=32)))


def test_round_trip_ours_torch_ours_is_identity():
    ours = model_for(3, norm_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        back = interop.load_transformer_core_from_torch(Transformer(ours.config),
                                                        interop.transformer_core_to_torch(ours))
    for (name, a), b in zip(ours.encoder.state_dict().items(), back.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(ours.decoder.state_dict().items(), back.decoder.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_rotary_model_is_not_converted_to_nn_transformer():
    with pytest.raises(ValueError, match="rotary"):
        interop.transformer_core_to_torch(model_for(positional="rotary"))


def test_the_model_module_keeps_no_conversion_code():
    """Conversions live in scratchformer.interop; the chapter's module teaches the model only."""
    import scratchformer.model as model
    for name in ("core_to_torch", "load_core_from_torch", "_core_state", "_to_torch_key",
                 "make_masks", "check_token_ids"):
        assert not hasattr(model, name) and not hasattr(Transformer, name), name


# ---- the full model: masks, padding, causality, NaN ---------------------------------------------

def test_forward_is_decode_of_encode_with_default_masks():
    model = model_for()
    g = torch.Generator().manual_seed(0)
    src, tgt = padded(g, 3, 6, 17), padded(g, 3, 5, 13)
    src_mask, tgt_mask = default_masks(src, tgt)
    logits = model(src, tgt)
    assert logits.shape == (3, 5, 13)
    torch.testing.assert_close(logits, model(src, tgt, src_mask, tgt_mask))
    torch.testing.assert_close(logits, model.decode(tgt, model.encode(src), src_mask))
    torch.testing.assert_close(logits, model(src, tgt, src_mask[:, None]))       # (B, 1, 1, S) too


def test_given_masks_are_used_as_given():
    model = model_for()
    g = torch.Generator().manual_seed(1)
    src, tgt = padded(g, 3, 6, 17), padded(g, 3, 5, 13, min_len=2)
    src_mask, _ = default_masks(src, tgt)
    fewer = src_mask.clone()
    fewer[0, 0, 0] = False
    assert not torch.allclose(model(src, tgt, fewer), model(src, tgt))
    assert not torch.allclose(model(src, tgt, tgt_mask=causal_mask(5)), model(src, tgt))
    torch.testing.assert_close(model.encode(src, fewer), model.encoder(
        model.src_pos(model.src_embed(src)), fewer))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), extra_src=st.integers(0, 4), extra_tgt=st.integers(0, 4),
       variant=st.sampled_from(VARIANTS))
def test_padding_never_changes_logits_at_real_positions(seed, extra_src, extra_tgt, variant):
    model = model_for(seed % 7, **variant)
    g = torch.Generator().manual_seed(seed)
    B, S, T = 3, 5, 4
    src, tgt = padded(g, B, S, 17), padded(g, B, T, 13)
    logits = model(src, tgt)
    more = model(nn.functional.pad(src, (0, extra_src), value=PAD), nn.functional.pad(tgt, (0, extra_tgt), value=PAD))
    real = tgt != PAD
    torch.testing.assert_close(more[:, :T][real], logits[real], atol=1e-5, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), j=st.integers(0, 5), variant=st.sampled_from(VARIANTS))
def test_changing_target_token_j_never_changes_logits_before_j(seed, j, variant):
    model = model_for(seed % 5, **variant)
    g = torch.Generator().manual_seed(seed)
    src, tgt = padded(g, 2, 6, 17), torch.randint(1, 13, (2, 6), generator=g)
    changed = tgt.clone()
    changed[:, j] = tgt[:, j] % 12 + 1                       # another non-pad id
    before, after = model(src, tgt), model(src, changed)
    torch.testing.assert_close(after[:, :j], before[:, :j], atol=0, rtol=0)
    assert not torch.allclose(after[:, j:], before[:, j:])   # and it does change the rest


def test_source_changes_reach_every_target_position():
    model = model_for()
    src, tgt = torch.randint(1, 17, (1, 6)), torch.randint(1, 13, (1, 4))
    changed = src.clone()
    changed[0, 3] = src[0, 3] % 16 + 1
    diff = (model(changed, tgt) - model(src, tgt)).abs().amax(-1)
    assert (diff > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_no_nan_with_fully_padded_rows(dtype, variant):
    model = model_for(**variant).to(dtype)
    src = torch.tensor([[3, 4, 5, 6], [PAD, PAD, PAD, PAD], [7, PAD, PAD, PAD]])   # an all-padding source
    tgt = torch.tensor([[1, 2, 3], [1, 4, PAD], [PAD, PAD, PAD]])                  # an all-padding target row
    logits = model(src, tgt)
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    model.train()
    loss = model(src, tgt).float().sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_eval_is_deterministic_and_train_uses_dropout():
    model = model_for()
    src, tgt = torch.randint(1, 17, (2, 5)), torch.randint(1, 13, (2, 4))
    assert torch.equal(model(src, tgt), model(src, tgt))
    model.train()
    assert not torch.equal(model(src, tgt), model(src, tgt))


# ---- rotary positions -------------------------------------------------------------------------------

def test_rotary_sits_in_every_self_attention_and_nowhere_else():
    model = model_for(positional="rotary")
    head_dim = 16 // 4
    for layer in [*model.encoder.layers, *model.decoder.layers]:
        assert isinstance(layer.self_attn.rotary, RotaryEmbedding)
        assert layer.self_attn.rotary.head_dim == head_dim
    assert all(layer.cross_attn.rotary is None for layer in model.decoder.layers)
    assert isinstance(model.src_pos, nn.Dropout) and isinstance(model.tgt_pos, nn.Dropout)
    sinusoidal = model_for()
    assert all(layer.self_attn.rotary is None for layer in sinusoidal.encoder.layers)


def test_rotary_adds_no_parameters_and_changes_the_outputs():
    rotary, sinusoidal = model_for(positional="rotary"), model_for()
    assert [n for n, _ in rotary.named_parameters()] == [n for n, _ in sinusoidal.named_parameters()]
    rotary.load_state_dict(sinusoidal.state_dict())          # the same weights
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(rotary) == count(sinusoidal) == transformer_parameter_count(rotary.config)
    src, tgt = torch.randint(1, 17, (2, 5)), torch.randint(1, 13, (2, 4))
    out = rotary(src, tgt)
    assert torch.isfinite(out).all() and not torch.allclose(out, sinusoidal(src, tgt))


class Shifted(RotaryEmbedding):
    """RoPE with every position moved by ``offset``."""

    def __init__(self, head_dim, offset):
        super().__init__(head_dim)
        self.offset = offset

    def forward(self, q, k, positions=None):
        return super().forward(q, k, positions=self.offset)


@pytest.mark.parametrize("side", ["encoder", "decoder"])
@pytest.mark.parametrize("offset", [1, 7, 100])
def test_rotary_self_attention_depends_only_on_relative_positions(side, offset):
    """Shifting all positions of a sequence (no padding) leaves the self-attention weights of a
    rotary model unchanged: its scores depend on j - i only."""
    model = model_for(4, positional="rotary")
    layer = getattr(model, side).layers[0]
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(offset))
    mask = causal_mask(6) if side == "decoder" else None
    with torch.no_grad():
        _, at_zero = layer.self_attn(x, x, x, mask=mask, need_weights=True)
        layer.self_attn.rotary = Shifted(4, offset)
        _, shifted = layer.self_attn(x, x, x, mask=mask, need_weights=True)
        layer.self_attn.rotary = None
        _, no_positions = layer.self_attn(x, x, x, mask=mask, need_weights=True)
    torch.testing.assert_close(shifted, at_zero, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(at_zero, no_positions, atol=1e-3)      # the rotation does something


def test_rotary_scores_of_a_repeated_token_are_toeplitz():
    """One token repeated: the log-weight of key j relative to key i depends on j - i only."""
    model = model_for(positional="rotary")
    attention = model.encoder.layers[0].self_attn
    with torch.no_grad():
        x = model.src_embed(torch.full((1, 7), 5))
        _, weights = attention(x, x, x, need_weights=True)
    for head in range(4):
        log_w = weights[0, head].log()
        relative = log_w - log_w.diagonal()[:, None]
        torch.testing.assert_close(relative[1:, 1:], relative[:-1, :-1])
        assert relative.abs().max() > 1e-3


def test_rotary_needs_an_even_head_size():
    with pytest.raises(ValueError, match="head size d_model / n_heads must be even"):
        small_config(d_model=12, n_heads=4, positional="rotary")


# ---- errors -------------------------------------------------------------------------------------

def test_token_id_at_or_above_vocab_size_raises_before_the_lookup():
    model = model_for()
    with pytest.raises(ValueError, match=r"src .*token id 17.*vocabulary size is 17"):
        model(torch.tensor([[1, 17]]), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"tgt_in .*token id 20.*vocabulary size is 13"):
        model(torch.tensor([[1, 2]]), torch.tensor([[1, 20]]))


def test_negative_token_id_raises():
    with pytest.raises(ValueError, match=r"negative token id -3.*\[0, 17\)"):
        model_for()(torch.tensor([[1, -3]]), torch.tensor([[1, 2]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.float16])
def test_non_integer_tokens_raise(dtype):
    with pytest.raises(ValueError, match=r"integer token ids .*" + str(dtype).split(".")[-1]):
        model_for()(torch.ones(2, 3, dtype=dtype), torch.tensor([[1, 2], [1, 2]]))


def test_int32_tokens_are_accepted():
    model = model_for()
    src, tgt = torch.randint(1, 17, (2, 5)), torch.randint(1, 13, (2, 4))
    torch.testing.assert_close(model(src.int(), tgt.int()), model(src, tgt))


def test_sequence_longer_than_max_len_with_learned_positions():
    model = model_for(positional="learned")                  # max_len = 12
    with pytest.raises(ValueError, match=r"src has shape \(1, 13\).*max_len=12"):
        model(torch.ones(1, 13, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tgt_in has shape \(1, 14\).*max_len=12"):
        model(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 14, dtype=torch.long))
    model_for()(torch.ones(1, 20, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))   # sinusoidal: any T
    model_for(positional="rotary")(torch.ones(1, 20, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


def test_mismatched_batch_sizes_raise():
    with pytest.raises(ValueError, match=r"batch sizes 2 and 3"):
        model_for()(torch.ones(2, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long))


def test_bad_shapes_and_masks_raise():
    model = model_for()
    src, tgt = torch.ones(2, 4, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"shape \(B, L\)"):
        model(torch.ones(4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"src_mask has shape \(2, 3, 4\)"):
        model(src, tgt, src_mask=torch.ones(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"src_mask has shape \(2, 4\).*src_mask\[:, None, :\]"):
        model(src, tgt, src_mask=torch.ones(2, 4, dtype=torch.bool))     # would be read as (T, S)
    with pytest.raises(ValueError, match="boolean"):
        model(src, tgt, src_mask=torch.ones(2, 1, 4))
    memory = model.encode(src)
    with pytest.raises(ValueError, match=r"memory must be the encoder's output \(B, S, 16\)"):
        model.decode(tgt, memory[..., :8])
    with pytest.raises(ValueError, match=r"src_mask has shape \(2, 1, 3\)"):
        model.decode(tgt, memory, torch.ones(2, 1, 3, dtype=torch.bool))


@pytest.mark.parametrize("overrides, message", [
    (dict(d_model=18, n_heads=4), "not divisible by n_heads=4"),
    (dict(d_model=0), "d_model must be a positive int"),
    (dict(n_decoder_layers=-1), "n_decoder_layers must be a positive int"),
    (dict(src_vocab_size=2.5), "src_vocab_size must be a positive int"),
    (dict(dropout=1.0), r"dropout must be a probability in \[0, 1\)"),
    (dict(pad_id=13), r"pad_id=13 .*tgt_vocab_size=13"),
    (dict(pad_id=-1), "pad_id must be an int >= 0"),
    (dict(positional="alibi"), "positional must be one of"),
    (dict(tie_embeddings="yes"), "tie_embeddings must be True or False"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def test_the_model_refuses_something_that_is_not_a_config():
    with pytest.raises(ValueError, match="expected a TransformerConfig, got dict"):
        Transformer(dataclasses.asdict(small_config()))


def test_tying_needs_nothing_of_the_source_vocabulary():
    model = Transformer(small_config(src_vocab_size=50, tgt_vocab_size=7, tie_embeddings=True))
    assert model.generator.weight is model.tgt_embed.weight


# ---- parameter count ----------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(norm_first=st.booleans(), tie=st.booleans(),
       positional=st.sampled_from(["sinusoidal", "learned", "rotary"]),
       heads=st.integers(1, 4), half_head_dim=st.integers(1, 3),
       layers=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       d_ff=st.integers(1, 40), vocab=st.tuples(st.integers(2, 50), st.integers(2, 50)), max_len=st.integers(1, 30))
def test_parameter_count_formula_matches_meta_model(norm_first, tie, positional, heads, half_head_dim, layers,
                                                    d_ff, vocab, max_len):
    cfg = TransformerConfig(vocab[0], vocab[1], d_model=heads * 2 * half_head_dim, n_heads=heads,
                            n_encoder_layers=layers[0], n_decoder_layers=layers[1], d_ff=d_ff, max_len=max_len,
                            norm_first=norm_first, tie_embeddings=tie, positional=positional)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert transformer_parameter_count(cfg) == sum(p.numel() for p in model.parameters())


def test_base_model_parameter_count():
    """The paper's base model: 82,026,496 with the generator tied and separate source embedding;
    63,082,496 with the source embedding shared too (Table 3 reports about 65 M)."""
    cfg = TransformerConfig(37000, 37000)
    with torch.device("meta"):
        tied = Transformer(cfg)
        untied = Transformer(TransformerConfig(37000, 37000, tie_embeddings=False))
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_tied == 82_026_496 == transformer_parameter_count(cfg)
    assert n_untied - n_tied == 37000 * 512
    assert sum(p.numel() for p in tied.encoder.parameters()) == 6 * 3_152_384
    assert sum(p.numel() for p in tied.decoder.parameters()) == 6 * 4_204_032
