"""Chapter 01: dot-product scores, additive scores, attention pooling."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchformer.scores import AdditiveScore, attention_pool, dot_product_score


@settings(max_examples=30, deadline=None)
@given(batch=st.lists(st.integers(1, 3), max_size=2), T=st.integers(1, 5), S=st.integers(1, 5),
       d=st.integers(1, 6))
def test_dot_product_score_equals_pairwise_loop(batch, T, S, d):
    q, k = torch.randn(*batch, T, d), torch.randn(*batch, S, d)
    scores = dot_product_score(q, k)
    assert scores.shape == (*batch, T, S)
    flat_q, flat_k = q.reshape(-1, T, d), k.reshape(-1, S, d)
    loop = torch.tensor([[[float(flat_q[b, i] @ flat_k[b, j]) for j in range(S)] for i in range(T)]
                         for b in range(flat_q.shape[0])])
    torch.testing.assert_close(scores.reshape(-1, T, S), loop, rtol=1e-5, atol=1e-5)


def test_dot_product_score_broadcasts_leading_axes():
    q, k = torch.randn(2, 3, 4, 8), torch.randn(1, 3, 5, 8)
    assert dot_product_score(q, k).shape == (2, 3, 4, 5)


@pytest.mark.parametrize("d_q, d_k", [(6, 4), (5, 5)])
def test_additive_score_equals_direct_per_pair_computation(d_q, d_k):
    torch.manual_seed(0)
    module = AdditiveScore(d_q, d_k, d_hidden=7)
    q, k = torch.randn(2, 3, d_q), torch.randn(2, 4, d_k)
    with torch.no_grad():
        scores = module(q, k)
        Wq, Wk, wv = module.W_q.weight, module.W_k.weight, module.w_v.weight[0]
        for b in range(2):
            for i in range(3):
                for j in range(4):
                    expected = wv @ torch.tanh(Wq @ q[b, i] + Wk @ k[b, j])
                    torch.testing.assert_close(scores[b, i, j], expected)
    assert scores.shape == (2, 3, 4)


@pytest.mark.parametrize("lead", [(), (2,), (2, 3)])
def test_additive_score_takes_any_leading_axes(lead):
    torch.manual_seed(0)
    module = AdditiveScore(5, 3, d_hidden=4)
    q, k = torch.randn(*lead, 2, 5), torch.randn(*lead, 6, 3)
    scores = module(q, k)
    assert scores.shape == (*lead, 2, 6)
    flat = module(q.reshape(-1, 2, 5), k.reshape(-1, 6, 3))
    torch.testing.assert_close(scores.reshape(-1, 2, 6), flat)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scores_and_pooling_keep_the_dtype(dtype):
    q, k, v = (torch.randn(2, n, 4, dtype=dtype) for n in (3, 5, 5))
    assert dot_product_score(q, k).dtype == dtype
    assert AdditiveScore(4, 4, 3).to(dtype)(q, k).dtype == dtype
    assert all(t.dtype == dtype for t in attention_pool(dot_product_score(q, k), v))


def test_attention_pool_is_stable_for_large_scores():
    out, weights = attention_pool(1000 + torch.randn(2, 3, 5), torch.randn(2, 5, 4))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))


def test_attention_pool_rows_sum_to_one_and_average_values():
    scores, values = torch.randn(2, 3, 5), torch.randn(2, 5, 4)
    out, weights = attention_pool(scores, values)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
    torch.testing.assert_close(out, torch.einsum("bts,bsd->btd", weights, values))


def test_attention_pool_equal_scores_give_the_mean():
    values = torch.randn(1, 6, 3)
    out, _ = attention_pool(torch.zeros(1, 2, 6), values)
    torch.testing.assert_close(out, values.mean(1, keepdim=True).expand(1, 2, 3))


@pytest.mark.parametrize("call, names", [
    (lambda: dot_product_score(torch.randn(2, 3, 4), torch.randn(2, 5, 6)), ["(2, 3, 4)", "(2, 5, 6)"]),
    (lambda: dot_product_score(torch.randn(2, 3, 4), torch.randn(3, 5, 4)), ["(2, 3, 4)", "(3, 5, 4)"]),
    (lambda: dot_product_score(torch.randn(4), torch.randn(5, 4)), ["(4,)"]),
    (lambda: AdditiveScore(6, 4, 8)(torch.randn(2, 3, 4), torch.randn(2, 5, 4)), ["(2, 3, 4)"]),
    (lambda: attention_pool(torch.randn(2, 3, 5), torch.randn(2, 4, 2)), ["(2, 3, 5)", "(2, 4, 2)"]),
])
def test_bad_shapes_raise_value_error_naming_the_shapes(call, names):
    with pytest.raises(ValueError) as error:
        call()
    for name in names:
        assert name in str(error.value)
