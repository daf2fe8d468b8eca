"""The chapter 03 checkers bite: references pass, stubs are 'not attempted', and every known-buggy
implementation fails with its targeted hint."""

import math

import pytest
import torch
from einops import rearrange

from scratchformer import checks
from scratchformer.multihead import (
    MultiHeadAttention,
    explicit_attention,
    merge_heads,
    mha_parameter_count,
    split_heads,
)


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


class StubMultiHeadAttention(MultiHeadAttention):
    def forward(self, query, key, value, mask=None, need_weights=False):
        self._check_inputs(query, key, value, mask)
        raise NotImplementedError("Exercise 3.2: replace this line with your code")


# ---- references pass, stubs are not attempted --------------------------------------------------

def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(3):
        checks.split_and_merge_heads(split_heads, merge_heads)
        checks.multi_head_attention(MultiHeadAttention)
        checks.mha_parameter_count(mha_parameter_count)
    assert capsys.readouterr().out.count("✅") == 9


@pytest.mark.parametrize("call", [
    lambda: checks.split_and_merge_heads(stub, merge_heads),
    lambda: checks.split_and_merge_heads(split_heads, stub),
    lambda: checks.multi_head_attention(StubMultiHeadAttention),
    lambda: checks.mha_parameter_count(stub),
], ids=["split", "merge", "forward", "parameter_count"])
def test_stub_is_not_attempted(call):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        call()


# ---- Exercise 3.1: split / merge ---------------------------------------------------------------

def split_view_first(x, n_heads):
    B, T, D = x.shape
    return x.view(B, n_heads, T, D // n_heads)                       # reshape before transposing


def split_no_transpose(x, n_heads):
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads)                       # head axis never moved


def split_interleaved(x, n_heads):
    return rearrange(x, "b t (d h) -> b h t d", h=n_heads)


def merge_no_transpose(x):
    B, H, T, Dh = x.shape
    return x.reshape(B, T, H * Dh)                                   # forgot to transpose back


def merge_view_after_transpose(x):
    B, H, T, Dh = x.shape
    return x.transpose(1, 2).view(B, T, H * Dh)                      # view of a non-contiguous tensor


def merge_interleaved(x):
    return rearrange(x, "b h t d -> b t (d h)")


@pytest.mark.parametrize("split, merge, hint", [
    (split_view_first, merge_heads, "reshaped straight to (B, H, T, Dh)"),
    (split_no_transpose, merge_heads, "head axis was not moved"),
    (split_interleaved, merge_heads, "heads are interleaved"),
    (split_heads, merge_no_transpose, "merged without transposing back"),
    (split_heads, merge_view_after_transpose, ".view() after .transpose()"),
    (split_heads, merge_interleaved, "heads are interleaved in the merged features"),
])
def test_buggy_split_and_merge_fail_with_targeted_hint(split, merge, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.split_and_merge_heads(split, merge)
    assert hint in str(error.value), str(error.value)


def test_split_that_ignores_n_heads_is_caught():
    with pytest.raises(checks.ExerciseWrong):
        checks.split_and_merge_heads(lambda x, n_heads: split_heads(x, 2) if x.size(-1) % 2 == 0 else x[:, None],
                                     merge_heads)


# ---- Exercise 3.2: the forward pass ------------------------------------------------------------

class _Buggy(MultiHeadAttention):
    """The chapter's forward with one switch per classic bug."""

    lift_3d_mask = True
    scale_by_d_model = flip_mask = no_output_projection = average_weights = always_weights = False

    def forward(self, query, key, value, mask=None, need_weights=False):
        self._check_inputs(query, key, value, mask)
        q, k, v = self.project(query, key, value)
        q, k, v = (split_heads(t, self.n_heads) for t in (q, k, v))
        if mask is not None and mask.dim() == 3 and self.lift_3d_mask:
            mask = rearrange(mask, "b t s -> b 1 t s")
        if mask is not None and self.flip_mask:
            mask = ~mask
        if self.scale_by_d_model:   # writes its own attention, scaled by the model width
            q = q * math.sqrt(self.head_dim) / math.sqrt(self.d_model)
        out, weights = explicit_attention(q, k, v, mask) if self.always_weights else \
            self.attend(q, k, v, mask, need_weights)
        if self.average_weights and weights is not None:
            weights = weights.mean(1)
        out = merge_heads(out)
        if not self.no_output_projection:
            out = self.out_proj(out)
        return out, weights


def buggy(**switches):
    return type("Buggy", (_Buggy,), switches)


@pytest.mark.parametrize("cls, hint", [
    (buggy(no_output_projection=True), "the output projection is missing"),
    (buggy(scale_by_d_model=True), "scaled by 1/sqrt(d_model) instead of 1/sqrt(head_dim)"),
    (buggy(lift_3d_mask=False), "the mask is not broadcast over the heads"),
    (buggy(flip_mask=True), "mask polarity flipped"),
    (buggy(average_weights=True), "without averaging over the heads"),
    (buggy(always_weights=True), "with need_weights=False the weights must be None"),
], ids=["no_output_projection", "sqrt_d_model", "mask_not_broadcast", "polarity", "averaged", "weights"])
def test_buggy_forward_fails_with_targeted_hint(cls, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.multi_head_attention(cls)
    assert hint in str(error.value), str(error.value)


def test_the_buggy_base_class_itself_passes():
    """The switches above are the only difference from a correct forward."""
    checks.multi_head_attention(_Buggy)


def test_mask_not_broadcast_is_caught_even_when_batch_equals_heads(monkeypatch):
    """With B == H a (B, 1, S) mask broadcasts silently onto the head axis; the checker must catch
    that too, not only the B != H case where broadcasting raises (handled correctly here)."""
    class LiftsOnlyWhenItWouldCrash(_Buggy):
        def forward(self, query, key, value, mask=None, need_weights=False):
            self.lift_3d_mask = mask is not None and mask.dim() == 3 and query.size(0) != self.n_heads
            return super().forward(query, key, value, mask, need_weights)
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.multi_head_attention(LiftsOnlyWhenItWouldCrash)
    assert "not broadcast over the heads" in str(error.value)


class NaNForEmptyRows(MultiHeadAttention):
    """-inf filling: NaN for a query with nothing to attend to."""

    def forward(self, query, key, value, mask=None, need_weights=False):
        q, k, v = (split_heads(t, self.n_heads) for t in self.project(query, key, value))
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, -1)
        return self.out_proj(merge_heads(weights @ v)), (weights if need_weights else None)


def test_nan_for_empty_rows_is_caught():
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.multi_head_attention(NaNForEmptyRows)
    assert "NaN from a fully masked row" in str(error.value)


class RenamedParameters(MultiHeadAttention):
    def __init__(self, d_model, n_heads):
        super().__init__(d_model, n_heads)
        self.W_o = self.out_proj
        del self.out_proj


def test_renamed_parameters_are_reported():
    with pytest.raises(checks.ExerciseWrong, match="in_proj"):
        checks.multi_head_attention(RenamedParameters)


def test_crash_in_forward_is_reported_as_wrong():
    class Crashes(MultiHeadAttention):
        def forward(self, query, key, value, mask=None, need_weights=False):
            return query @ key, None
    with pytest.raises(checks.ExerciseWrong, match="RuntimeError"):
        checks.multi_head_attention(Crashes)


# ---- Exercise 3.3: parameter count -------------------------------------------------------------

@pytest.mark.parametrize("fn, hint", [
    (lambda d, h, bias=True: 4 * d * d, "forgot the biases"),
    (lambda d, h, bias=True: 3 * d * d + (3 * d if bias else 0), "forgot the output projection"),
    (lambda d, h, bias=True: h * (4 * d * d + (4 * d if bias else 0)), "multiplied by the number of heads"),
    (lambda d, h, bias=True: 4 * d * d + 4 * d, "counted biases although bias=False"),
    (lambda d, h, bias=True: 4.5, "whole number"),
], ids=["no_bias", "no_output_projection", "heads_multiply", "bias_always", "not_int"])
def test_buggy_parameter_count_fails_with_targeted_hint(fn, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.mha_parameter_count(fn)
    assert hint in str(error.value), str(error.value)
