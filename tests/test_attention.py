"""Chapter 02: masks, masked softmax, scaled dot-product attention, SelfAttention."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchformer.attention import (
    SelfAttention,
    masked_softmax,
    padding_mask,
    scaled_dot_product_attention,
)

LOW_PRECISION = {torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=2e-3, rtol=2e-3)}


def random_keep_mask(shape, generator):
    """Boolean mask (True = may attend) with at least one key allowed per query row."""
    mask = torch.rand(shape, generator=generator) < 0.6
    first = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    mask.scatter_(-1, first.unsqueeze(-1), True)
    return mask


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), H=st.integers(1, 3), T=st.integers(1, 6), S=st.integers(1, 7),
       d_k=st.integers(1, 9), d_v=st.integers(1, 5), mask_kind=st.sampled_from(["none", "full", "keys", "causal"]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**16))
def test_matches_torch_scaled_dot_product_attention(B, H, T, S, d_k, d_v, mask_kind, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, d_k, generator=g).to(dtype)
    k = torch.randn(B, H, S, d_k, generator=g).to(dtype)
    v = torch.randn(B, H, S, d_v, generator=g).to(dtype)
    mask = {
        "none": None,
        "full": random_keep_mask((B, H, T, S), g),
        "keys": random_keep_mask((B, 1, 1, S), g),
        "causal": torch.ones(T, S, dtype=torch.bool).tril(),
    }[mask_kind]
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, reference, **LOW_PRECISION.get(dtype, {}))
    assert out.dtype == weights.dtype == dtype
    if mask is not None:  # masked weights are exactly zero, allowed weights sum to one
        assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()
    torch.testing.assert_close(weights.float().sum(-1), torch.ones(B, H, T), atol=1e-2 if dtype != torch.float32 else 1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fully_masked_rows_give_zeros_and_finite_gradients(dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 3, 3, dtype=torch.bool)
    mask[0, 1] = False        # query 1 of sequence 0 may attend to nothing
    mask[1] = False           # sequence 1: an empty sequence, every query fully masked
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert torch.equal(weights[0, 1], torch.zeros(3, dtype=dtype))
    assert torch.equal(out[0, 1], torch.zeros(4, dtype=dtype))
    assert torch.equal(out[1], torch.zeros(3, 4, dtype=dtype))
    (out.float() * torch.randn(out.shape)).sum().backward()
    for tensor in (q, k, v):
        assert torch.isfinite(tensor.grad).all()
    assert torch.isfinite(out).all()


def test_masked_softmax_with_lengths_zero_and_one():
    """A batch with one sequence of length 0 and one of length 1: no NaN, finite gradients."""
    scores = torch.randn(2, 3, 3, requires_grad=True)
    keys = padding_mask(torch.tensor([0, 1]), 3)[:, None, :]       # (B, 1, S)
    weights = masked_softmax(scores, keys)
    assert torch.equal(weights[0], torch.zeros(3, 3))
    assert torch.equal(weights[1], torch.tensor([[1.0, 0, 0]] * 3))
    weights.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_masked_softmax_in_low_precision_masks_exactly():
    scores = torch.randn(4, 6) * 20
    mask = torch.rand(4, 6) < 0.5
    mask[:, 0] = True
    for dtype in (torch.float16, torch.bfloat16):
        weights = masked_softmax(scores.to(dtype), mask)
        assert weights.dtype == dtype
        assert (weights[~mask] == 0).all()
        torch.testing.assert_close(weights.float().sum(-1), torch.ones(4), atol=1e-2, rtol=0)


def test_padding_is_invisible_to_real_queries():
    """Adding padded keys (masked) never changes the outputs at the real positions."""
    torch.manual_seed(0)
    attention = SelfAttention(8, d_k=4)
    x = torch.randn(1, 5, 8)
    padded = torch.cat([x, torch.randn(1, 3, 8) * 100], dim=1)
    out, _ = attention(x)
    out_padded, weights = attention(padded, padding_mask(torch.tensor([5]), 8)[:, None, :])
    torch.testing.assert_close(out_padded[:, :5], out)
    assert (weights[..., 5:] == 0).all()


def test_self_attention_equals_equations():
    torch.manual_seed(0)
    attention = SelfAttention(d_model=12, d_k=6, d_v=3)
    x = torch.randn(2, 5, 12)
    out, weights = attention(x)
    with torch.no_grad():
        q, k, v = x @ attention.W_q.weight.T, x @ attention.W_k.weight.T, x @ attention.W_v.weight.T
        expected_w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(6), dim=-1)
    torch.testing.assert_close(weights, expected_w)
    torch.testing.assert_close(out, expected_w @ v)
    assert out.shape == (2, 5, 3)


@pytest.mark.parametrize("lead", [(), (2,), (2, 3)], ids=["(T, D)", "(B, T, D)", "(B, H, T, D)"])
def test_self_attention_takes_any_leading_axes(lead):
    torch.manual_seed(0)
    attention = SelfAttention(d_model=6, d_k=4, d_v=3, bias=True)
    x = torch.randn(*lead, 5, 6)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    out, weights = attention(x, mask)
    assert out.shape == (*lead, 5, 3) and weights.shape == (*lead, 5, 5)
    flat_out, _ = attention(x.reshape(-1, 5, 6), mask)
    torch.testing.assert_close(out.reshape(-1, 5, 3), flat_out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_self_attention_keeps_the_dtype(dtype):
    attention = SelfAttention(8, d_k=4, d_v=2).to(dtype)
    out, weights = attention(torch.randn(2, 3, 8, dtype=dtype), torch.tensor([[[True, True, False]]]))
    assert out.dtype == weights.dtype == dtype
    assert (weights[..., 2] == 0).all()


def test_self_attention_defaults():
    attention = SelfAttention(10)
    assert (attention.d_k, attention.d_v) == (10, 10)
    assert attention.W_q.bias is None
    assert SelfAttention(10, d_k=4).d_v == 4


def test_padding_mask():
    assert torch.equal(padding_mask(torch.tensor([2, 0, 3]), 3),
                       torch.tensor([[True, True, False], [False, False, False], [True, True, True]]))


@pytest.mark.parametrize("call, needles", [
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 5, 6), torch.randn(2, 5, 2)),
     ["(2, 3, 4)", "(2, 5, 6)"]),
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 6, 2)),
     ["(2, 5, 4)", "(2, 6, 2)"]),
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 2),
                                          torch.ones(2, 3, 4, dtype=torch.bool)), ["(2, 3, 4)", "(2, 3, 5)"]),
    (lambda: scaled_dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 2),
                                          torch.ones(2, 3, 5)), ["torch.bool", "torch.float32"]),
    (lambda: masked_softmax(torch.randn(2, 3), torch.ones(3, 3, dtype=torch.bool)), ["(3, 3)", "(2, 3)"]),
    (lambda: SelfAttention(8)(torch.randn(2, 3, 7)), ["(2, 3, 7)", "(..., T, 8)"]),
    (lambda: SelfAttention(8)(torch.randn(8)), ["(8,)"]),
    (lambda: padding_mask(torch.tensor([4, 6]), 5), ["max_len=5", "[4, 6]"]),
    (lambda: padding_mask(torch.tensor([2.0, 3.0]), 5), ["integers", "torch.float32"]),
    (lambda: padding_mask(torch.tensor([[2, 3]]), 5), ["1-D"]),
    (lambda: scaled_dot_product_attention(torch.randint(0, 3, (2, 3, 4)), torch.randn(2, 5, 4), torch.randn(2, 5, 2)),
     ["torch.int64"]),
])
def test_bad_input_raises_value_error_naming_the_problem(call, needles):
    with pytest.raises(ValueError) as error:
        call()
    for needle in needles:
        assert needle in str(error.value), str(error.value)
