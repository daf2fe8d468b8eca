"""The chapter 13 checkers bite: the references pass, the stubs are 'not attempted', every
known-buggy cached_self_attention and length_penalty fails with its targeted hint, and correct
versions written differently pass."""

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from checker_testing import fails_with
from scratchformer import checks
from scratchformer.checks import decoding as C
from scratchformer.decoding import cached_self_attention, length_penalty


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(3):
        checks.cached_self_attention(cached_self_attention)
        checks.length_penalty(length_penalty)
    assert capsys.readouterr().out.count("✅") == 6


@pytest.mark.parametrize("checker", [checks.cached_self_attention, checks.length_penalty],
                         ids=["cached_self_attention", "length_penalty"])
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(stub)


def test_checkers_are_exported_and_numbered():
    assert {"cached_self_attention", "length_penalty"} <= set(checks.__all__)
    assert checks.REGISTRY["cached_self_attention"] == ("13.1", "scratchformer.decoding")
    assert checks.REGISTRY["length_penalty"] == ("13.2", "scratchformer.decoding")


# ---- 13.1 cached_self_attention ----------------------------------------------------------------

def make_step(*, split="b t (h d) -> b h t d", merge="b h t d -> b t (h d)", order="qkv",
              bias=True, offset=True, rotate_past=False, use_past=True, use_new=True,
              first_only=False, keep_mode="use", scale=True, out_proj=True, update="grow",
              swap_return=False, fill=None, in_place=None, detach=False, to_float=False):
    """A learner's step with one knob turned away from the right answer."""

    def step(attn, x, past_k, past_v, position, keep=None):
        H, D = attn.n_heads, attn.d_model
        W = attn.in_proj.weight
        b = attn.in_proj.bias if bias else None
        parts = dict(zip(order, F.linear(x, W, b).split(D, dim=-1)))
        q, k, v = (rearrange(parts[c], split, h=H) for c in "qkv")
        if attn.rotary is not None:
            at = position if offset else 0
            q, k = attn.rotary.rotate(q, at), attn.rotary.rotate(k, at)
        pk = attn.rotary.rotate(past_k) if rotate_past and attn.rotary is not None else past_k
        if in_place == "past_k":
            past_k.mul_(1.0)
            past_k.add_(0.5)
        k_all, v_all = torch.cat([pk, k], dim=2), torch.cat([past_v, v], dim=2)
        keys, values = k_all, v_all
        m = None if keep is None else keep
        if not use_new:
            keys, values = pk, past_v
            m = None if m is None else m[:, :-1]
        if not use_past:
            keys, values = k, v
            m = None if m is None else m[:, -1:]
        if first_only:
            keys, values = k_all[:, :, :1], v_all[:, :, :1]
            m = None if m is None else m[:, :1]
        scores = q @ keys.transpose(-2, -1)
        if scale:
            scores = scores / math.sqrt(q.size(-1))
        if m is not None and keep_mode != "ignore":
            m = m[:, None, None, :]
            if keep_mode == "invert":
                m = ~m
            value = fill if fill is not None else torch.finfo(scores.dtype).min
            scores = scores.masked_fill(~m, value)
        if to_float:
            scores = scores.float()
        weights = torch.softmax(scores, dim=-1)
        if m is not None and keep_mode != "ignore":
            weights = weights.masked_fill(~m, 0.0)
        heads = weights.to(values.dtype) @ values
        merged = rearrange(heads, merge)
        if to_float:
            merged = merged.float()
        out = attn.out_proj(merged.to(attn.out_proj.weight.dtype)) if out_proj else merged
        if to_float:
            out = out.float()
        if detach:
            out = out.detach()
        if update == "past":
            k_all, v_all = past_k, past_v
        elif update == "new":
            k_all, v_all = k, v
        if swap_return:
            return out, v_all, k_all
        return out, k_all, v_all

    return step


BUGGY_STEPS = {
    "not updated": (make_step(update="past"), "the cache is not updated"),
    "only the new key returned": (make_step(update="new"), "hold the new position only"),
    "positions not offset": (make_step(offset=False), "positions not offset"),
    "cached keys rotated again": (make_step(rotate_past=True), "rotated a second time"),
    "past ignored": (make_step(use_past=False), "the cached keys and values are not used"),
    "new key not attended": (make_step(use_new=False), "the new key is not attended to"),
    "is_causal": (make_step(first_only=True), "is_causal=True"),
    "heads mixed": (make_step(split="b t (d h) -> b h t d", merge="b h t d -> b t (d h)"),
                    "heads are mixed up"),
    "keep ignored": (make_step(keep_mode="ignore"), "keep mask is ignored"),
    "keep inverted": (make_step(keep_mode="invert"), "keep mask is inverted"),
    "no scale": (make_step(scale=False), "not divided by sqrt(Dh)"),
    "no out_proj": (make_step(out_proj=False), "out_proj is not applied"),
    "q and k swapped": (make_step(order="kqv"), "query and key blocks of in_proj are swapped"),
    "no bias": (make_step(bias=False), "in_proj bias is missing"),
    "k and v swapped on return": (make_step(swap_return=True), "keys and values are swapped"),
    "past_k modified in place": (make_step(in_place="past_k"), "changed its input `past_k`"),
    "-1e9 fill (fp16)": (make_step(fill=-1e9), "raised RuntimeError"),
    "float32 result": (make_step(to_float=True), "it must be torch.float16"),
    "detached": (make_step(detach=True), "does not depend on the inputs through autograd"),
}


@pytest.mark.parametrize("bug", list(BUGGY_STEPS), ids=list(BUGGY_STEPS))
def test_cached_step_bugs_fail_with_their_hint(bug):
    step, hint = BUGGY_STEPS[bug]
    fails_with(checks.cached_self_attention, step, hint)


def test_a_crash_names_the_learners_line():
    def crashing(attn, x, past_k, past_v, position, keep=None):
        return torch.cat([past_k, x], dim=2)               # the wrong tensor to append

    message = fails_with(checks.cached_self_attention, crashing, "raised RuntimeError")
    assert "torch.cat([past_k, x], dim=2)" in message


def test_a_size_dependent_step_is_named():
    right = make_step()

    def fixed(attn, x, past_k, past_v, position, keep=None):
        out, k, v = right(attn, x, past_k, past_v, position, keep)
        return (out * 1.5, k, v) if attn.n_heads == 2 else (out, k, v)

    fails_with(checks.cached_self_attention, fixed, "right for some sizes")


def test_wrong_return_types_are_named():
    fails_with(checks.cached_self_attention,
               lambda *args: make_step()(*args)[0], "a tuple of three tensors")


def explicit_in_float64(attn, x, past_k, past_v, position, keep=None):
    """Right, written differently: einsum, float64 inside, one matrix per head."""
    H, D = attn.n_heads, attn.d_model
    Dh = D // H
    W, b = attn.in_proj.weight.double(), attn.in_proj.bias.double()
    q, k, v = (x.double() @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D] for i in range(3))
    q, k, v = (t.view(x.size(0), 1, H, Dh).transpose(1, 2) for t in (q, k, v))
    if attn.rotary is not None:
        q = attn.rotary.rotate(q, position)
        k = attn.rotary.rotate(k, position)
    k_all = torch.cat([past_k.double(), k], dim=2)
    v_all = torch.cat([past_v.double(), v], dim=2)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k_all) / Dh ** 0.5
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    heads = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v_all)
    merged = heads.transpose(1, 2).reshape(x.size(0), 1, D)
    out = merged @ attn.out_proj.weight.double().T + attn.out_proj.bias.double()
    return out.to(x.dtype), k_all.to(x.dtype), v_all.to(x.dtype)


def with_sdpa(attn, x, past_k, past_v, position, keep=None):
    """Right, with F.scaled_dot_product_attention and a list as the return value."""
    H = attn.n_heads
    q, k, v = attn.in_proj(x).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (H, -1)).transpose(1, 2) for t in (q, k, v))
    if attn.rotary is not None:
        q, k = attn.rotary(q, k, positions=position)
    k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
    mask = None if keep is None else keep[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return [attn.out_proj(out.transpose(1, 2).flatten(2)), k, v]


@pytest.mark.parametrize("implementation", [explicit_in_float64, with_sdpa, make_step()],
                         ids=["float64-einsum", "sdpa-list", "explicit"])
def test_alternative_correct_steps_pass(implementation, capsys):
    checks.cached_self_attention(implementation)
    assert "✅" in capsys.readouterr().out


def test_the_reference_equals_the_full_forward_in_every_variant_free_probe():
    g = torch.Generator().manual_seed(0)
    inputs, expected = C._probe(g, 3, 2, 4, 5, True, True)
    got = cached_self_attention(**inputs)
    assert C._same_triple(got, expected)
    assert C._same_triple(C._variant(**inputs), expected)


# ---- 13.2 length_penalty -----------------------------------------------------------------------

def lp_fairseq(length, alpha):
    if isinstance(length, torch.Tensor) and not length.is_floating_point():
        length = length.float()
    return length ** alpha


def lp_none(length, alpha):
    if isinstance(length, torch.Tensor):
        return torch.ones_like(length, dtype=length.dtype if length.is_floating_point()
                               else torch.float32)
    return 1.0


def lp_no_six(length, alpha):
    if isinstance(length, torch.Tensor) and not length.is_floating_point():
        length = length.float()
    return (5 + length) ** alpha


def lp_inverse(length, alpha):
    if isinstance(length, torch.Tensor) and not length.is_floating_point():
        length = length.float()
    return (6 / (5 + length)) ** alpha


def lp_int_div(length, alpha):
    ratio = (5 + length) // 6
    if isinstance(ratio, torch.Tensor) and not length.is_floating_point():
        ratio = ratio.float()
    return ratio ** alpha * 1.0


def lp_precedence(length, alpha):
    return (5 + length) / 6 ** alpha


def lp_times_alpha(length, alpha):
    return (5 + length) / 6 * alpha


def lp_in_place(length, alpha):
    if isinstance(length, torch.Tensor):
        length += 5
        return (length / 6) ** alpha if length.is_floating_point() else (length / 6) ** alpha
    return ((5 + length) / 6) ** alpha


def lp_float64(length, alpha):
    if isinstance(length, torch.Tensor):
        length = length.double()
    return ((5 + length) / 6) ** alpha


def lp_math_pow(length, alpha):
    return math.pow((5 + length) / 6, alpha)


def lp_int_result(length, alpha):
    out = ((5 + length) / 6) ** alpha
    return out.long() if isinstance(out, torch.Tensor) else int(out)


BUGGY_PENALTIES = {
    "fairseq": (lp_fairseq, "fairseq's normalisation"),
    "no penalty": (lp_none, "the penalty is always 1"),
    "missing /6": (lp_no_six, "division by (5 + 1)**alpha is missing"),
    "inverse": (lp_inverse, "the penalty is inverted"),
    "integer division": (lp_int_div, "integer division"),
    "precedence": (lp_precedence, "operator precedence"),
    "alpha times": (lp_times_alpha, "alpha multiplies the ratio"),
    "in place": (lp_in_place, "changed its input `length`"),
    "float64": (lp_float64, "expected torch.float32"),
    "math.pow on a tensor": (lp_math_pow, "your code raised"),
    "an int": (lp_int_result, "should be a float"),
}


@pytest.mark.parametrize("bug", list(BUGGY_PENALTIES), ids=list(BUGGY_PENALTIES))
def test_length_penalty_bugs_fail_with_their_hint(bug):
    implementation, hint = BUGGY_PENALTIES[bug]
    fails_with(checks.length_penalty, implementation, hint)


def lp_pow_written_out(length, alpha):
    """Right: the two powers, numerator and denominator, and torch.pow."""
    if isinstance(length, torch.Tensor):
        if not length.is_floating_point():
            length = length.to(torch.float32)
        return torch.pow(5 + length, alpha) / 6 ** alpha
    return (5 + length) ** alpha / (5 + 1) ** alpha


def lp_exp_log(length, alpha):
    """Right: exp(alpha · log ratio), numpy floats for ints."""
    import numpy as np

    if isinstance(length, torch.Tensor):
        ratio = (length + 5) / 6
        return torch.exp(alpha * torch.log(ratio.float())).to(ratio.dtype)
    return np.float64(np.exp(alpha * np.log((length + 5) / 6)))


@pytest.mark.parametrize("implementation", [lp_pow_written_out, lp_exp_log],
                         ids=["pow", "exp-log"])
def test_alternative_length_penalties_pass(implementation, capsys):
    checks.length_penalty(implementation)
    assert "✅" in capsys.readouterr().out


def test_variant_counts():
    assert len(BUGGY_STEPS) + 3 >= 20
    assert len(BUGGY_PENALTIES) >= 10
