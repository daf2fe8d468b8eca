"""Checkers for chapter 01 (``scratchformer.scores``): dot-product and additive scores, pooling."""

# Also the probe machinery the checkers of chapters 01-02 share (private helpers, `_Probe` and
# `_verdict`): every checker runs the learner's code on many probes (input ranks, mask shapes,
# dtypes), and names a bug only when that bug explains the output of every probe.

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from scratchformer.checks._common import (
    NOT_ATTEMPTED,
    ExerciseNotAttempted,
    ExerciseWrong,
    _call,
    _generator,
    _passed,
)
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import (
    LOW_PRECISION,
    distinct_ints,
    require_dtype,
    require_gradients,
    require_unchanged,
    snapshot,
)

__all__ = ["dot_product_score", "attention_pool", "additive_score"]


# --------------------------------------------------------------------------------------------
# Probes shared by the checkers of chapters 01-02
# --------------------------------------------------------------------------------------------

# (atol, rtol) per dtype of the probe; atol is relative to the largest expected magnitude.
_TOLERANCE = {
    torch.float64: (1e-9, 1e-7),
    torch.float32: (2e-5, 2e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


@dataclass
class _Probe:
    """One call of the learner's code: what went in, what should come out, known bugs' outputs.

    ``candidates`` maps a hint (the text after "Likely bug:") to what that bug would return on
    this probe: a tensor or tuple of tensors, a predicate on the learner's output, or ``None``
    when the probe cannot tell that bug apart from a correct answer.
    """

    label: str
    dtype: torch.dtype
    expected: object
    candidates: dict[str, object] = field(default_factory=dict)
    actual: object = None
    exact: bool = True  # False: rounding (huge scores) makes bugs' outputs hard to compare here


def _match(actual, candidate, dtype: torch.dtype) -> bool:
    """Does ``actual`` agree with ``candidate`` (tensor, tuple of tensors or predicate)?"""
    if callable(candidate):
        try:
            return bool(candidate(actual))
        except Exception:  # a predicate that does not apply to this output
            return False
    if isinstance(candidate, tuple):
        return (isinstance(actual, tuple) and len(actual) == len(candidate)
                and all(_match(a, c, dtype) for a, c in zip(actual, candidate)))
    if not (isinstance(actual, torch.Tensor) and isinstance(candidate, torch.Tensor)):
        return False
    if actual.shape != candidate.shape:
        return False
    if actual.dtype == torch.bool or candidate.dtype == torch.bool:
        return actual.dtype == candidate.dtype and torch.equal(actual, candidate)
    a, c = actual.detach().double(), candidate.detach().double()
    if c.numel() == 0:
        return True
    atol, rtol = _TOLERANCE.get(dtype, _TOLERANCE[torch.float32])
    scale = max(1.0, c[torch.isfinite(c)].abs().max().item() if torch.isfinite(c).any() else 1.0)
    return torch.allclose(a, c, atol=atol * scale, rtol=rtol)


def _describe(actual, expected, names: tuple[str, ...], dtype: torch.dtype) -> str:
    """What is wrong with ``actual`` compared with ``expected``, in a few words."""
    if isinstance(expected, tuple):
        for a, e, n in zip(actual, expected, names):
            if not _match(a, e, dtype):
                return _describe(a, e, (n,), dtype)
        return f"{' and '.join(names)} differ from the reference"
    what = names[0]
    if actual is None:
        return f"got None for {what}. Likely bug: a missing `return`"
    if not isinstance(actual, torch.Tensor):
        return f"{what} should be a torch.Tensor, got {type(actual).__name__}"
    if actual.shape != expected.shape:
        return f"the shape of {what} is {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    if actual.dtype == torch.bool or expected.dtype == torch.bool:
        if actual.dtype != expected.dtype:
            return f"the dtype of {what} is {actual.dtype}, expected {expected.dtype}"
        return f"{(actual != expected).sum().item()} entries of {what} differ from the reference"
    if not torch.isfinite(actual).all():
        return f"NaN or inf in {what}"
    error = (actual.detach().double() - expected.detach().double()).abs().max().item()
    return f"the largest difference of {what} from the reference is {error:.3g}"


def _verdict(name: str, probes: list[_Probe], generic: str, names: tuple[str, ...] = ("the output",)) -> None:
    """Pass if every probe's output matches the reference. Otherwise name the first known bug
    that explains every probe, or describe the first failing probe without guessing.

    A bug given as a tensor explains the probes if it applies to every failing float32 probe
    and agrees with the output on every float32 probe where it applies (float16/bfloat16
    rounding, or huge scores, make exact comparison with a bug's output unreliable, so those
    probes neither confirm nor contradict it). A bug given as a predicate (a symptom, such as NaN) must hold
    on every failing probe, whatever its dtype.
    """
    __tracebackhide__ = True
    failing = [p for p in probes if not _match(p.actual, p.expected, p.dtype)]
    if not failing:
        return
    precise = (torch.float32, torch.float64)
    hints = dict.fromkeys(h for p in probes for h in p.candidates)
    for hint in hints:
        judged, explained = [], True
        for p in probes:
            candidate = p.candidates.get(hint)
            symptom = callable(candidate)
            if not symptom and (p.dtype not in precise or not p.exact):
                continue
            if p in failing and candidate is None:
                explained = False
                break
            if candidate is not None and (p in failing or not symptom):
                judged.append((p, candidate))
        if not explained or not any(p in failing for p, _ in judged):
            continue
        if all(_match(p.actual, candidate, p.dtype) for p, candidate in judged):
            raise ExerciseWrong(
                f"{name}: wrong on {len(failing)} of {len(probes)} inputs (first: "
                f"{failing[0].label}). Likely bug: {hint}"
            )
    first = failing[0]
    described = _describe(first.actual, first.expected, names, first.dtype)
    raise ExerciseWrong(f"{name}: for {first.label}, {described}. {generic}")


def _run(name: str, label: str, fn: Callable, *args, hints: dict[str, str] | None = None,
         inputs: tuple[str, ...] = (), **kwargs):
    """Call the learner's ``fn(*args)`` on one probe: the stub is *not attempted*; any exception
    is *wrong*, naming the probe, the exception and the learner's line (plus a targeted hint when
    the exception's text contains a key of ``hints``); an input changed in place is *wrong*."""
    __tracebackhide__ = True
    before = snapshot(*args)
    try:
        result = _call(f"{name} (on {label})", fn, *args, **kwargs)
    except ExerciseNotAttempted:
        raise ExerciseNotAttempted(NOT_ATTEMPTED.format(name=name)) from None
    except ExerciseWrong as error:
        cause = error.__cause__
        for needle, hint in (hints or {}).items():
            if cause is not None and needle in f"{type(cause).__name__}: {cause}":
                raise ExerciseWrong(f"{error} Likely bug: {hint}") from cause
        raise
    if inputs:
        require_unchanged(name, inputs, before, args[: len(inputs)])
    return result


def _pair(name: str, result, what: str = "(out, weights)"):
    """Accept a tuple or list of two tensors; anything else is *wrong* with a clear message."""
    __tracebackhide__ = True
    if isinstance(result, (tuple, list)) and len(result) == 2:
        return tuple(result)
    got = f"a single tensor of shape {tuple(result.shape)}" if isinstance(result, torch.Tensor) \
        else type(result).__name__
    raise ExerciseWrong(f"{name}: return a tuple {what}, got {got}.")


def _require_dtypes(name: str, probes: list[_Probe], names: tuple[str, ...]) -> None:
    """Every output keeps the probe's input dtype (float16 and bfloat16 included)."""
    __tracebackhide__ = True
    for p in probes:
        outputs = p.actual if isinstance(p.actual, tuple) else (p.actual,)
        for what, out in zip(names, outputs):
            require_dtype(name, what, out, p.dtype)


def _seeded(g: torch.Generator, make: Callable):
    """``make()`` under a seed drawn from ``g``, without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        return make()


def _gradients(name: str, out, inputs: dict[str, torch.Tensor], hint: str = "") -> None:
    """Autograd reaches every input with finite values; ``hint`` is added to a NaN failure."""
    __tracebackhide__ = True
    try:
        require_gradients(name, out, inputs)
    except ExerciseWrong as error:
        if hint and "NaN" in str(error):
            raise ExerciseWrong(f"{error} {hint}") from None
        raise


def _shape(x) -> str:
    return str(tuple(x.shape))


def _float64(*tensors):
    return tuple(t.detach().double() for t in tensors)


# --------------------------------------------------------------------------------------------
# Exercise 1.1: dot-product scores
# --------------------------------------------------------------------------------------------


@exercise("1.1", reference="scratchformer.scores")
def dot_product_score(fn: Callable) -> None:
    """Check ``fn(q, k) -> scores`` with ``q (..., T, d)``, ``k (..., S, d)``, scores ``(..., T, S)``.

    Probes: 2-D, 3-D and 4-D inputs, leading axes that broadcast, float16 and bfloat16 (the
    scores keep the input's dtype), inputs unchanged, gradients reaching q and k.
    """
    __tracebackhide__ = True
    from scratchformer.scores import dot_product_score as reference

    name = "dot_product_score"
    g = _generator()
    B, H, T, S, d = distinct_ints(g, 5, 2, 10)
    shapes = [((T, d), (S, d)), ((B, T, d), (B, S, d)), ((B, H, T, d), (B, H, S, d)),
              ((B, H, T, d), (1, H, S, d)), ((B, 1, T, d), (H, S, d))]
    plan = [(sq, sk, torch.float32) for sq, sk in shapes]
    plan += [(shapes[1][0], shapes[1][1], dtype) for dtype in LOW_PRECISION]
    plan += [(shapes[2][0], shapes[2][1], dtype) for dtype in LOW_PRECISION]
    probes = []
    for shape_q, shape_k, dtype in plan:
        q = torch.randn(shape_q, generator=g).to(dtype)
        k = torch.randn(shape_k, generator=g).to(dtype)
        label = f"q {shape_q} and k {shape_k} in {dtype}"
        q64, k64 = _float64(q, k)
        probe = _Probe(label, dtype, reference(q, k), {
            "you computed k @ q.T, scores of shape (..., S, T). Row i must hold query i's "
            "scores against every key: q @ kᵀ, shape (..., T, S).": k64 @ q64.transpose(-2, -1),
            "you divided by sqrt(d). Plain dot-product scores are unscaled; the scaling comes "
            "in chapter 02.": q64 @ k64.transpose(-2, -1) / math.sqrt(d),
        })
        probes.append(probe)
        try:
            probe.actual = _run(name, label, fn, q, k, inputs=("q", "k"))
        except ExerciseWrong as error:
            passed = [p for p in probes[:-1] if p.dtype == torch.float32
                      and _match(p.actual, p.expected, p.dtype)]
            if dtype == torch.float32 and passed:
                raise ExerciseWrong(
                    f"{error} Likely bug: your code assumes a fixed number of axes (it worked "
                    f"for {passed[0].label}). Transpose the last two axes of k, whatever comes "
                    "before them: k.transpose(-2, -1) (k.T reverses every axis)."
                ) from error.__cause__
            raise
    _verdict(name, probes,
             "Entry [..., i, j] must be the dot product of query i and key j, with the leading "
             "axes broadcast. Transpose only the last two axes of k.", ("the scores",))
    _require_dtypes(name, probes, ("the scores",))
    q = torch.randn(B, T, d, generator=g, requires_grad=True)
    k = torch.randn(B, S, d, generator=g, requires_grad=True)
    _gradients(name, _run(name, "inputs that require gradients", fn, q, k), {"q": q, "k": k})
    _passed(name, f"matches q @ kᵀ on {len(probes)} inputs: 2-D to 4-D, broadcast batch/head "
                  "axes, float32/float16/bfloat16; inputs unchanged, gradients flow.")


# --------------------------------------------------------------------------------------------
# Exercise 1.3: attention pooling
# --------------------------------------------------------------------------------------------


@exercise("1.3", reference="scratchformer.scores")
def attention_pool(fn: Callable) -> None:
    """Check ``fn(scores, values) -> (out, weights)``: scores ``(..., T, S)``, values
    ``(..., S, d_v)``, weights ``(..., T, S)`` (a softmax over the keys), out ``(..., T, d_v)``.

    Probes: 2-D, 3-D and 4-D inputs, scores with mean 1000 (a softmax written as exp/sum
    overflows), float16 and bfloat16, inputs unchanged, gradients reaching scores and values.
    """
    __tracebackhide__ = True
    from scratchformer.scores import attention_pool as reference

    name = "attention_pool"
    g = _generator()
    B, H, T, S, Dv = distinct_ints(g, 5, 2, 10)
    plan = [((), 0.0, torch.float32), ((B,), 0.0, torch.float32), ((B, H), 0.0, torch.float32),
            ((B,), 1000.0, torch.float32)]
    plan += [((B,), 0.0, dtype) for dtype in LOW_PRECISION]
    probes = []
    for lead, offset, dtype in plan:
        scores = (offset + 3 * torch.randn(*lead, T, S, generator=g)).to(dtype)
        values = torch.randn(*lead, S, Dv, generator=g).to(dtype)
        label = (f"scores {_shape(scores)} and values {_shape(values)} in {dtype}"
                 + (f", scores around {offset:g}" if offset else ""))
        s64, v64 = _float64(scores, values)
        w = torch.softmax(s64, dim=-1)
        expected = reference(scores, values)
        candidates = {
            "softmax over the wrong axis. Each query's weights over the keys must sum to 1: use "
            "dim=-1 (the key axis S), counted from the end so extra leading axes do not move "
            "it.": (torch.softmax(s64, dim=-2) @ v64, torch.softmax(s64, dim=-2)),
            "softmax over a fixed axis (dim=1) instead of the key axis. Use dim=-1: with a "
            "batch or head axis in front, dim=1 is no longer the keys.":
                (torch.softmax(s64, dim=1) @ v64, torch.softmax(s64, dim=1)),
            "you returned the raw scores as weights. The weights are softmax(scores) over the "
            "key axis.": (s64 @ v64, s64),
            "you summed the values with the raw scores instead of the weights.": (s64 @ v64, w),
            "you returned (weights, out); return (out, weights).": (w, w @ v64),
            "exp overflows for large scores (e^1000 is inf in every float type, e^12 already in "
            "float16), and inf/inf is NaN. Subtract each row's maximum before exp "
            "(torch.softmax does this for you).": lambda a: not torch.isfinite(a[1]).all(),
        }
        probe = _Probe(label, dtype, expected, candidates, exact=not offset)
        probes.append(probe)
        probe.actual = _pair(name, _run(name, label, fn, scores, values, inputs=("scores", "values")))
    _verdict(name, probes,
             "weights = softmax(scores) along the key axis (the last); out = weights @ values.",
             ("out", "weights"))
    _require_dtypes(name, probes, ("out", "weights"))
    scores = torch.randn(B, T, S, generator=g, requires_grad=True)
    values = torch.randn(B, S, Dv, generator=g, requires_grad=True)
    out, _ = _pair(name, _run(name, "inputs that require gradients", fn, scores, values))
    _gradients(name, out, {"scores": scores, "values": values})
    _passed(name, f"weights are a softmax over keys and out = weights @ values on {len(probes)} "
                  "inputs: 2-D to 4-D, scores around 1000, float32/float16/bfloat16.")


# --------------------------------------------------------------------------------------------
# Exercise 1.2: additive scores
# --------------------------------------------------------------------------------------------


def _additive(q, k, Wq, Wk, wv, *, tanh=True, tanh_after=False, reduce="w_v"):
    """Additive scores and their known bugs, in float64, rows as vectors: ``tanh(q W_q + k W_k) w_v``
    with nn.Linear weights (``W_q = Wq.T``)."""
    pairs = (q @ Wq.T).unsqueeze(-2) + (k @ Wk.T).unsqueeze(-3)  # (..., T, S, h)
    hidden = torch.tanh(pairs) if tanh and not tanh_after else pairs
    if reduce == "sum":
        return hidden.sum(-1)
    scores = (hidden @ wv.T).squeeze(-1)
    return torch.tanh(scores) if tanh_after else scores


@exercise("1.2", reference="scratchformer.scores")
def additive_score(cls: type) -> None:
    """Check a class ``cls(d_q, d_k, d_hidden)`` whose ``forward(q, k)`` gives additive scores.

    The class keeps its three bias-free linear maps as ``W_q``, ``W_k`` and ``w_v`` (created in
    the given ``__init__``). Probes: sizes d_q, d_k, h, T, S all different; 2-D, 3-D and 4-D
    inputs; float16 and bfloat16; inputs unchanged; gradients reaching q, k and the weights.
    """
    __tracebackhide__ = True
    from scratchformer.scores import AdditiveScore as Reference

    name = "AdditiveScore"
    g = _generator()
    B, H, T, S, d_q, d_k, d_h = distinct_ints(g, 7, 2, 12)
    modules = {}

    def build(dq: int, dk: int, dtype: torch.dtype):
        __tracebackhide__ = True
        if (dq, dk, dtype) not in modules:
            module = _seeded(g, lambda: _call(name, cls, dq, dk, d_h))
            for attr in ("W_q", "W_k", "w_v"):
                if not isinstance(getattr(module, attr, None), torch.nn.Linear):
                    raise ExerciseWrong(
                        f"{name}: keep the linear maps as the attributes W_q, W_k and w_v created "
                        f"in __init__; {attr} is missing or not an nn.Linear."
                    )
            reference = _seeded(g, lambda: Reference(dq, dk, d_h))
            reference.load_state_dict(module.state_dict())
            modules[dq, dk, dtype] = (module.to(dtype).eval(), reference.to(dtype).eval())
        return modules[dq, dk, dtype]

    def probes_for(dq: int, dk: int, plan) -> list[_Probe]:
        __tracebackhide__ = True
        probes = []
        for lead, dtype in plan:
            module, reference = build(dq, dk, dtype)
            q = torch.randn(*lead, T, dq, generator=g).to(dtype)
            k = torch.randn(*lead, S, dk, generator=g).to(dtype)
            label = f"q {_shape(q)} and k {_shape(k)} in {dtype}"
            W = _float64(module.W_q.weight, module.W_k.weight, module.w_v.weight)
            q64, k64 = _float64(q, k)
            with torch.no_grad():
                expected = reference(q, k)
                right = _additive(q64, k64, *W)
                candidates = {
                    "tanh is missing: without it the score is linear in q and k and cannot "
                    "express any interaction between them.": _additive(q64, k64, *W, tanh=False),
                    "tanh applied after w_v: apply tanh to the hidden features (q W_q + k W_k), "
                    "then w_v.": _additive(q64, k64, *W, tanh_after=True),
                    "the hidden features are summed instead of weighted by w_v: finish with "
                    "self.w_v(...).": _additive(q64, k64, *W, reduce="sum"),
                    "the query and key axes are swapped: the scores have shape (..., S, T). "
                    "Broadcast q W_q as (..., T, 1, h) and k W_k as (..., 1, S, h).":
                        right.transpose(-2, -1),
                    "the last axis of size 1 (w_v's output) is not squeezed: the scores must be "
                    "(..., T, S), not (..., T, S, 1).": right.unsqueeze(-1),
                    "W_q is applied to the keys and W_k to the queries; each has its own "
                    "projection.": _additive(q64, k64, W[1], W[0], W[2]) if dq == dk else None,
                }
            probe = _Probe(label, dtype, expected, candidates)
            probes.append(probe)
            with torch.no_grad():
                probe.actual = _run(name, label, module, q, k, inputs=("q", "k"))
        return probes

    plan = [((), torch.float32), ((B,), torch.float32), ((B, H), torch.float32)]
    plan += [((B,), dtype) for dtype in LOW_PRECISION]
    try:
        probes = probes_for(d_q, d_k, plan)
    except ExerciseWrong as crash:
        # d_q != d_k: swapped projections crash here. With d_q == d_k they run: if they then
        # match the swap on every probe, say so.
        try:
            square = probes_for(d_q, d_q, plan[:3])
        except (ExerciseWrong, ExerciseNotAttempted):
            raise crash from None
        swap = next(h for h in square[0].candidates if h.startswith("W_q is applied"))
        if all(_match(p.actual, p.candidates[swap], p.dtype) for p in square):
            raise ExerciseWrong(f"{crash} Likely bug: {swap}") from None
        raise
    _verdict(name, probes,
             "score[..., i, j] = tanh(q_i W_q + k_j W_k) w_v: broadcast q W_q to (..., T, 1, h) "
             "and k W_k to (..., 1, S, h), add, tanh, then w_v and squeeze the last axis.",
             ("the scores",))
    _require_dtypes(name, probes, ("the scores",))
    module, _ = build(d_q, d_k, torch.float32)
    q = torch.randn(B, T, d_q, generator=g, requires_grad=True)
    k = torch.randn(B, S, d_k, generator=g, requires_grad=True)
    module.zero_grad()
    out = _run(name, "inputs that require gradients", module, q, k)
    _gradients(name, out, {"q": q, "k": k})
    for attr in ("W_q", "W_k", "w_v"):
        if getattr(module, attr).weight.grad is None:
            raise ExerciseWrong(f"{name}: no gradient reaches {attr}: the scores ignore it.")
    _passed(name, f"equals tanh(q W_q + k W_k) w_v pair by pair on {len(probes)} inputs: 2-D "
                  "to 4-D, d_q ≠ d_k, float32/float16/bfloat16; gradients flow.")
