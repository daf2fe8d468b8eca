"""Checkers for chapter 01 (``scratchformer.scores``): dot-product and additive scores, pooling."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from scratchformer.checks._common import (
    ExerciseWrong,
    _call,
    _close,
    _diagnose,
    _generator,
    _passed,
    _randn,
    _require_tensor,
)

__all__ = ["dot_product_score", "attention_pool", "additive_score"]



def dot_product_score(fn: Callable) -> None:
    """Check ``fn(q, k) -> scores`` with ``q (..., T, d)``, ``k (..., S, d)``, scores ``(..., T, S)``."""
    __tracebackhide__ = True
    name = "dot_product_score"
    g = _generator()
    for shape_q, shape_k in [((2, 3, 8), (2, 5, 8)), ((2, 4, 3, 8), (2, 4, 5, 8)), ((3, 8), (5, 8))]:
        q, k = _randn(g, *shape_q), _randn(g, *shape_k)
        expected = q @ k.transpose(-2, -1)
        actual = _call(name, fn, q, k)
        if isinstance(actual, torch.Tensor) and tuple(actual.shape) == tuple(expected.transpose(-2, -1).shape):
            if _close(actual, expected.transpose(-2, -1)):
                raise ExerciseWrong(
                    f"{name}: scores have shape {tuple(actual.shape)} = (..., S, T). Likely bug: you "
                    "computed k @ q.T; the scores are q @ k.T so that row i holds query i's score "
                    "against every key."
                )
        _require_tensor(name, "the scores", actual, expected.shape)
        _diagnose(
            name, "the scores", actual, expected,
            {
                "you divided by sqrt(d). Plain dot-product scores are unscaled; the scaling comes "
                "in chapter 02.": expected / math.sqrt(q.size(-1)),
                "you computed the elementwise product q * k summed over the wrong axis.": expected * 0,
            },
            "Each entry must be scores[..., i, j] = sum over d of q[..., i, d] * k[..., j, d]. "
            "Transpose only the last two axes of k: k.transpose(-2, -1).",
        )
    _passed(name, "matches q @ kᵀ on 3 random shapes, including extra batch/head axes.")


def attention_pool(fn: Callable) -> None:
    """Check ``fn(scores, values) -> (out, weights)`` (softmax over keys, then weighted sum)."""
    __tracebackhide__ = True
    name = "attention_pool"
    g = _generator()
    B, T, S, Dv = 2, 3, 5, 4
    scores, values = 3 * _randn(g, B, T, S), _randn(g, B, S, Dv)
    expected_w = torch.softmax(scores, dim=-1)
    result = _call(name, fn, scores, values)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ExerciseWrong(f"{name}: return a tuple (out, weights), got {type(result).__name__}.")
    out, weights = result
    _require_tensor(name, "weights", weights, (B, T, S))
    _require_tensor(name, "out", out, (B, T, Dv))
    _diagnose(
        name, "weights", weights, expected_w,
        {
            "softmax over the wrong axis. Each query's weights over the keys must sum to 1: use "
            "dim=-1 (the key axis S), not dim=-2.": torch.softmax(scores, dim=-2),
            "you returned the raw scores. The weights are softmax(scores) over the key axis.": scores,
            "softmax over the batch axis. Use dim=-1.": torch.softmax(scores, dim=0),
        },
        "weights = softmax(scores) along the last axis.",
    )
    _diagnose(
        name, "out", out, expected_w @ values,
        {"you summed the values with the raw scores instead of the weights.": scores @ values},
        "out[..., i, :] = sum over j of weights[..., i, j] * values[..., j, :], i.e. weights @ values.",
    )
    _passed(name, "weights are a softmax over keys and out = weights @ values.")


def additive_score(cls: type) -> None:
    """Check a class ``cls(d_q, d_k, d_hidden)`` whose ``forward(q, k)`` gives additive scores.

    The class must keep its three bias-free linear maps as ``W_q``, ``W_k`` and ``w_v``:
    ``score(q_i, k_j) = w_vᵀ tanh(W_q q_i + W_k k_j)``.
    """
    __tracebackhide__ = True
    name = "AdditiveScore"
    g = _generator()
    d_q, d_k, d_h, B, T, S = 6, 4, 8, 2, 3, 5
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    module = cls(d_q, d_k, d_h)
    for attr in ("W_q", "W_k", "w_v"):
        if not hasattr(module, attr):
            raise ExerciseWrong(f"{name}: keep the linear maps as attributes W_q, W_k and w_v; {attr} is missing.")
    q, k = _randn(g, B, T, d_q), _randn(g, B, S, d_k)
    actual = _call(name, module, q, k)
    with torch.no_grad():
        Wq, Wk, wv = module.W_q.weight, module.W_k.weight, module.w_v.weight  # (h, d_q) (h, d_k) (1, h)
        expected = torch.empty(B, T, S)
        for b in range(B):
            for i in range(T):
                for j in range(S):
                    expected[b, i, j] = (wv @ torch.tanh(Wq @ q[b, i] + Wk @ k[b, j])).squeeze()
        no_tanh = (q @ Wq.T).unsqueeze(2) + (k @ Wk.T).unsqueeze(1)
        candidates = {
            "tanh is missing: without it the score is linear, w_vᵀW_q q + w_vᵀW_k k, and cannot "
            "express any interaction between q and k.": (no_tanh @ wv.T).squeeze(-1),
            "tanh applied after w_v: apply tanh to the hidden features, then w_v.": torch.tanh(no_tanh @ wv.T).squeeze(-1),
        }
    if isinstance(actual, torch.Tensor) and tuple(actual.shape) == (B, S, T) and _close(actual, expected.transpose(-2, -1)):
        raise ExerciseWrong(f"{name}: scores have shape (B, S, T). Likely bug: the query axis and key axis are swapped; "
                            "broadcast W_q q as (B, T, 1, h) and W_k k as (B, 1, S, h).")
    _require_tensor(name, "the scores", actual, (B, T, S))
    _diagnose(name, "the scores", actual.detach(), expected, candidates,
              "score[b, i, j] = w_vᵀ tanh(W_q q[b, i] + W_k k[b, j]): broadcast W_q q to (B, T, 1, h) "
              "and W_k k to (B, 1, S, h), add, tanh, then w_v and squeeze the last axis.")
    _passed(name, "equals wᵥᵀ tanh(W_q qᵢ + W_k kⱼ) computed pair by pair.")
