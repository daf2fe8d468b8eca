"""The chapter 03 checkers bite: references pass on fresh draws, stubs are 'not attempted', buggy
variants of every class fail with their targeted hint, and correct answers written differently
pass."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from scratchformer import checks
from scratchformer.attention import scaled_dot_product_attention
from scratchformer.multihead import (
    MultiHeadAttention,
    fused_attention,
    merge_heads,
    mha_parameter_count,
    split_heads,
)
from scratchformer.shapes import require_mha_inputs


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


class StubMultiHeadAttention(MultiHeadAttention):
    def forward(self, query, key, value, mask=None, need_weights=False):
        require_mha_inputs(self, query, key, value, mask)
        raise NotImplementedError("Exercise 3.2: replace this line with your code")


# ---- references pass, stubs are not attempted --------------------------------------------------

def test_references_pass_on_fresh_draws(capsys):
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

def split_view_first(x, n_heads):                       # reshape straight to (..., H, T, Dh)
    *lead, T, D = x.shape
    return x.reshape(*lead, n_heads, T, D // n_heads)


def split_no_transpose(x, n_heads):                     # head axis never moved
    return x.reshape(*x.shape[:-1], n_heads, x.size(-1) // n_heads)


def split_interleaved(x, n_heads):
    return rearrange(x, "... t (d h) -> ... h t d", h=n_heads)


def split_heads_as_head_size(x, n_heads):
    return rearrange(x, "... t (h d) -> ... h t d", d=n_heads)


def split_three_d_only(x, n_heads):                     # unpacks exactly three axes
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 2)


def split_transposes_axes_1_and_2(x, n_heads):         # right for 3-D only, no exception for 2-D
    return x.reshape(*x.shape[:-1], n_heads, x.size(-1) // n_heads).transpose(1, 2)


def split_in_float32(x, n_heads):
    return split_heads(x.float(), n_heads)


def split_detached(x, n_heads):
    return split_heads(x.detach(), n_heads)


def split_crashes(x, n_heads):
    return {"heads": n_heads}["d"]


def merge_no_transpose(x):
    *lead, H, T, Dh = x.shape
    return x.reshape(*lead, T, H * Dh)


def merge_view_after_transpose(x):
    *lead, H, T, Dh = x.shape
    return x.transpose(-3, -2).view(*lead, T, H * Dh)


def merge_interleaved(x):
    return rearrange(x, "... h t d -> ... t (d h)")


def merge_not_flattened(x):
    return x.transpose(-3, -2)


def merge_three_d_only(x):
    B, H, T, Dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * Dh)


def merge_transposes_in_place(x):
    x.transpose_(-3, -2)
    return x.reshape(*x.shape[:-2], -1)


def merge_detached(x):
    return merge_heads(x).detach()


SPLIT_BUGS = [
    (split_view_first, "reshaped straight to (..., H, T, Dh)"),
    (split_no_transpose, "head axis was not moved"),
    (split_interleaved, "heads are interleaved"),
    (split_heads_as_head_size, "n_heads was used as the head size"),
    (split_three_d_only, "works with one leading (batch) axis but not with"),
    (split_transposes_axes_1_and_2, "works with one leading (batch) axis but not with"),
    (split_in_float32, "must be torch.float16"),
    (split_detached, "does not depend on the inputs through autograd"),
    (split_crashes, "raised KeyError"),
]
MERGE_BUGS = [
    (merge_no_transpose, "merged without moving the head axis back"),
    (merge_view_after_transpose, ".view() after .transpose()"),
    (merge_interleaved, "heads are interleaved in the merged features"),
    (merge_not_flattened, "moved back but not flattened"),
    (merge_three_d_only, "works with one leading (batch) axis but not with"),
    (merge_transposes_in_place, "changed its input `x` in place"),
    (merge_detached, "does not depend on the inputs through autograd"),
]


@pytest.mark.parametrize("split, hint", SPLIT_BUGS, ids=[f.__name__ for f, _ in SPLIT_BUGS])
def test_buggy_split_fails_with_targeted_hint(split, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.split_and_merge_heads(split, merge_heads)
    assert hint in str(error.value), str(error.value)


@pytest.mark.parametrize("merge, hint", MERGE_BUGS, ids=[f.__name__ for f, _ in MERGE_BUGS])
def test_buggy_merge_fails_with_targeted_hint(merge, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.split_and_merge_heads(split_heads, merge)
    assert hint in str(error.value), str(error.value)


def test_split_that_ignores_n_heads_gets_no_false_hint():
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.split_and_merge_heads(lambda x, n_heads: split_heads(x, 1), merge_heads)
    assert "Likely bug" not in str(error.value), str(error.value)


def split_with_views(x, n_heads):                      # view + transpose, axes from the end
    return x.unflatten(-1, (n_heads, -1)).transpose(-3, -2)


def merge_with_views(x):
    return x.transpose(-3, -2).flatten(-2)


def split_by_stacking(x, n_heads):                      # float64 inside, cast back
    chunks = x.double().split(x.size(-1) // n_heads, dim=-1)
    return torch.stack(chunks, dim=-3).to(x.dtype)


def merge_by_concatenating(x):
    return torch.cat(x.unbind(-3), dim=-1)


@pytest.mark.parametrize("split, merge", [(split_with_views, merge_with_views),
                                          (split_by_stacking, merge_by_concatenating)])
def test_correct_split_and_merge_written_differently_pass(split, merge):
    checks.split_and_merge_heads(split, merge)


# ---- Exercise 3.2: the forward pass ------------------------------------------------------------

class Learner(MultiHeadAttention):
    """A forward pass as a learner writes it, without the chapter's helpers for the explicit
    path; ``bug`` switches on one plausible mistake."""

    bug = None

    def forward(self, query, key, value, mask=None, need_weights=False):
        require_mha_inputs(self, query, key, value, mask)
        bug, H, Dh = self.bug, self.n_heads, self.head_dim
        fused_path = self.fused and not need_weights
        W_q, W_k, W_v = self.in_proj.weight.chunk(3)
        b = self.in_proj.bias
        if bug == "bias_false_crashes":
            b_q, b_k, b_v = b.chunk(3)
        else:
            b_q, b_k, b_v = (None,) * 3 if b is None or bug == "no_input_bias" else b.chunk(3)
        q, k = F.linear(query, W_q, b_q), F.linear(key, W_k, b_k)
        v = F.linear(key if bug == "values_from_key" else value, W_v, b_v)
        if bug in ("heads_view", "flat_heads"):
            q, k, v = (t.view(t.size(0), H, t.size(1), Dh) for t in (q, k, v))
        else:
            q, k, v = (split_heads(t, H) for t in (q, k, v))
        rotate = bug != "no_rotary" and not (bug == "rotary_explicit_only" and fused_path)
        if self.rotary is not None and rotate:
            q, k = self.rotary(q, k)
        if mask is not None and mask.dim() == 3:
            if bug == "mask_unsqueezed_in_place":
                mask.unsqueeze_(1)
            elif bug != "mask_not_broadcast" and not (bug == "broadcast_explicit_only" and fused_path):
                mask = mask[:, None]
        if mask is not None and bug == "mask_flipped":
            mask = ~mask
        p = self.dropout if self.training or bug == "dropout_in_eval" else 0.0
        p = 0.0 if bug == "no_dropout" else p
        if fused_path:
            fused_mask = None if bug in ("fused_ignores_mask", "mask_ignored") else mask
            heads, weights = fused_attention(q, k, v, fused_mask, p), None
        else:
            scale = {"sqrt_d_model": self.d_model, "no_scale": 1}.get(bug, Dh)
            scores = q @ k.transpose(-2, -1) / math.sqrt(scale)
            if mask is not None and bug != "mask_ignored":
                fill = {"fill_1e9": -1e9, "fill_inf": float("-inf")}.get(
                    bug, torch.finfo(scores.dtype).min)
                scores = scores.masked_fill(~mask, fill)
            if bug == "naive_softmax":
                weights = scores.exp() / scores.exp().sum(-1, keepdim=True)
            else:
                weights = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
            if mask is not None and bug not in ("fill_inf", "mask_ignored"):
                weights = weights.masked_fill(~mask, 0.0)
            if p > 0 and bug == "dropout_not_rescaled":
                weights = weights * (torch.rand_like(weights) > p)
            elif p > 0:
                weights = F.dropout(weights, p)
            heads = weights @ v
        if bug in ("merge_no_transpose", "flat_heads"):
            out = heads.reshape(query.shape)
        else:
            out = merge_heads(heads)
        if bug == "float32_output":
            out = out.float()
        if bug == "detached_heads":
            out = out.detach()
        if bug != "no_output_projection":
            out = F.linear(out, self.out_proj.weight.to(out.dtype),
                           None if self.out_proj.bias is None else self.out_proj.bias.to(out.dtype))
        if bug == "averaged_weights" and weights is not None:
            weights = weights.mean(1)
        if bug == "always_weights":
            return out, weights if weights is not None else torch.zeros(1)
        if bug == "crashes":
            raise KeyError("heads")
        return out, (weights if need_weights else None)


def buggy(bug):
    return type(f"Learner_{bug}", (Learner,), {"bug": bug})


class NoWeightsWhenFused(MultiHeadAttention):
    def forward(self, query, key, value, mask=None, need_weights=False):
        out, weights = super().forward(query, key, value, mask, need_weights)
        return out, (None if self.fused else weights)


class RenamedParameters(MultiHeadAttention):
    def __init__(self, d_model, n_heads, **options):
        super().__init__(d_model, n_heads, **options)
        self.W_o = self.out_proj
        del self.out_proj


MHA_BUGS = [   # (class, hint) — the class of bug each one stands for is in the id
    (buggy("sqrt_d_model"), "1/sqrt(d_model) instead of 1/sqrt(head_dim)"),
    (buggy("no_scale"), "1/sqrt(head_dim) scaling of the scores is missing"),
    (buggy("heads_view"), "heads split without moving the head axis"),
    (buggy("merge_no_transpose"), "heads merged without moving the head axis back"),
    (buggy("flat_heads"), "every 'head' is then a block of the flat memory"),
    (buggy("no_output_projection"), "output projection W_O is missing"),
    (buggy("no_input_bias"), "biases of the input projections are missing"),
    (buggy("values_from_key"), "values are projected from `key`"),
    (buggy("mask_flipped"), "mask polarity flipped"),
    (buggy("mask_ignored"), "the mask is not applied"),
    (buggy("fused_ignores_mask"), "(only on the fused path; the other path is right): the mask"),
    (buggy("mask_not_broadcast"), "the mask is not broadcast over the heads"),
    (buggy("broadcast_explicit_only"), "only on the fused path; the other path is right): the mask is not broadcast"),
    (buggy("mask_unsqueezed_in_place"), "changed its input `mask` in place"),
    (buggy("no_rotary"), "self.rotary is set but not applied"),
    (buggy("rotary_explicit_only"), "only on the fused path; the other path is right): self.rotary"),
    (buggy("bias_false_crashes"), "raised AttributeError"),
    (buggy("naive_softmax"), "the softmax overflows for large scores"),
    (buggy("float32_output"), "must be torch.float16"),
    (buggy("fill_1e9"), "does not fit in float16"),
    (buggy("fill_inf"), "NaN from a fully masked row"),
    (buggy("detached_heads"), "no gradient reaches `query`"),
    (buggy("dropout_in_eval"), "in eval mode two forward passes differ"),
    (buggy("no_dropout"), "in train mode two forward passes with dropout p > 0 are identical"),
    (buggy("dropout_not_rescaled"), "in train mode the average output differs"),
    (buggy("averaged_weights"), "without averaging over the heads"),
    (buggy("always_weights"), "with need_weights=False the weights must be None"),
    (NoWeightsWhenFused, "with need_weights=True the weights (B, H, T, S) must be returned"),
    (buggy("crashes"), "raised KeyError"),
    (RenamedParameters, "in_proj (nn.Linear(D, 3D)) and out_proj"),
]


@pytest.mark.parametrize("cls, hint", MHA_BUGS, ids=[c.__name__ for c, _ in MHA_BUGS])
def test_buggy_forward_fails_with_targeted_hint(cls, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.multi_head_attention(cls)
    assert hint in str(error.value), str(error.value)


def test_the_learner_base_class_without_a_bug_passes():
    """The switches above are the only difference from a correct forward."""
    for _ in range(2):
        checks.multi_head_attention(Learner)


class PerHeadLoop(MultiHeadAttention):
    """Correct, written differently: one head at a time with chapter 02's function, in float64;
    the fused path through F.scaled_dot_product_attention with its own guard for empty rows."""

    def forward(self, query, key, value, mask=None, need_weights=False):
        D, H, Dh = self.d_model, self.n_heads, self.head_dim
        if query is key is value:                                   # one product for Q, K, V
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:
            W, b = self.in_proj.weight, self.in_proj.bias
            b = torch.zeros(3 * D, dtype=W.dtype) if b is None else b
            q, k, v = (x @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D]
                       for i, x in enumerate((query, key, value)))
        q, k, v = (t.unflatten(-1, (H, Dh)).transpose(1, 2) for t in (q, k, v))
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        if mask is not None:
            mask = mask.unsqueeze(1) if mask.dim() == 3 else mask
            mask = mask.expand(q.size(0), H, q.size(2), k.size(2))
        p = self.dropout if self.training else 0.0
        if self.fused and not need_weights:
            if mask is None:
                heads = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            else:
                empty = ~mask.any(-1, keepdim=True)
                heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty,
                                                       dropout_p=p).masked_fill(empty, 0)
            weights = None
        else:
            outs, ws = [], []
            for h in range(H):
                o, w = scaled_dot_product_attention(q[:, h].double(), k[:, h].double(),
                                                    v[:, h].double(),
                                                    None if mask is None else mask[:, h])
                if p > 0:
                    w = F.dropout(w, p)
                    o = w @ v[:, h].double()
                outs.append(o.to(q.dtype))
                ws.append(w.to(q.dtype))
            heads, weights = torch.stack(outs, 1), torch.stack(ws, 1)
        out = self.out_proj(heads.transpose(1, 2).flatten(2))
        return out, (weights if need_weights else None)


class Einsum(MultiHeadAttention):
    """Correct, written differently: einsum and masked_fill, a single explicit path."""

    def forward(self, query, key, value, mask=None, need_weights=False):
        W_q, W_k, W_v = self.in_proj.weight.chunk(3)
        b = self.in_proj.bias
        b_q, b_k, b_v = (None,) * 3 if b is None else b.chunk(3)
        q = rearrange(F.linear(query, W_q, b_q), "b t (h d) -> b h t d", h=self.n_heads)
        k = rearrange(F.linear(key, W_k, b_k), "b s (h d) -> b h s d", h=self.n_heads)
        v = rearrange(F.linear(value, W_v, b_v), "b s (h d) -> b h s d", h=self.n_heads)
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        scores = einsum(q, k, "b h t d, b h s d -> b h t s") / self.head_dim ** 0.5
        if mask is not None:
            keep = rearrange(mask, "b t s -> b 1 t s") if mask.dim() == 3 else mask
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1)
        if mask is not None:
            weights = weights.masked_fill(~keep, 0)
        weights = F.dropout(weights, self.dropout, training=self.training)
        heads = einsum(weights, v, "b h t s, b h s d -> b h t d")
        out = self.out_proj(rearrange(heads, "b h t d -> b t (h d)"))
        return out, (weights if need_weights else None)


@pytest.mark.parametrize("cls", [PerHeadLoop, Einsum])
def test_correct_forward_written_differently_passes(cls):
    for _ in range(2):
        checks.multi_head_attention(cls)


# ---- Exercise 3.3: parameter count -------------------------------------------------------------

def b(bias):
    return 1 if bias else 0


COUNT_BUGS = [
    (lambda d, h, bias=True: 4 * d * d, "forgot the biases"),
    (lambda d, h, bias=True: 4 * d * d + 4 * d, "counted the biases although bias=False"),
    (lambda d, h, bias=True: 4 * d * d + 4 * d * (1 - b(bias)), "read the wrong way round"),
    (lambda d, h, bias=False: 4 * d * d + 4 * d * b(bias), "the default must be bias=True"),
    (lambda d, h, bias=True: 3 * d * d + 3 * d * b(bias), "forgot the output projection W_O"),
    (lambda d, h, bias=True: 4 * d * d + 3 * d * b(bias), "forgot the output projection's bias"),
    (lambda d, h, bias=True: h * (4 * d * d + 4 * d * b(bias)), "multiplied by the number of heads"),
    (lambda d, h, bias=True: h * 3 * (d * d + d * b(bias)) + d * d + d * b(bias),
     "multiplied the input projections by the number of heads"),
    (lambda d, h, bias=True: 4 * d * (d // h) + (3 * (d // h) + d) * b(bias),
     "counted a single head's slices only"),
    (lambda d, h, bias=True: float(4 * d * d + 4 * d * b(bias)), "return an int"),
    (lambda d, h, bias=True: str(4 * d * d + 4 * d * b(bias)), "should be an int"),
    (lambda d, h, bias=True: [][0], "raised IndexError"),
]


@pytest.mark.parametrize("fn, hint", COUNT_BUGS, ids=[h.split()[0] + str(i) for i, (_, h) in enumerate(COUNT_BUGS)])
def test_buggy_parameter_count_fails_with_targeted_hint(fn, hint):
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.mha_parameter_count(fn)
    assert hint in str(error.value), str(error.value)


def test_a_count_that_fits_no_single_bug_gets_no_hint():
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.mha_parameter_count(lambda d, h, bias=True: 4 * d * d + 4 * d * b(bias) + 1)
    assert "Likely bug" not in str(error.value)


@pytest.mark.parametrize("fn", [
    lambda d, h, bias=True: np.int64(4 * d * d + 4 * d * b(bias)),
    lambda d, h, bias=True: torch.tensor(4 * d * d + 4 * d * b(bias)),
    lambda d, h, bias=True: sum(p.numel() for p in MultiHeadAttention(d, h, bias=bias).parameters()),
], ids=["numpy_int", "0-d_tensor", "count_the_module"])
def test_equivalent_return_types_and_other_correct_counts_pass(fn):
    checks.mha_parameter_count(fn)


def test_number_of_rejected_variants():
    """The counts quoted in the chapter's report: how many buggy variants each checker rejects."""
    assert len(SPLIT_BUGS) + len(MERGE_BUGS) + 1 == 17
    assert len(MHA_BUGS) == 30
    assert len(COUNT_BUGS) + 1 == 13
