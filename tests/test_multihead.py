"""Chapter 03: split/merge heads, the two attention paths, MultiHeadAttention and its parity with
nn.MultiheadAttention (through scratchformer.interop), the rotary hook, parameter count."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scratchformer import interop
from scratchformer.attention import padding_mask
from scratchformer.interop import to_torch_attn_mask
from scratchformer.multihead import (
    MultiHeadAttention,
    explicit_attention,
    fused_attention,
    merge_heads,
    mha_parameter_count,
    split_heads,
)
from scratchformer.positional import RotaryEmbedding

TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1.3e-6), torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
             torch.float16: dict(atol=2e-3, rtol=2e-3)}


def random_keep_mask(shape, generator, p=0.6):
    """Boolean mask (True = may attend) with at least one key allowed per query row."""
    mask = torch.rand(shape, generator=generator) < p
    first = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    mask.scatter_(-1, first.unsqueeze(-1), True)
    return mask


def with_random_biases(mha: nn.MultiheadAttention) -> nn.MultiheadAttention:
    """nn.MultiheadAttention initialises its biases to 0; random ones make a missing bias visible."""
    with torch.no_grad():
        if mha.in_proj_bias is not None:
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha


# ---- split / merge -----------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 6), H=st.integers(1, 5), Dh=st.integers(1, 5))
def test_split_heads_gives_each_head_its_slice_and_merge_inverts(B, T, H, Dh):
    x = torch.randn(B, T, H * Dh)
    heads = split_heads(x, H)
    assert heads.shape == (B, H, T, Dh)
    for h in range(H):
        assert torch.equal(heads[:, h], x[..., h * Dh:(h + 1) * Dh])
    assert torch.equal(merge_heads(heads), x)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_split_and_merge_keep_any_leading_axes(lead):
    x = torch.randn(*lead, 5, 12)
    heads = split_heads(x, 4)
    assert heads.shape == (*lead, 4, 5, 3)
    assert torch.equal(heads[..., 1, :, :], x[..., 3:6])
    assert torch.equal(merge_heads(heads), x)


def test_split_heads_layout_matches_nn_multihead_attention():
    """nn.MultiheadAttention gives head h the rows h*Dh ... (h+1)*Dh - 1 of each projection:
    a per-head mask applied through both modules only agrees if the layouts agree."""
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(8, 4, batch_first=True, bias=False).eval()
    ours = interop.multihead_from_torch(reference)
    x = torch.randn(1, 3, 8)
    keep = torch.ones(1, 4, 3, 3, dtype=torch.bool)
    keep[0, 2, :, 1:] = False                      # only head 2 is restricted, to key 0
    with torch.no_grad():
        _, ref_w = reference(x, x, x, attn_mask=to_torch_attn_mask(keep, 1, 4, 3, 3),
                             need_weights=True, average_attn_weights=False)
        _, w = ours(x, x, x, mask=keep, need_weights=True)
    torch.testing.assert_close(w, ref_w)
    assert torch.equal(w[0, 2, :, 0], torch.ones(3))


# ---- parity with nn.MultiheadAttention -----------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 6), S=st.integers(1, 7), H=st.sampled_from([1, 2, 4]),
       Dh=st.integers(1, 6), bias=st.booleans(), cross=st.booleans(),
       mask_kind=st.sampled_from(["none", "key_padding", "causal", "per_sequence", "per_head"]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**16))
def test_matches_nn_multihead_attention(B, T, S, H, Dh, bias, cross, mask_kind, dtype, seed):
    """Outputs (both paths) and per-head weights equal nn.MultiheadAttention's, weights copied in."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    D = H * Dh
    if not cross:
        S = T
    reference = with_random_biases(nn.MultiheadAttention(D, H, bias=bias, batch_first=True)).to(dtype).eval()
    ours = interop.multihead_from_torch(reference)
    query = torch.randn(B, T, D, generator=g).to(dtype)
    memory = torch.randn(B, S, D, generator=g).to(dtype) if cross else query
    if mask_kind == "causal" and T > S:
        mask_kind = "none"  # a (T, S) lower triangle would leave queries with nothing to attend to
    if mask_kind == "none":
        mask, torch_masks = None, {}
    elif mask_kind == "key_padding":      # (B, 1, S) for us, key_padding_mask (B, S) for torch
        mask = random_keep_mask((B, 1, S), g)
        torch_masks = {"key_padding_mask": ~mask[:, 0]}
    elif mask_kind == "causal":           # (T, S)
        mask = torch.ones(T, S, dtype=torch.bool).tril()
        torch_masks = {"attn_mask": to_torch_attn_mask(mask, B, H, T, S)}
    elif mask_kind == "per_sequence":     # (B, T, S)
        mask = random_keep_mask((B, T, S), g)
        torch_masks = {"attn_mask": to_torch_attn_mask(mask, B, H, T, S)}
    else:                                 # (B, H, T, S)
        mask = random_keep_mask((B, H, T, S), g)
        torch_masks = {"attn_mask": to_torch_attn_mask(mask, B, H, T, S)}
    with torch.no_grad():
        ref_out, ref_w = reference(query, memory, memory, need_weights=True, average_attn_weights=False,
                                   **torch_masks)
        out, w = ours(query, memory, memory, mask=mask, need_weights=True)
        fused_out, none = ours(query, memory, memory, mask=mask)
        ref_fast, _ = reference(query, memory, memory, need_weights=False, **torch_masks)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(w, ref_w, **tol)
    torch.testing.assert_close(fused_out, ref_out, **tol)
    torch.testing.assert_close(fused_out, ref_fast, **tol)
    assert none is None and out.dtype == w.dtype == dtype and w.shape == (B, H, T, S)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masks", ["key_padding", "attn_mask", "both"])
def test_cross_attention_with_different_lengths_matches_torch(dtype, masks):
    torch.manual_seed(0)
    B, T, S, D, H = 3, 4, 9, 24, 3
    reference = with_random_biases(nn.MultiheadAttention(D, H, batch_first=True)).to(dtype).eval()
    ours = interop.multihead_from_torch(reference)
    query, memory = torch.randn(B, T, D, dtype=dtype), torch.randn(B, S, D, dtype=dtype)
    key_keep = padding_mask(torch.tensor([9, 5, 1]), S)[:, None, None, :]     # (B, 1, 1, S)
    band = (torch.arange(S)[None, :] - torch.arange(T)[:, None]).abs() <= 4   # (T, S), every row non-empty
    if masks == "key_padding":
        mask, torch_masks = key_keep, {"key_padding_mask": ~key_keep[:, 0, 0]}
    elif masks == "attn_mask":
        mask, torch_masks = band, {"attn_mask": to_torch_attn_mask(band, B, H, T, S)}
    else:                                    # both: nn.MultiheadAttention combines them, we pass one mask
        mask = key_keep & band                                                   # (B, 1, T, S)
        assert mask.any(-1).all()                                                # no query left empty
        torch_masks = {"key_padding_mask": ~key_keep[:, 0, 0],
                       "attn_mask": to_torch_attn_mask(band, B, H, T, S)}
    with torch.no_grad():
        ref_out, ref_w = reference(query, memory, memory, need_weights=True, average_attn_weights=False,
                                   **torch_masks)
        out, w = ours(query, memory, memory, mask=mask, need_weights=True)
        fused, _ = ours(query, memory, memory, mask=mask)
    torch.testing.assert_close(out, ref_out, **TOLERANCE[dtype])
    torch.testing.assert_close(w, ref_w, **TOLERANCE[dtype])
    torch.testing.assert_close(fused, ref_out, **TOLERANCE[dtype])


def test_key_and_value_from_different_tensors_match_torch():
    torch.manual_seed(0)
    reference = with_random_biases(nn.MultiheadAttention(12, 3, batch_first=True)).eval()
    ours = interop.multihead_from_torch(reference)
    q, k, v = torch.randn(2, 3, 12), torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(q, k, v)[0], reference(q, k, v)[0])
        torch.testing.assert_close(ours(q, k, v, need_weights=True)[1],
                                   reference(q, k, v, average_attn_weights=False)[1])


def test_gradients_match_torch():
    torch.manual_seed(0)
    reference = with_random_biases(nn.MultiheadAttention(16, 4, batch_first=True))
    ours = interop.multihead_from_torch(reference)
    x = torch.randn(2, 5, 16)
    keep = padding_mask(torch.tensor([5, 3]), 5)
    reference.eval(), ours.eval()
    upstream = torch.randn(2, 5, 16)
    (reference(x, x, x, key_padding_mask=~keep)[0] * upstream).sum().backward()
    (ours(x, x, x, mask=keep[:, None, :])[0] * upstream).sum().backward()
    torch.testing.assert_close(ours.in_proj.weight.grad, reference.in_proj_weight.grad)
    torch.testing.assert_close(ours.in_proj.bias.grad, reference.in_proj_bias.grad)
    torch.testing.assert_close(ours.out_proj.weight.grad, reference.out_proj.weight.grad)


# ---- interop.multihead_from_torch and interop.to_torch_attn_mask ----------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_from_torch_copies_every_weight_exactly(bias, batch_first):
    reference = with_random_biases(nn.MultiheadAttention(8, 2, bias=bias, dropout=0.25, batch_first=batch_first))
    ours = interop.multihead_from_torch(reference)
    assert torch.equal(ours.in_proj.weight, reference.in_proj_weight)
    assert torch.equal(ours.out_proj.weight, reference.out_proj.weight)
    if bias:
        assert torch.equal(ours.in_proj.bias, reference.in_proj_bias)
        assert torch.equal(ours.out_proj.bias, reference.out_proj.bias)
    else:
        assert ours.in_proj.bias is None and ours.out_proj.bias is None
    assert ours.dropout == 0.25 and ours.training
    assert ours.in_proj.weight.data_ptr() != reference.in_proj_weight.data_ptr()   # a copy, not shared
    assert interop.multihead_from_torch(reference.eval().double()).in_proj.weight.dtype == torch.float64
    assert not interop.multihead_from_torch(reference).training


def test_to_torch_attn_mask_inverts_once_and_lays_heads_out_batch_major():
    keep = torch.rand(2, 3, 4, 5) < 0.5
    converted = to_torch_attn_mask(keep, 2, 3, 4, 5)
    assert converted.shape == (6, 4, 5) and converted.dtype == torch.bool
    for b in range(2):
        for h in range(3):
            assert torch.equal(converted[b * 3 + h], ~keep[b, h])
    causal = torch.ones(4, 5, dtype=torch.bool).tril()
    assert torch.equal(to_torch_attn_mask(causal, 2, 3, 4, 5), ~causal)
    padding = padding_mask(torch.tensor([5, 2]), 5)[:, None, :]                  # (B, 1, S)
    converted = to_torch_attn_mask(padding, 2, 3, 4, 5)
    assert converted.shape == (6, 4, 5) and torch.equal(converted[4, 2], ~padding[1, 0])


# ---- the two paths, fully masked rows -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_paths_agree_and_fully_masked_rows_give_zeros_with_finite_gradients(dtype):
    torch.manual_seed(0)
    B, H, T, S, Dh = 2, 3, 4, 5, 8
    keep = padding_mask(torch.tensor([4, 0]), S)[:, None, None, :].expand(B, 1, T, S).clone()
    keep[0, 0, 2] = False                                   # one query of sequence 0 sees nothing
    results = {}
    for path in ("explicit", "fused"):
        q, k, v = (torch.randn(B, H, n, Dh, generator=torch.Generator().manual_seed(i)).to(dtype).requires_grad_(True)
                   for i, n in enumerate((T, S, S)))
        out = explicit_attention(q, k, v, keep)[0] if path == "explicit" else fused_attention(q, k, v, keep)
        assert torch.isfinite(out).all()
        assert torch.equal(out[1], torch.zeros_like(out[1]))            # empty sequence
        assert torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2]))  # empty query row
        (out.float() * torch.randn(out.shape)).sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
        results[path] = out.detach()
    torch.testing.assert_close(results["fused"], results["explicit"], **TOLERANCE[dtype])


def test_fused_path_guards_rows_even_if_sdpa_returned_nan(monkeypatch):
    """Older torch releases return NaN for a fully masked row in F.scaled_dot_product_attention (a
    softmax over a row of -inf); the fused path must never hand it such a row, so that the output
    and the gradients stay finite whatever the release."""
    import scratchformer.multihead as multihead

    def old_sdpa(q, k, v, attn_mask=None, dropout_p=0.0):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))   # all -inf row -> NaN
        return torch.softmax(scores, dim=-1) @ v

    monkeypatch.setattr(multihead.F, "scaled_dot_product_attention", old_sdpa)
    q, k, v = (torch.randn(1, 2, n, 4, requires_grad=True) for n in (3, 5, 5))
    keep = torch.ones(1, 1, 3, 5, dtype=torch.bool)
    keep[0, 0, 1] = False
    out = fused_attention(q, k, v, keep)
    assert torch.isfinite(out).all() and torch.equal(out[0, :, 1], torch.zeros(2, 4))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("fused", [True, False])
def test_module_output_for_an_empty_sequence_is_the_output_bias(fused):
    torch.manual_seed(0)
    reference = with_random_biases(nn.MultiheadAttention(8, 2, batch_first=True)).eval()
    ours = interop.multihead_from_torch(reference, fused=fused)
    x = torch.randn(2, 3, 8, requires_grad=True)
    keep = padding_mask(torch.tensor([3, 0]), 3)[:, None, :]
    out, _ = ours(x, x, x, mask=keep)
    assert torch.isnan(reference(x, x, x, key_padding_mask=~keep[:, 0])[0][1]).all()   # torch: NaN
    torch.testing.assert_close(out[1], ours.out_proj.bias.expand(3, 8))                 # ours: the bias
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_need_weights_uses_the_explicit_path_even_when_fused():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, fused=True).eval()
    x = torch.randn(2, 4, 8)
    out_fused, none = mha(x, x, x)
    out, weights = mha(x, x, x, need_weights=True)
    assert none is None and weights.shape == (2, 2, 4, 4)
    torch.testing.assert_close(out, out_fused)
    mha.fused = False
    assert mha(x, x, x)[1] is None                          # explicit path still returns None unless asked
    torch.testing.assert_close(mha(x, x, x)[0], out_fused)


def test_explicit_path_equals_the_papers_equations_per_head():
    torch.manual_seed(0)
    D, H = 12, 3
    Dh = D // H
    mha = MultiHeadAttention(D, H, fused=False).eval()
    with torch.no_grad():
        mha.in_proj.bias.normal_()
        mha.out_proj.bias.normal_()
        x = torch.randn(2, 5, D)
        W_q, W_k, W_v = mha.in_proj.weight.chunk(3)
        b_q, b_k, b_v = mha.in_proj.bias.chunk(3)
        heads = []
        for h in range(H):
            r = slice(h * Dh, (h + 1) * Dh)
            q, k, v = x @ W_q[r].T + b_q[r], x @ W_k[r].T + b_k[r], x @ W_v[r].T + b_v[r]
            heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(Dh), -1) @ v)
        expected = mha.out_proj(torch.cat(heads, -1))
        torch.testing.assert_close(mha(x, x, x)[0], expected)


def test_padding_is_invisible_to_real_queries():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 5, 8)
    padded = torch.cat([x, 100 * torch.randn(1, 3, 8)], dim=1)
    keep = padding_mask(torch.tensor([5]), 8)[:, None, :]
    with torch.no_grad():
        torch.testing.assert_close(mha(padded, padded, padded, mask=keep)[0][:, :5], mha(x, x, x)[0])


# ---- dropout -----------------------------------------------------------------------------------

def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 6, 16)
    mha.eval()
    out_a, w = mha(x, x, x, need_weights=True)
    torch.testing.assert_close(mha(x, x, x, need_weights=True)[0], out_a)       # deterministic in eval
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 6))                    # rows sum to 1
    torch.testing.assert_close(mha(x, x, x)[0], out_a)                            # fused too
    mha.train()
    for fused in (False, True):
        mha.fused = fused
        assert not torch.allclose(mha(x, x, x)[0], out_a)                        # dropout is active
    _, w_train = mha(x, x, x, need_weights=True)
    assert (w_train == 0).float().mean() > 0.3                                    # about half dropped
    kept = w_train[w_train > 0] / 2                                               # scaled by 1/(1-p)
    assert torch.all(kept <= 1 + 1e-6)
    assert not torch.allclose(w_train.sum(-1), torch.ones(2, 4, 6))               # rows no longer sum to 1
    no_dropout = MultiHeadAttention(16, 4, dropout=0.0).train()
    no_dropout.load_state_dict(mha.state_dict())
    torch.testing.assert_close(no_dropout(x, x, x)[0], out_a)                    # p = 0: same as eval


def test_explicit_dropout_weights_are_the_ones_used():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 3), torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 3)
    out, weights = explicit_attention(q, k, v, dropout_p=0.4)
    torch.testing.assert_close(out, weights @ v)


# ---- parameter and FLOP counts -----------------------------------------------------------------

@pytest.mark.parametrize("D, H", [(8, 1), (8, 2), (12, 3), (512, 8), (30, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count(D, H, bias):
    count = mha_parameter_count(D, H, bias=bias)
    assert count == sum(p.numel() for p in MultiHeadAttention(D, H, bias=bias).parameters())
    assert count == sum(p.numel() for p in nn.MultiheadAttention(D, H, bias=bias).parameters())
    assert count == mha_parameter_count(D, 1, bias=bias)                          # independent of H


@pytest.mark.parametrize("H", [1, 2, 4, 8])
def test_flops_do_not_depend_on_the_number_of_heads(H):
    T, S, D = 5, 7, 16
    layer = MultiHeadAttention(D, H, fused=False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(torch.randn(1, T, D), torch.randn(1, S, D), torch.randn(1, S, D))
    assert counter.get_total_flops() == 4 * (T + S) * D * D + 4 * T * S * D


# ---- errors that name the problem --------------------------------------------------------------

MHA = MultiHeadAttention(8, 2)
Q, KV = torch.randn(2, 3, 8), torch.randn(2, 5, 8)


@pytest.mark.parametrize("call, needles", [
    (lambda: MultiHeadAttention(10, 3), ["d_model=10", "n_heads=3", "[1, 2, 5, 10]"]),
    (lambda: MultiHeadAttention(8, 0), ["n_heads=0"]),
    (lambda: MultiHeadAttention(8, 2, dropout=1.0), ["dropout", "1.0"]),
    (lambda: MHA(torch.randn(2, 3, 7), KV, KV), ["query", "(2, 3, 7)", "(B, T, 8)"]),
    (lambda: MHA(Q, torch.randn(2, 5, 6), KV), ["key", "(2, 5, 6)"]),
    (lambda: MHA(Q, KV, torch.randn(2, 4, 8)), ["(2, 5, 8)", "(2, 4, 8)"]),
    (lambda: MHA(Q, torch.randn(3, 5, 8), torch.randn(3, 5, 8)), ["(2, 3, 8)", "(3, 5, 8)"]),
    (lambda: MHA(torch.randn(3, 8), KV, KV), ["(3, 8)", "unsqueeze"]),
    (lambda: MHA(Q, KV, KV, mask=torch.ones(2, 5, dtype=torch.bool)), ["(2, 5)", "mask[:, None, :]"]),
    (lambda: MHA(Q, KV, KV, mask=torch.ones(3, 4, dtype=torch.bool)), ["(3, 4)", "S=5", "(T, S)"]),
    (lambda: MHA(Q, KV, KV, mask=torch.ones(2, 3, 3, 5, dtype=torch.bool)), ["(2, 3, 3, 5)", "H=2"]),
    (lambda: MHA(Q, KV, KV, mask=torch.ones(2, 3, 1, dtype=torch.bool)), ["(2, 3, 1)", "S=5"]),
    (lambda: MHA(Q, KV, KV, mask=torch.ones(5, dtype=torch.bool)), ["(5,)", "(T, S)"]),
    (lambda: MHA(Q, KV, KV, mask=torch.ones(3, 5)), ["torch.float32", "torch.bool"]),
    (lambda: split_heads(torch.randn(2, 3, 10), 3), ["n_heads=3", "D = 10"]),
    (lambda: merge_heads(torch.randn(3, 10)), ["(3, 10)", "(..., H, T, Dh)"]),
    (lambda: to_torch_attn_mask(torch.ones(2, 4, dtype=torch.bool), 2, 2, 3, 4), ["(2, 4)", "T=3"]),
    (lambda: mha_parameter_count(10, 4), ["d_model=10", "n_heads=4"]),
    (lambda: interop.multihead_from_torch(nn.MultiheadAttention(8, 2, kdim=4, vdim=4)), ["kdim=4"]),
    (lambda: interop.multihead_from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True)), ["add_bias_kv"]),
    (lambda: interop.multihead_from_torch(nn.Linear(8, 8)), ["Linear"]),
])
def test_bad_input_raises_value_error_naming_the_problem(call, needles):
    with pytest.raises(ValueError) as error:
        call()
    for needle in needles:
        assert needle in str(error.value), str(error.value)


@pytest.mark.parametrize("shape", [(3, 5), (1, 5), (2, 3, 5), (2, 1, 5), (1, 3, 5), (2, 2, 3, 5),
                                   (2, 1, 1, 5), (1, 2, 1, 5), (1, 1, 3, 5)])
def test_every_documented_mask_shape_is_accepted(shape):
    keep = torch.ones(shape, dtype=torch.bool)
    with torch.no_grad():
        out, weights = MHA.eval()(Q, KV, KV, mask=keep, need_weights=True)
    torch.testing.assert_close(out, MHA(Q, KV, KV)[0])
    assert weights.shape == (2, 2, 3, 5)


# ---- the rotary hook ------------------------------------------------------------------------------

def manual_rotary_attention(mha, x, rotary, mask=None):
    """Project, split, rotate q and k with ``rotary`` by hand, attend, merge, project."""
    q, k, v = (split_heads(t, mha.n_heads) for t in mha.in_proj(x).chunk(3, dim=-1))
    q, k = rotary.rotate(q), rotary.rotate(k)
    scores = q @ k.transpose(-2, -1) / math.sqrt(mha.head_dim)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return mha.out_proj(merge_heads(weights @ v)), weights


@pytest.mark.parametrize("fused", [False, True])
def test_rotary_hook_equals_manual_rotation_on_both_paths(fused):
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3, fused=fused).eval()
    with torch.no_grad():
        mha.in_proj.bias.normal_()
    assert mha.rotary is None
    mha.rotary = RotaryEmbedding(mha.head_dim)
    x = torch.randn(2, 7, 24)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    with torch.no_grad():
        expected, expected_weights = manual_rotary_attention(mha, x, mha.rotary, causal)
        out, _ = mha(x, x, x, mask=causal)                         # the path ``fused`` chooses
        explicit, weights = mha(x, x, x, mask=causal, need_weights=True)
        plain = MultiHeadAttention(24, 3).eval()
        plain.load_state_dict(mha.state_dict())                     # same weights, no rotary
        assert not torch.allclose(plain(x, x, x, mask=causal)[0], expected, atol=1e-3)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(explicit, expected)
    torch.testing.assert_close(weights, expected_weights)
    mha.rotary = None                                               # and it can be removed again
    torch.testing.assert_close(mha(x, x, x, mask=causal)[0], plain(x, x, x, mask=causal)[0])


def test_rotary_scores_depend_on_the_offset_only():
    """With the same content at every position, a rotary head's score between query t and key s
    depends only on t - s: log-weights relative to the diagonal agree along every diagonal."""
    torch.manual_seed(0)
    T = 9
    mha = MultiHeadAttention(16, 2).eval()
    mha.rotary = RotaryEmbedding(mha.head_dim)
    x = torch.randn(1, 1, 16).expand(1, T, 16)          # one token vector, repeated
    with torch.no_grad():
        _, weights = mha(x, x, x, need_weights=True)    # (1, H, T, T)
    relative = weights.log() - weights.log().diagonal(dim1=-2, dim2=-1)[..., :, None]
    for offset in range(-(T - 1), T):                   # score(t, t - offset) - score(t, t)
        along = relative.diagonal(offset=-offset, dim1=-2, dim2=-1)     # (1, H, T - |offset|)
        torch.testing.assert_close(along, along[..., :1].expand_as(along), atol=1e-4, rtol=0)
    without = MultiHeadAttention(16, 2).eval()
    without.load_state_dict(mha.state_dict())
    with torch.no_grad():
        _, plain = without(x, x, x, need_weights=True)
    torch.testing.assert_close(plain, torch.full_like(plain, 1 / T))   # no positions: uniform


def test_rotary_hook_works_with_gradients_and_in_a_state_dict():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2)
    mha.rotary = RotaryEmbedding(4)
    x = torch.randn(2, 5, 8, requires_grad=True)
    mha(x, x, x)[0].sum().backward()
    assert torch.isfinite(x.grad).all()
    assert set(mha.state_dict()) == {"in_proj.weight", "in_proj.bias", "out_proj.weight",
                                     "out_proj.bias"}
