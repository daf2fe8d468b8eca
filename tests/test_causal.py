"""Chapter 07 (scratchformer.causal): the causal mask against PyTorch's causal biases, masks
combined with padding, the decoder-only block against nn.TransformerEncoderLayer, causality as a
property (changing token j never changes outputs before j), no NaN with padding, clear errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

from scratchformer import interop
from scratchformer.causal import (
    DecoderOnlyBlock,
    TinyLM,
    causal_mask,
    causal_padding_mask,
    generate,
)
from scratchformer.multihead import MultiHeadAttention

SETTINGS = settings(max_examples=25, deadline=None)


# ---- causal_mask ---------------------------------------------------------------------------------

@pytest.mark.parametrize("T", range(1, 17))
def test_square_mask_is_the_lower_triangle_with_its_diagonal(T):
    mask = causal_mask(T)
    assert mask.dtype == torch.bool and mask.shape == (T, T)
    assert torch.equal(mask, torch.ones(T, T).tril().bool())
    assert torch.equal(causal_mask(T, T), mask)
    i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    assert torch.equal(mask, j <= i)


def test_mask_for_four_tokens_printed_in_the_chapter():
    assert causal_mask(4).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]


@SETTINGS
@given(T=st.integers(1, 24), extra=st.integers(0, 24))
def test_rectangular_mask_is_lower_right_aligned_like_torch(T, extra):
    S = T + extra
    mask = causal_mask(T, S)
    assert mask.shape == (T, S) and mask.dtype == torch.bool
    assert torch.equal(mask, causal_lower_right(T, S)._materialize())
    i = torch.arange(T)[:, None]
    j = torch.arange(S)[None, :]
    assert torch.equal(mask, j <= i + (S - T))
    assert mask[-1].all()                               # the last query sees every key
    # is_causal=True (top-left) agrees only for square masks
    assert torch.equal(mask, causal_upper_left(T, S)._materialize()) == (extra == 0)


def test_lower_right_mask_reproduces_the_full_pass_for_cached_queries():
    """The last T queries against all S keys (a KV cache) give the rows of the full causal pass."""
    torch.manual_seed(0)
    S, T, D = 9, 3, 16
    mha = MultiHeadAttention(D, 4).eval()
    x = torch.randn(2, S, D)
    with torch.no_grad():
        full, _ = mha(x, x, x, mask=causal_mask(S))
        cached, _ = mha(x[:, -T:], x, x, mask=causal_mask(T, S))
        top_left, _ = mha(x[:, -T:], x, x, mask=causal_upper_left(T, S)._materialize())   # is_causal=True
    torch.testing.assert_close(cached, full[:, -T:])
    assert (top_left - full[:, -T:]).abs().max() > 1e-2


def test_device_argument_is_used():
    assert causal_mask(3, 5, device="meta").device.type == "meta"
    assert causal_mask(3, device=torch.device("cpu")).device.type == "cpu"


@pytest.mark.parametrize("args, text", [
    ((0,), "T=0"), ((-2,), "T=-2"), ((3, 0), "S=0"), ((2.0,), "T=2.0"), ((True,), "T=True"),
    ((5, 3), "T=5 queries but only S=3 keys"),
])
def test_causal_mask_errors_name_the_values(args, text):
    with pytest.raises(ValueError, match=text):
        causal_mask(*args)


# ---- causal_padding_mask --------------------------------------------------------------------------

@SETTINGS
@given(S=st.integers(1, 12), B=st.integers(1, 4), data=st.data())
def test_causal_padding_mask_is_causal_and_keep_on_the_keys(S, B, data):
    keep = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=S, max_size=S), min_size=B, max_size=B)))
    T = data.draw(st.integers(1, S))
    mask = causal_padding_mask(keep, T)
    assert mask.shape == (B, T, S) and mask.dtype == torch.bool
    expected = causal_lower_right(T, S)._materialize()[None] & keep[:, None, :]
    assert torch.equal(mask, expected)
    assert torch.equal(causal_padding_mask(keep[:, None, :], T), mask)      # (B, 1, S) accepted
    if T == S:
        assert torch.equal(causal_padding_mask(keep), mask)


def test_left_padding_leaves_rows_with_nothing_to_attend_to():
    keep = torch.tensor([[0, 0, 1, 1, 1]]).bool()
    mask = causal_padding_mask(keep)
    assert not mask[0, :2].any() and mask[0, 2:].any(-1).all()


@pytest.mark.parametrize("keep, text", [
    (torch.zeros(2, 5), "boolean"),
    (torch.zeros(2, 5).masked_fill(torch.rand(2, 5) > 0.5, float("-inf")), "Additive float masks"),
    (torch.ones(5, dtype=torch.bool), r"\(5,\)"),
    (torch.ones(2, 3, 5, dtype=torch.bool), r"\(2, 3, 5\)"),
    ([[True, False]], "boolean"),
])
def test_causal_padding_mask_errors(keep, text):
    with pytest.raises(ValueError, match=text):
        causal_padding_mask(keep)


def test_causal_padding_mask_more_queries_than_keys_is_an_error():
    with pytest.raises(ValueError, match="T=6 queries but only S=5 keys"):
        causal_padding_mask(torch.ones(1, 5, dtype=torch.bool), 6)


# ---- DecoderOnlyBlock ------------------------------------------------------------------------------

def _reference_pair(norm_first, D=16, H=4, D_ff=32, dropout=0.0):
    reference = nn.TransformerEncoderLayer(D, H, D_ff, dropout=dropout, batch_first=True, norm_first=norm_first)
    block = DecoderOnlyBlock(D, H, D_ff, dropout=dropout, norm_first=norm_first)
    block.load_state_dict(interop.encoder_layer_from_torch(reference).state_dict())
    return reference.eval(), block.eval()


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_matches_torch_encoder_layer_with_a_causal_mask(norm_first):
    torch.manual_seed(0)
    reference, block = _reference_pair(norm_first, dropout=0.1)
    B, T = 3, 9
    x = torch.randn(B, T, 16)
    keep = torch.arange(T)[None, :] < torch.tensor([9, 6, 1])[:, None]        # right padding
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference(x, src_mask=~causal_mask(T)))
        torch.testing.assert_close(block(x, keep), reference(x, src_mask=~causal_mask(T), src_key_padding_mask=~keep))
        torch.testing.assert_close(block(x, keep[:, None, :]), block(x, keep))


def test_block_default_is_pre_ln_and_the_layout_is_torch_s():
    block = DecoderOnlyBlock(8, 2, 16)
    assert block.norm_first is True
    names = set(dict(block.named_parameters()))
    assert {"self_attn.in_proj.weight", "feed_forward.linear1.weight", "norm1.weight", "norm2.bias"} <= names


def _change_at(model_fn, x, j, new_value):
    """Max |change| of each output position when position j of the input is replaced."""
    with torch.no_grad():
        before = model_fn(x)
        changed = x.clone()
        changed[:, j] = new_value
        after = model_fn(changed)
    return (after - before).abs().flatten(2).amax(-1).amax(0)                  # (T,)


@SETTINGS
@given(T=st.integers(2, 10), seed=st.integers(0, 2**16), norm_first=st.booleans(), data=st.data())
def test_block_changing_token_j_never_changes_outputs_before_j(T, seed, norm_first, data):
    torch.manual_seed(seed)
    j = data.draw(st.integers(1, T - 1))
    block = DecoderOnlyBlock(16, 4, 32, norm_first=norm_first).eval()
    x = torch.randn(2, T, 16)
    change = _change_at(block, x, j, torch.randn(16))
    assert (change[:j] == 0).all(), change
    assert change[j] > 0


@SETTINGS
@given(T=st.integers(2, 10), seed=st.integers(0, 2**16), data=st.data())
def test_stack_changing_token_j_never_changes_outputs_before_j(T, seed, data):
    torch.manual_seed(seed)
    j = data.draw(st.integers(1, T - 1))
    blocks = [DecoderOnlyBlock(16, 2, 32).eval() for _ in range(3)]
    keep = torch.ones(2, T, dtype=torch.bool)
    keep[1, 0] = False                                                          # one padded key too

    def stack(x):
        for block in blocks:
            x = block(x, keep)
        return x

    change = _change_at(stack, torch.randn(2, T, 16), j, torch.randn(16))
    assert (change[:j] == 0).all(), change
    assert change[j:].min() > 0


@SETTINGS
@given(T=st.integers(2, 12), seed=st.integers(0, 2**16), positions=st.sampled_from(["learned", "sinusoidal"]),
       data=st.data())
def test_tinylm_changing_token_j_never_changes_logits_before_j(T, seed, positions, data):
    torch.manual_seed(seed)
    j = data.draw(st.integers(1, T - 1))
    lm = TinyLM(13, 16, 2, 32, n_layers=2, max_len=12, positions=positions).eval()
    tokens = torch.randint(0, 13, (2, T))
    change = _change_at(lm, tokens, j, (tokens[:, j] + 1) % 13)
    assert (change[:j] == 0).all(), change
    assert change[j] > 0


def test_leaky_block_fails_the_causality_property():
    """The property test bites: a block whose mask allows the future changes earlier outputs."""
    class Leaky(DecoderOnlyBlock):
        def attention_mask(self, x, pad_mask=None):
            return torch.ones(x.size(1), x.size(1), dtype=torch.bool).tril(1)      # one step of future

    torch.manual_seed(0)
    change = _change_at(Leaky(16, 4, 32).eval(), torch.randn(2, 6, 16), 3, torch.randn(16))
    assert change[2] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm_first", [True, False])
def test_padding_and_causal_give_no_nan_even_with_nothing_to_attend_to(dtype, norm_first):
    torch.manual_seed(0)
    block = DecoderOnlyBlock(16, 4, 32, norm_first=norm_first).to(dtype)
    keep = torch.tensor([[0, 0, 1, 1, 1],            # left padding: queries 0 and 1 see only padding
                         [1, 1, 1, 0, 0],            # right padding
                         [0, 0, 0, 0, 0]]).bool()    # an empty sequence
    x = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    out = block(x, keep)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)


def test_fused_and_explicit_attention_paths_agree_in_the_block():
    """The two attention paths of chapter 03 give the same block output, empty rows included."""
    torch.manual_seed(0)
    block = DecoderOnlyBlock(16, 4, 32).eval()
    x = torch.randn(2, 6, 16)
    keep = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]).bool()
    with torch.no_grad():
        block.self_attn.fused = True
        fused = block(x, keep)
        block.self_attn.fused = False
        explicit = block(x, keep)
    torch.testing.assert_close(fused, explicit)


def test_padding_is_invisible_to_the_real_tokens():
    """Right or left padding leaves the real tokens' outputs as they are without padding."""
    torch.manual_seed(0)
    block = DecoderOnlyBlock(16, 4, 32).eval()
    real = torch.randn(1, 4, 16)
    junk = torch.randn(1, 3, 16)
    with torch.no_grad():
        alone = block(real)
        right = block(torch.cat([real, junk], 1), torch.tensor([[1] * 4 + [0] * 3]).bool())
        left = block(torch.cat([junk, real], 1), torch.tensor([[0] * 3 + [1] * 4]).bool())
    torch.testing.assert_close(right[:, :4], alone)
    torch.testing.assert_close(left[:, 3:], alone)


@pytest.mark.parametrize("make, text", [
    (lambda: DecoderOnlyBlock(10, 3, 16), "not divisible by n_heads=3"),
    (lambda: DecoderOnlyBlock(0, 1, 16), "d_model=0"),
    (lambda: DecoderOnlyBlock(8, 2, 16, dropout=1.0), "dropout"),
    (lambda: DecoderOnlyBlock(8, 2, 16)(torch.randn(2, 5, 6)), r"\(2, 5, 6\).*\(B, T, 8\)"),
    (lambda: DecoderOnlyBlock(8, 2, 16)(torch.randn(5, 8)), r"\(5, 8\)"),
    (lambda: DecoderOnlyBlock(8, 2, 16)(torch.randn(2, 5, 8), torch.ones(2, 5)), "boolean"),
    (lambda: DecoderOnlyBlock(8, 2, 16)(torch.randn(2, 5, 8), torch.ones(2, 4, dtype=torch.bool)),
     r"pad_mask has shape \(2, 4\)"),
])
def test_block_errors(make, text):
    with pytest.raises(ValueError, match=text):
        make()


# ---- TinyLM ---------------------------------------------------------------------------------------

def test_tinylm_shapes_prefix_consistency_and_final_norm():
    torch.manual_seed(0)
    lm = TinyLM(11, 16, 2, 32, n_layers=2, max_len=10).eval()
    tokens = torch.randint(0, 11, (3, 10))
    with torch.no_grad():
        logits = lm(tokens)
        assert logits.shape == (3, 10, 11)
        for t in range(1, 11):
            torch.testing.assert_close(lm(tokens[:, :t]), logits[:, :t])
    assert lm.norm is not None and TinyLM(11, 16, 2, 32, 1, 10, norm_first=False).norm is None
    assert len(lm.blocks) == 2 and all(type(b) is DecoderOnlyBlock for b in lm.blocks)


def test_tinylm_right_padding_leaves_real_logits_unchanged():
    torch.manual_seed(0)
    lm = TinyLM(11, 16, 2, 32, n_layers=2, max_len=10).eval()
    tokens = torch.randint(0, 11, (2, 10))
    keep = torch.arange(10)[None, :] < torch.tensor([10, 6])[:, None]
    with torch.no_grad():
        torch.testing.assert_close(lm(tokens, keep)[1, :6], lm(tokens[1:, :6])[0])


def test_generate_greedy_is_the_argmax_loop_and_sampling_is_reproducible():
    torch.manual_seed(0)
    lm = TinyLM(7, 16, 2, 32, n_layers=1, max_len=6).train()
    prompt = torch.randint(0, 7, (2, 3))
    out = lm.generate(prompt, 8)                                   # longer than max_len: crops the context
    assert out.shape == (2, 11) and torch.equal(out[:, :3], prompt)
    assert lm.training                                             # mode restored
    tokens = prompt
    with torch.no_grad():
        lm.eval()
        for _ in range(8):
            tokens = torch.cat([tokens, lm(tokens[:, -6:])[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, tokens)
    a = lm.generate(prompt, 5, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = lm.generate(prompt, 5, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("make, text", [
    (lambda lm: lm(torch.rand(2, 4)), "torch.long"),
    (lambda lm: lm(torch.zeros(4, dtype=torch.long)), r"\(4,\)"),
    (lambda lm: lm(torch.zeros(1, 9, dtype=torch.long)), r"max_len=8.*\(1, 9\)"),
    (lambda lm: lm(torch.full((1, 3), 11)), r"\[0, vocab_size=11\)"),
    (lambda lm: lm.generate(torch.zeros(1, 2, dtype=torch.long), -1), "n_new"),
    (lambda lm: lm.generate(torch.zeros(1, 2, dtype=torch.long), 2, temperature=-1.0), "temperature"),
    (lambda lm: TinyLM(11, 16, 2, 32, 1, 8, positions="rope"), "positions"),
    (lambda lm: TinyLM(11, 16, 2, 32, 0, 8), "n_layers=0"),
])
def test_tinylm_errors(make, text):
    lm = TinyLM(11, 16, 2, 32, n_layers=1, max_len=8)
    with pytest.raises(ValueError, match=text):
        make(lm)


def test_generate_function_is_the_method_and_works_for_any_model_with_a_context_window():
    torch.manual_seed(0)
    lm = TinyLM(7, 16, 2, 32, n_layers=1, max_len=6).eval()
    prompt = torch.randint(0, 7, (2, 3))
    assert torch.equal(generate(lm, prompt, 4), lm.generate(prompt, 4))

    class Counter(nn.Module):
        """Predicts the last token + 1 (mod 5); it sees at most max_len tokens."""
        max_len = 2

        def forward(self, tokens):
            assert tokens.size(1) <= self.max_len
            return nn.functional.one_hot((tokens + 1) % 5, 5).float()

    assert generate(Counter(), torch.tensor([[0]]), 6).tolist() == [[0, 1, 2, 3, 4, 0, 1]]
