"""Checkers for chapter 03 (``scratchformer.multihead``): split/merge heads, the forward pass of
multi-head attention, and its parameter count."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange

from scratchformer.checks._common import (
    NAN_FROM_EMPTY_ROW,
    ExerciseWrong,
    _call,
    _generator,
    _passed,
)
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import (
    LOW_PRECISION,
    as_int,
    distinct_ints,
    require_dropout_behaviour,
    require_dtype,
    require_gradients,
    require_unchanged,
    snapshot,
)

__all__ = ["split_and_merge_heads", "multi_head_attention", "mha_parameter_count"]


# --------------------------------------------------------------------------------------------
# A probe is one call of the learner's code; a verdict names a bug only if every probe agrees.
# --------------------------------------------------------------------------------------------


@dataclass
class _Probe:
    """``label`` says what went in; ``expected`` is the right result (a tensor or a tuple of
    tensors, ``None`` for "no weights"); ``bugs`` maps a hint to what that bug would return
    here (a bug missing from ``bugs`` would return ``expected``); ``actual`` is what the
    learner's code returned, or ``error`` what it raised; ``group`` names the code path."""

    label: str
    expected: object
    bugs: dict[str, object] = field(default_factory=dict)
    group: str = ""
    tolerance: float = 1e-5
    actual: object = None
    error: ExerciseWrong | None = None


def _same(actual, expected, tolerance: float = 1e-5, rtol: float | None = None) -> bool:
    """Tensors (or tuples of tensors, or None) equal up to ``tolerance`` relative to the size of
    ``expected`` (and ``rtol``, default ``10 * tolerance``), with the same shape; NaN never
    matches."""
    if isinstance(expected, tuple):
        return (isinstance(actual, (tuple, list)) and len(actual) == len(expected)
                and all(_same(a, e, tolerance, rtol) for a, e in zip(actual, expected)))
    if expected is None or actual is None:
        return expected is None and actual is None
    if not (isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor)):
        return False
    if actual.shape != expected.shape:
        return False
    a, e = actual.detach().double(), expected.detach().double()
    if e.numel() == 0:
        return True
    scale = max(1.0, e.abs().max().item())
    rtol = 10 * tolerance if rtol is None else rtol
    return bool(torch.isfinite(a).all()) and torch.allclose(a, e, atol=tolerance * scale,
                                                              rtol=rtol)


def _difference(actual, expected, what: str) -> str:
    """A few words on how ``actual`` differs from ``expected``."""
    if isinstance(expected, tuple):
        names = ("the output", "the weights")
        for a, e, name in zip(actual, expected, names):
            if not _same(a, e):
                return _difference(a, e, name)
        return f"{what} differs from the reference"
    if not isinstance(actual, torch.Tensor):
        return f"{what} is {type(actual).__name__}, expected a tensor"
    if actual.shape != expected.shape:
        return f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    gap = (actual.detach().double() - expected.double()).abs()
    if not torch.isfinite(gap).all():
        return f"{what} contains NaN or inf"
    return f"{what} differs from the reference by up to {gap.max().item():.3g}"


def _explained_by(probes: list[_Probe], hint: str) -> bool:
    return all(p.error is None and _same(p.actual, p.bugs.get(hint, p.expected), p.tolerance)
               for p in probes)


def _verdict(name: str, probes: list[_Probe], generic: str, what: str = "the result",
             special: Callable[[list[_Probe], list[_Probe]], str | None] | None = None,
             paths: bool = False) -> None:
    """Pass if every probe got its expected result; otherwise raise :class:`ExerciseWrong`
    naming a bug only when exactly one known bug explains every probe (or ``special`` finds
    one), else describing the first failing probe. With ``paths``, the probes' groups are code
    paths: when only one path fails, the bug must explain that path's probes."""
    __tracebackhide__ = True
    failing = [p for p in probes if p.error is not None or not _same(p.actual, p.expected,
                                                                     p.tolerance)]
    if not failing:
        return
    groups = {p.group for p in failing}
    scope = probes
    only = ""
    if paths and len(groups) == 1 and len({p.group for p in probes}) > 1:   # one path wrong
        scope = [p for p in probes if p.group in groups]
        only = f" (only {next(iter(groups))}; the other path is right)"
    hints = {h for p in scope for h in p.bugs}
    explaining = sorted(h for h in hints if _explained_by(scope, h))
    hint = explaining[0] if len(explaining) == 1 else None
    if hint is None and special is not None:
        hint = special(probes, failing)
    first = failing[0]
    if first.error is not None:
        if hint is None:
            raise first.error
        raise ExerciseWrong(f"{str(first.error).rstrip('.')} (for {first.label}). Likely "
                            f"bug{only}: {hint}") from first.error
    detail = _difference(first.actual, first.expected, what)
    text = f"{name}: for {first.label}, {detail.rstrip('.')}."
    if hint:
        raise ExerciseWrong(f"{text} Likely bug{only}: {hint}")
    raise ExerciseWrong(f"{text} {generic}")


def _record(probe: _Probe, call: Callable[[], object]) -> object:
    """Run the learner's code for ``probe``; keep its result, or the error it raised (a stub's
    NotImplementedError propagates as *not attempted*)."""
    try:
        probe.actual = call()
    except ExerciseWrong as error:
        probe.error = error
    return probe.actual


def _distinct_sizes(g: torch.Generator, n: int, low: int, high: int, product_of=(0, 1),
                    even=None) -> list[int]:
    """``n`` different sizes in ``[low, high)`` whose product of the entries at ``product_of``
    differs from all of them too (so that D = H·Dh coincides with no other size); the entry at
    index ``even`` is even."""
    while True:
        sizes = distinct_ints(g, n, low, high)
        product = sizes[product_of[0]] * sizes[product_of[1]]
        if product not in sizes and (even is None or sizes[even] % 2 == 0):
            return sizes


# --------------------------------------------------------------------------------------------
# Exercise 3.1: split_heads / merge_heads
# --------------------------------------------------------------------------------------------

SPLIT_RESHAPE_FIRST = (
    "reshaped straight to (..., H, T, Dh), e.g. x.view(B, H, T, Dh), without moving the head "
    "axis. That cuts the flat memory of (B, T, D) into pieces that mix the features of different "
    "tokens. Reshape to (..., T, H, Dh) first, then swap the two axes in front of Dh, or write "
    "the pattern out with rearrange."
)
SPLIT_NO_TRANSPOSE = (
    "the head axis was not moved in front of the time axis: the result is (..., T, H, Dh). "
    "Each head must be a (T, Dh) block, so the shape is (..., H, T, Dh)."
)
SPLIT_INTERLEAVED = (
    "heads are interleaved: head h got features h, h + H, h + 2H, ... Each head owns a "
    "contiguous block of Dh features, h*Dh ... (h+1)*Dh - 1, as in nn.MultiheadAttention: "
    "in an einops pattern, the group written first, (h d), varies slowest."
)
SPLIT_H_AS_DH = (
    "n_heads was used as the head size: the result has n_heads features per head. There are "
    "n_heads heads of D / n_heads features each."
)
MERGE_NO_TRANSPOSE = (
    "merged without moving the head axis back: reshaping (..., H, T, Dh) straight to "
    "(..., T, D) mixes the heads of different tokens. Put the head axis next to the features "
    "first, then flatten them together."
)
MERGE_INTERLEAVED = (
    "heads are interleaved in the merged features ('t (d h)'). Head h must come back as the "
    "contiguous block h*Dh ... (h+1)*Dh - 1: the group written first, (h d), varies slowest."
)
MERGE_NOT_FLAT = (
    "the heads were moved back but not flattened: the result is (..., T, H, Dh); merge the last "
    "two axes into one of H·Dh features."
)
VIEW_AFTER_TRANSPOSE = (
    ".view() after .transpose(). A transposed tensor is not contiguous in memory, so view "
    "cannot flatten it. Use .reshape(...), .contiguous().view(...), or einops.rearrange."
)
ONE_RANK_ONLY = (
    "it works with one leading (batch) axis but not with {shapes}. The function must keep any "
    "number of leading axes: unpacking `B, T, D = x.shape` or transposing axes 1 and 2 assumes "
    "exactly one. Index axes from the end (transpose(-3, -2), x.shape[:-1]) or start the einops "
    "pattern with '...'."
)
_LEADING = {0: "no leading axis", 1: "one leading axis", 2: "two leading axes"}


def _rank_hint(probes: list[_Probe], failing: list[_Probe]) -> str | None:
    """Every 3-D probe passed and some other rank failed: the code assumes exactly 3 axes."""
    batched = [p for p in probes if p.group == _LEADING[1]]
    others = [p for p in failing if p.group != _LEADING[1]]
    if batched and all(p not in failing for p in batched) and others:
        shapes = sorted({p.group for p in others})
        return ONE_RANK_ONLY.format(shapes=" or ".join(shapes))
    views = [p for p in failing if p.error is not None and "view size is not compatible"
             in str(p.error)]
    if views and len(views) == len(failing):
        return VIEW_AFTER_TRANSPOSE
    return None


def _split_probe(g, split_fn, lead, T, H, Dh, dtype) -> _Probe:
    D = H * Dh
    x = torch.randn(*lead, T, D, generator=g).to(dtype)
    right = rearrange(x, "... t (h d) -> ... h t d", h=H)
    bugs = {
        SPLIT_RESHAPE_FIRST: x.reshape(*lead, H, T, Dh),
        SPLIT_NO_TRANSPOSE: x.reshape(*lead, T, H, Dh),
        SPLIT_INTERLEAVED: rearrange(x, "... t (d h) -> ... h t d", h=H),
        SPLIT_H_AS_DH: rearrange(x, "... t (h d) -> ... h t d", d=H),
    }
    probe = _Probe(f"split_heads(x of shape {tuple(x.shape)}, n_heads={H}), {dtype}", right,
                   bugs, group=_LEADING[len(lead)])
    before = snapshot(x)
    actual = _record(probe, lambda: _call("split_heads", split_fn, x, H))
    require_unchanged("split_heads", ["x"], before, [x])
    if probe.error is None and _same(actual, right, 0):
        require_dtype("split_heads", "the result", actual, dtype)
    return probe


def _merge_probe(g, merge_fn, lead, T, H, Dh, dtype) -> _Probe:
    y = torch.randn(*lead, H, T, Dh, generator=g).to(dtype)
    right = rearrange(y, "... h t d -> ... t (h d)")
    bugs = {
        MERGE_NO_TRANSPOSE: y.reshape(*lead, T, H * Dh),
        MERGE_INTERLEAVED: rearrange(y, "... h t d -> ... t (d h)"),
        MERGE_NOT_FLAT: rearrange(y, "... h t d -> ... t h d"),
    }
    probe = _Probe(f"merge_heads(x of shape {tuple(y.shape)}), {dtype}", right, bugs,
                   group=_LEADING[len(lead)])
    before = snapshot(y)
    actual = _record(probe, lambda: _call("merge_heads", merge_fn, y))
    require_unchanged("merge_heads", ["x"], before, [y])
    if probe.error is None and _same(actual, right, 0):
        require_dtype("merge_heads", "the result", actual, dtype)
    return probe


@exercise("3.1", reference="scratchformer.multihead")
def split_and_merge_heads(split_fn: Callable, merge_fn: Callable) -> None:
    """Check ``split_fn(x (..., T, D), n_heads) -> (..., H, T, Dh)`` and
    ``merge_fn((..., H, T, Dh)) -> (..., T, H·Dh)`` on 2-D, 3-D and 4-D inputs, in float32,
    float16 and bfloat16, with gradients, inputs left unchanged."""
    __tracebackhide__ = True
    g = _generator()
    H, Dh, T, B, N = _distinct_sizes(g, 5, 2, 8)       # every size differs, and D = H·Dh too
    shapes = [((), torch.float32), ((B,), torch.float32), ((N, B), torch.float32),
              ((B,), torch.float16), ((B,), torch.bfloat16)]
    split_probes = [_split_probe(g, split_fn, lead, T, H, Dh, dtype) for lead, dtype in shapes]
    _verdict("split_heads", split_probes, "Head h must hold features h*Dh ... (h+1)*Dh - 1 of "
             "every token, in a tensor of shape (..., H, T, Dh).", special=_rank_hint)
    merge_probes = [_merge_probe(g, merge_fn, lead, T, H, Dh, dtype) for lead, dtype in shapes]
    _verdict("merge_heads", merge_probes, "merge_heads must undo split_heads: head h's Dh "
             "features go back to positions h*Dh ... (h+1)*Dh - 1.", special=_rank_hint)

    x = torch.randn(B, T, H * Dh, generator=g, requires_grad=True)
    heads = _call("split_heads", split_fn, x, H)
    require_gradients("split_heads", heads, {"x": x})
    x.grad = None
    merged = _call("merge_heads", merge_fn, _call("split_heads", split_fn, x, H))
    if not _same(merged, x.detach(), 0):
        raise ExerciseWrong("merge_heads(split_heads(x, n_heads)) must give x back exactly.")
    require_gradients("merge_heads", merged, {"x": x})
    _passed("split_heads / merge_heads", "head h holds features h·Dh … (h+1)·Dh − 1 for 2-D, "
            "3-D and 4-D inputs in every dtype; merge undoes split.")


# --------------------------------------------------------------------------------------------
# Exercise 3.2: MultiHeadAttention.forward
# --------------------------------------------------------------------------------------------

SCALE_BY_D_MODEL = (
    "scores scaled by 1/sqrt(d_model) instead of 1/sqrt(head_dim). Each head's scores are dot "
    "products of head_dim = d_model / n_heads numbers, so the scale is 1/sqrt(head_dim): split "
    "the heads first, then scale by the size of their last axis."
)
NO_SCALE = "the 1/sqrt(head_dim) scaling of the scores is missing."
HEADS_VIEW = (
    "heads split without moving the head axis: viewing (B, T, D) straight as (B, H, T, Dh) "
    "mixes the features of different tokens. Use split_heads (reshape to (B, T, H, Dh), then "
    "swap the head and time axes)."
)
MERGE_BUG = (
    "heads merged without moving the head axis back: (B, H, T, Dh) reshaped straight to "
    "(B, T, D) mixes the heads of different tokens. Use merge_heads."
)
FLAT_HEADS = (
    "heads split by viewing (B, T, D) as (B, H, T, Dh) and merged by the inverse reshape: every "
    "'head' is then a block of the flat memory, not Dh features of every token. Use split_heads "
    "and merge_heads."
)
NO_OUTPUT_PROJECTION = (
    "the output projection W_O is missing. After merging the heads, apply self.out_proj: it is "
    "what mixes the heads' results."
)
NO_INPUT_BIAS = (
    "the biases of the input projections are missing. in_proj holds a bias of 3·D numbers, "
    "the biases of W_Q, W_K and W_V, in that order."
)
VALUES_FROM_KEY = (
    "the values are projected from `key` instead of `value`: in cross-attention the two can "
    "differ. Q comes from query, K from key, V from value."
)
MASK_POLARITY = (
    "mask polarity flipped. In this book True means 'may attend' (the "
    "F.scaled_dot_product_attention convention): use the mask as it is, without ~mask."
)
MASK_IGNORED = "the mask is not applied: keys the mask forbids still get weight."
NO_ROTARY = (
    "self.rotary is set but not applied. When it is not None, rotate the queries and keys of "
    "every head with it, q, k = self.rotary(q, k), after splitting the heads."
)
MASK_NOT_BROADCAST = (
    "the mask is not broadcast over the heads. A 3-D mask (B, T, S) or (B, 1, S) has no head "
    "axis; broadcasting aligns shapes from the right, so its batch axis lands on the head axis of "
    "the (B, H, T, S) scores (an error when B != H, silently the wrong sequence's mask when "
    "B == H). Give it a head axis first, (B, 1, T, S), when mask.dim() == 3."
)
FILL_OVERFLOW = (
    "a fill value such as -1e9 does not fit in float16 (its largest magnitude is 65504). Fill "
    "with torch.finfo(scores.dtype).min, or use the chapter's explicit_attention/fused_attention."
)
_PATHS = {False: "on the explicit path", True: "on the fused path"}


def _mha_reference(params, query, key, value, mask, H: int, *, rotary=None, bug=None):
    """``(out, weights)`` of multi-head attention computed in float64 from ``params`` =
    (in_proj weight, in_proj bias or None, out_proj weight, out_proj bias or None), with one
    known ``bug`` (a hint text) or none."""
    W, b, W_o, b_o = (None if t is None else t.detach().double() for t in params)
    D = W.size(1)
    Dh = D // H
    b_q, b_k, b_v = (None,) * 3 if b is None or bug == NO_INPUT_BIAS else b.chunk(3)
    W_q, W_k, W_v = W.chunk(3)
    q = F.linear(query.double(), W_q, b_q)
    k = F.linear(key.double(), W_k, b_k)
    v = F.linear((key if bug == VALUES_FROM_KEY else value).double(), W_v, b_v)
    if bug in (HEADS_VIEW, FLAT_HEADS):
        q, k, v = (t.reshape(t.size(0), H, t.size(1), Dh) for t in (q, k, v))
    else:
        q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=H) for t in (q, k, v))
    if rotary is not None and bug != NO_ROTARY:
        q, k = rotary(q, k)
    scale = {SCALE_BY_D_MODEL: 1 / math.sqrt(D), NO_SCALE: 1.0}.get(bug, 1 / math.sqrt(Dh))
    scores = q @ k.transpose(-2, -1) * scale
    if mask is not None and bug != MASK_IGNORED:
        keep = mask[:, None] if mask.dim() == 3 else mask
        keep = ~keep if bug == MASK_POLARITY else keep
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).masked_fill(~keep, 0.0)
    else:
        weights = torch.softmax(scores, dim=-1)
    heads = weights @ v
    B, _, T, _ = heads.shape
    if bug in (MERGE_BUG, FLAT_HEADS):
        out = heads.reshape(B, T, D)
    else:
        out = rearrange(heads, "b h t d -> b t (h d)")
    if bug != NO_OUTPUT_PROJECTION:
        out = F.linear(out, W_o, b_o)
    return out, weights


_MHA_BUGS = (SCALE_BY_D_MODEL, NO_SCALE, HEADS_VIEW, MERGE_BUG, FLAT_HEADS, NO_OUTPUT_PROJECTION,
             NO_INPUT_BIAS, VALUES_FROM_KEY, MASK_POLARITY, MASK_IGNORED, NO_ROTARY)


def _keep(g: torch.Generator, *shape: int) -> torch.Tensor:
    """A random keep-mask (True = may attend) with at least one True per row."""
    mask = torch.rand(*shape, generator=g) < 0.6
    index = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return mask.scatter(-1, index.unsqueeze(-1), True)


def _params(module) -> tuple:
    return (module.in_proj.weight, module.in_proj.bias, module.out_proj.weight,
            module.out_proj.bias)


def _mha_call(name: str, module, query, key, value, mask, need_weights: bool, H: int):
    """Call the learner's module; check the structure of the result (a pair, shapes, weights
    None exactly when not asked for), raising at once when it is wrong."""
    __tracebackhide__ = True
    result = _call(name, module, query, key, value, mask=mask, need_weights=need_weights)
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise ExerciseWrong(f"{name}: return a pair (out, weights), got {type(result).__name__}.")
    out, weights = result
    B, T, S, D = query.size(0), query.size(1), key.size(1), query.size(2)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (B, T, D):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ExerciseWrong(f"{name}: out has shape {got}, expected (B, T, D) = {(B, T, D)}.")
    if not need_weights:
        if weights is not None:
            raise ExerciseWrong(
                f"{name}: with need_weights=False the weights must be None (the fused path "
                "computes none); return them only when asked for."
            )
        return out, None
    if weights is None:
        raise ExerciseWrong(
            f"{name}: with need_weights=True the weights (B, H, T, S) must be returned, also "
            "when fused=True: the fused path computes none, so use the explicit path then."
        )
    if isinstance(weights, torch.Tensor) and tuple(weights.shape) == (B, T, S):
        raise ExerciseWrong(
            f"{name}: weights have shape (B, T, S) = {(B, T, S)}. Return the per-head weights, "
            "shape (B, H, T, S), without averaging over the heads."
        )
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (B, H, T, S):
        got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ExerciseWrong(f"{name}: weights have shape {got}, expected (B, H, T, S) = "
                            f"{(B, H, T, S)}.")
    return out, weights


def _mha_probe(name, module, label, group, query, key, value, mask, need_weights, H,
               rotary=None) -> _Probe:
    """One forward pass of the learner's module against the reference and every known bug."""
    params = _params(module)
    keep_weights = need_weights

    def result(bug=None):
        out, weights = _mha_reference(params, query, key, value, mask, H, rotary=rotary, bug=bug)
        return (out, weights) if keep_weights else (out, None)

    expected = result()
    bugs = {bug: result(bug) for bug in _MHA_BUGS}
    probe = _Probe(label, expected, bugs, group=group, tolerance=2e-5)
    with torch.no_grad():
        _record(probe, lambda: _mha_call(name, module, query, key, value, mask, need_weights, H))
    return probe


def _mask_not_broadcast(probes: list[_Probe], failing: list[_Probe]) -> str | None:
    """The learner's code raised exactly on the probes with a 3-D mask."""
    three_d = [p for p in probes if "3-D mask" in p.label]
    raised = [p for p in failing if p.error is not None]
    if raised and set(map(id, failing)) == set(map(id, raised)) and \
            all("3-D mask" in p.label for p in failing) and \
            any(p in failing for p in three_d):
        return MASK_NOT_BROADCAST
    overflow = [p for p in raised if "overflow" in str(p.error)]
    return FILL_OVERFLOW if overflow and len(overflow) == len(failing) else None


def _configuration(g: torch.Generator):
    """B, T, S, H, Dh all different, Dh even (rotary rotates pairs), D = H·Dh different too."""
    H, Dh, B, T, S = _distinct_sizes(g, 5, 2, 8, even=1)
    return B, T, S, H, Dh


def _learner_module(name: str, cls: type, D: int, H: int, reference, **options):
    """``cls(D, H, **options)`` holding ``reference``'s weights, in eval mode."""
    __tracebackhide__ = True
    module = _call(name, cls, D, H, **options)
    try:
        module.load_state_dict(reference.state_dict())
    except Exception as error:
        raise ExerciseWrong(
            f"{name}: could not load the reference weights ({error}). Keep the parameters of the "
            "given __init__: in_proj (nn.Linear(D, 3D)) and out_proj (nn.Linear(D, D))."
        ) from error
    return module.eval()


def _reference_module(g: torch.Generator, D: int, H: int, **options):
    from scratchformer.multihead import MultiHeadAttention as Reference

    reference = Reference(D, H, **options).eval()
    with torch.no_grad():        # random weights and biases, so that every missing piece shows
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(D))
    return reference


def _value_probes(name, g, cls, B, T, S, H, Dh) -> None:
    """Both paths, self- and cross-attention, every mask shape, rotary, bias=False."""
    from scratchformer.positional import RotaryEmbedding

    D = H * Dh
    probes = []
    for bias in (True, False):
        reference = _reference_module(g, D, H, bias=bias)
        module = _learner_module(name, cls, D, H, reference, bias=bias)
        x = torch.randn(B, T, D, generator=g)
        query, key, value = (torch.randn(B, n, D, generator=g) for n in (T, S, S))
        cases = [("self-attention, no mask", (x, x, x), None)]
        if bias:
            cases += [("cross-attention (key != value), no mask", (query, key, value), None)]
            cases += [(f"cross-attention with a {kind} mask {tuple(m.shape)}",
                       (query, key, value), m)
                      for kind, m in (("2-D", _keep(g, T, S)), ("3-D", _keep(g, B, 1, S)),
                                      ("3-D", _keep(g, B, T, S)), ("4-D", _keep(g, B, 1, 1, S)),
                                      ("4-D", _keep(g, B, 1, T, S)), ("4-D", _keep(g, B, H, T, S)))]
            cases += [("rotary self-attention with a 3-D mask (B, 1, T)", (x, x, x),
                       _keep(g, B, 1, T))]
        else:
            cases += [("cross-attention with a 3-D mask (B, 1, S), bias=False",
                       (query, key, value), _keep(g, B, 1, S))]
        runs = [(fused, not fused, label, args, mask) for fused in (False, True)
                for label, args, mask in cases]
        if bias:    # the explicit path also runs for fused=True with weights asked for
            runs += [(True, True, "self-attention with a 4-D mask (B, H, T, T)", (x, x, x),
                      _keep(g, B, H, T, T)),
                     (False, False, "cross-attention with a 3-D mask (B, T, S)",
                      (query, key, value), _keep(g, B, T, S))]
        for fused, need_weights, label, (q, k, v), mask in runs:
            module.fused = fused
            module.rotary = RotaryEmbedding(Dh) if label.startswith("rotary") else None
            where = f"fused={fused}, need_weights={need_weights}, {label}"
            probes.append(_mha_probe(name, module, where, _PATHS[fused and not need_weights],
                                     q, k, v, mask, need_weights, H, module.rotary))
        module.rotary = None
    _verdict(name, probes, "Compare each step with the equation: project with the row blocks of "
             "in_proj (and its biases), split the heads, attend, merge the heads, apply out_proj.",
             special=_mask_not_broadcast, paths=True)


SOFTMAX_OVERFLOW = (
    "the softmax overflows for large scores: exp(s) / sum(exp(s)) gives inf / inf = NaN once a "
    "score passes about 88 in float32. Use torch.softmax (or chapter 02's masked_softmax), which "
    "subtracts each row's maximum first."
)


def _offset_probes(name, g, cls, B, T, S, H, Dh) -> None:
    """Inputs far from 0 (mean 30), so that scores reach the thousands: a softmax written as
    exp(s) / sum(exp(s)) overflows, a stable one does not."""
    D = H * Dh
    reference = _reference_module(g, D, H)
    module = _learner_module(name, cls, D, H, reference)
    query, key = (30 + torch.randn(B, n, D, generator=g) for n in (T, S))
    mask = _keep(g, B, 1, S)
    expected, _ = _mha_reference(_params(module), query, key, key, mask, H)
    for fused in (False, True):
        module.fused = fused
        where = (f"fused={fused}, need_weights={not fused}, inputs of mean 30 (scores in the "
                 "thousands)")
        with torch.no_grad():
            out, _ = _mha_call(name, module, query, key, key, mask, not fused, H)
        if not torch.isfinite(out).all():
            raise ExerciseWrong(f"{name}: for {where}, the output contains NaN or inf. Likely "
                                f"bug: {SOFTMAX_OVERFLOW}")
        if not _same(out, expected, 1e-3, rtol=1e-3):
            raise ExerciseWrong(f"{name}: for {where}, {_difference(out, expected, 'out')}.")


def _dtype_probes(name, g, cls, B, T, S, H, Dh) -> None:
    """float16 and bfloat16, with masks that leave one query with nothing to attend to."""
    D = H * Dh
    reference = _reference_module(g, D, H)
    module = _learner_module(name, cls, D, H, reference)
    mask = _keep(g, B, T, S)
    mask[-1, -1] = False                                   # a query with nothing to attend to
    for dtype in LOW_PRECISION:
        low = copy.deepcopy(module).to(dtype)
        query, key = (torch.randn(B, n, D, generator=g).to(dtype) for n in (T, S))
        expected, _ = _mha_reference(_params(low), query, key, key, mask, H)
        for fused in (False, True):
            low.fused = fused
            with torch.no_grad():
                try:
                    out, weights = _mha_call(name, low, query, key, key, mask, not fused, H)
                except ExerciseWrong as error:
                    if "overflow" in str(error):
                        raise ExerciseWrong(f"{error} Likely bug: {FILL_OVERFLOW}") from error
                    raise
            where = f"fused={fused}, need_weights={not fused}, {dtype} inputs with a (B, T, S) mask"
            require_dtype(name, f"out ({where})", out, dtype)
            require_dtype(name, f"the weights ({where})", weights, dtype)
            if not torch.isfinite(out).all():
                raise ExerciseWrong(f"{name}: for {where}, the output contains NaN or inf. "
                                    f"{NAN_FROM_EMPTY_ROW}")
            tolerance = 2e-2 if dtype == torch.float16 else 8e-2
            if not _same(out, expected, tolerance, rtol=tolerance):
                raise ExerciseWrong(f"{name}: for {where}, {_difference(out, expected, 'out')}.")


def _empty_row_and_gradients(name, g, cls, B, T, S, H, Dh) -> None:
    """Inputs unchanged, gradients through the learner's code, a query with nothing to attend to
    (output out_proj.bias, weights 0, finite gradients), on both paths."""
    D = H * Dh
    reference = _reference_module(g, D, H)
    module = _learner_module(name, cls, D, H, reference)
    mask = _keep(g, B, T, S)
    mask[-1, -1] = False
    for fused in (False, True):
        module.fused = fused
        query, key, value = (torch.randn(B, n, D, generator=g).requires_grad_()
                             for n in (T, S, S))
        before = snapshot(query, key, value, mask)
        out, weights = _mha_call(name, module, query, key, value, mask, not fused, H)
        require_unchanged(name, ["query", "key", "value", "mask"], before,
                          [query, key, value, mask])
        where = f"fused={fused}, need_weights={not fused}, a query with nothing to attend to"
        if not torch.isfinite(out).all():
            raise ExerciseWrong(f"{name}: for {where}, the output contains NaN or inf. "
                                f"{NAN_FROM_EMPTY_ROW}")
        if weights is not None and not torch.equal(weights[-1, :, -1].detach(),
                                                   torch.zeros(H, S)):
            raise ExerciseWrong(f"{name}: for {where}, the weights must be 0. {NAN_FROM_EMPTY_ROW}")
        if not _same(out[-1, -1], module.out_proj.bias):
            raise ExerciseWrong(
                f"{name}: for {where}, the attention output must be 0, so the module's output "
                "there is out_proj's bias."
            )
        require_gradients(name, out, {"query": query, "key": key, "value": value})


def _dropout_probes(name, g, cls, B, T, S, H, Dh) -> None:
    """dropout > 0: deterministic in eval and equal to the reference; stochastic in training,
    with the reference's mean; on both paths."""
    D = H * Dh
    p = 0.3
    reference = _reference_module(g, D, H, dropout=p)
    module = _learner_module(name, cls, D, H, reference, dropout=p)
    query, key = (torch.randn(B, n, D, generator=g) for n in (T, S))
    mask = _keep(g, B, 1, S)
    for fused in (False, True):
        module.fused = reference.fused = fused
        require_dropout_behaviour(f"{name} ({_PATHS[fused][3:]})", module, reference,
                                  lambda m: _call(name, m, query, key, key, mask=mask)[0],
                                  where="on the attention weights, after the softmax")


@exercise("3.2", reference="scratchformer.multihead")
def multi_head_attention(cls: type) -> None:
    """Check ``cls(d_model, n_heads, dropout=0.0, bias=True, fused=True)`` whose
    ``forward(query, key, value, mask=None, need_weights=False)`` must return
    ``(out (B, T, D), weights (B, H, T, S) or None)`` like the chapter's reference, on both paths,
    for every mask shape, in every dtype, with dropout and rotary positions."""
    __tracebackhide__ = True
    name = "MultiHeadAttention.forward"
    g = _generator()
    sizes = _configuration(g)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    _value_probes(name, g, cls, *sizes)
    _offset_probes(name, g, cls, *sizes)
    _dtype_probes(name, g, cls, *sizes)
    _empty_row_and_gradients(name, g, cls, *sizes)
    _dropout_probes(name, g, cls, *sizes)
    _passed(name, "both paths match the reference for self- and cross-attention, every mask "
            "shape, rotary positions, bias=False, float16 and bfloat16, dropout, gradients and a "
            "query with nothing to attend to.")


# --------------------------------------------------------------------------------------------
# Exercise 3.3: mha_parameter_count
# --------------------------------------------------------------------------------------------

_COUNT_BUGS = {
    "forgot the biases: with bias=True each of W_Q, W_K, W_V and W_O has a bias of D numbers.":
        lambda D, H, bias, default: 4 * D * D,
    "counted the biases although bias=False.":
        lambda D, H, bias, default: 4 * D * D + 4 * D,
    "the bias flag is read the wrong way round: biases counted exactly when bias=False.":
        lambda D, H, bias, default: 4 * D * D + (0 if bias else 4 * D),
    "the default must be bias=True (as in nn.MultiheadAttention); yours counts no biases when "
    "bias is not given.":
        lambda D, H, bias, default: 4 * D * D + (4 * D if bias and not default else 0),
    "forgot the output projection W_O (a D×D weight, plus D biases when bias=True).":
        lambda D, H, bias, default: 3 * (D * D + (D if bias else 0)),
    "forgot the output projection's bias: W_O has D biases too when bias=True.":
        lambda D, H, bias, default: 4 * D * D + (3 * D if bias else 0),
    "multiplied by the number of heads. Heads cut the same four D×D matrices into slices of "
    "D/H columns; they add no parameters.":
        lambda D, H, bias, default: H * (4 * D * D + (4 * D if bias else 0)),
    "multiplied the input projections by the number of heads. Each head's W_h^Q is D×(D/H), so "
    "H of them make one D×D matrix.":
        lambda D, H, bias, default: (H * 3 * (D * D + (D if bias else 0))
                                     + D * D + (D if bias else 0)),
    "counted a single head's slices only (D×(D/H) matrices). The H heads together use the whole "
    "D×D matrices.":
        lambda D, H, bias, default: 4 * D * (D // H) + ((3 * (D // H) + D) if bias else 0),
}


@exercise("3.3", reference="scratchformer.multihead")
def mha_parameter_count(fn: Callable) -> None:
    """Check ``fn(d_model, n_heads, bias=True) -> int`` against ``nn.MultiheadAttention``'s
    parameter count, for sizes in which D, H and D/H all differ, with and without biases and
    with the default; NumPy integers and integer 0-d tensors are accepted."""
    __tracebackhide__ = True
    from torch import nn

    name = "mha_parameter_count"
    g = _generator()
    configs = [(512, 8, True, False), (512, 8, False, False)]
    for bias, default in ((True, False), (False, False), (True, True)):
        H, Dh = _distinct_sizes(g, 2, 2, 24)[:2]
        configs.append((H * Dh, H, bias, default))
    results = []
    for D, H, bias, default in configs:
        expected = sum(p.numel() for p in nn.MultiheadAttention(D, H, bias=bias).parameters())
        call = f"{name}({D}, {H})" if default else f"{name}({D}, {H}, bias={bias})"
        value = _call(name, fn, D, H) if default else _call(name, fn, D, H, bias=bias)
        actual = as_int(name, f"the result of {call}", value)
        results.append((D, H, bias, default, call, actual, expected))
    wrong = [r for r in results if r[5] != r[6]]
    if not wrong:
        _passed(name, "equals nn.MultiheadAttention's parameter count, with and without biases, "
                      "for several sizes.")
        return
    explaining = [hint for hint, bug in _COUNT_BUGS.items()
                  if all(bug(D, H, bias, default) == actual
                         for D, H, bias, default, _, actual, _ in results)]
    _, _, _, _, call, actual, expected = wrong[0]
    detail = f"{name}: {call} returned {actual:,}, expected {expected:,}."
    if len(explaining) == 1:
        raise ExerciseWrong(f"{detail} Likely bug: {explaining[0]}")
    raise ExerciseWrong(f"{detail} Count the weights and biases of in_proj and out_proj "
                        "(the module's two linear maps), with biases only when bias=True.")
