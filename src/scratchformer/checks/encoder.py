"""Checkers for chapter 06 (``scratchformer.encoder``): layer normalisation, the position-wise
feed-forward network and the encoder layer's forward pass (both LayerNorm placements)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from scratchformer.checks._common import (
    ExerciseWrong,
    _call,
    _generator,
    _passed,
    _randn,
)
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import (
    LOW_PRECISION,
    distinct_ints,
    mask_variants,
    require_dropout_behaviour,
    require_dtype,
    require_gradients,
    require_unchanged,
    snapshot,
)

__all__ = ["layer_norm", "feed_forward", "encoder_layer"]


def _reference():
    return importlib.import_module("scratchformer.encoder")


# --------------------------------------------------------------------------------------------
# A hint only when every probe agrees
# --------------------------------------------------------------------------------------------

@dataclass
class _Probe:
    """One call of the learner's code: what it returned, what the reference returns, and what
    each known bug would return on the same input. A bug that does not show on this input
    (e.g. "gelu ignored" on a relu probe) is simply left out: it then predicts ``expected``."""

    what: str
    actual: torch.Tensor
    expected: torch.Tensor
    candidates: dict[str, torch.Tensor] = field(default_factory=dict)
    atol: float = 1e-5
    rtol: float = 1e-4


def _match(a, b, atol: float, rtol: float) -> bool:
    """Same shape and close, NaN matching NaN (a bug's NaN is evidence too)."""
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol, equal_nan=True))


def _agreeing_bug(probes: list[_Probe]) -> str | None:
    """The first known bug that predicts the learner's output on every probe, or None."""
    hints = list(dict.fromkeys(h for p in probes for h in p.candidates))
    for hint in hints:
        if all(_match(p.actual, p.candidates.get(hint, p.expected), p.atol, p.rtol)
               for p in probes):
            return hint
    return None


def _judge(name: str, probes: list[_Probe], generic_hint: str) -> None:
    """Pass if every probe equals its reference (and is finite). Otherwise name the bug that
    explains *all* probes; if none does, say which probe differs and by how much."""
    __tracebackhide__ = True
    failing = [p for p in probes
               if not (torch.isfinite(p.actual).all() and _match(p.actual, p.expected, p.atol, p.rtol))]
    if not failing:
        return
    first = failing[0]
    bug = _agreeing_bug(probes)
    if bug is not None:
        raise ExerciseWrong(f"{name}: {first.what} is wrong. Likely bug: {bug}")
    if not torch.isfinite(first.actual).all():
        raise ExerciseWrong(f"{name}: {first.what} contains NaN or inf. {generic_hint}")
    error = (first.actual.float() - first.expected.float()).abs().max().item()
    raise ExerciseWrong(f"{name}: {first.what} differs from the reference (largest difference "
                        f"{error:.3g}). {generic_hint}")


def _require_output(name: str, what: str, out, shape, dtype=None) -> None:
    __tracebackhide__ = True
    if not isinstance(out, torch.Tensor):
        raise ExerciseWrong(f"{name}: {what} should be a torch.Tensor, got {type(out).__name__}.")
    if tuple(out.shape) != tuple(shape):
        raise ExerciseWrong(f"{name}: {what} has shape {tuple(out.shape)}, expected {tuple(shape)}.")
    if dtype is not None:
        require_dtype(name, what, out, dtype)


def _seeded(seed: int, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the global RNG seeded (dropout masks), leaving the caller's
    RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def _require_dropout(name: str, learner, reference, run: Callable, samples: int = 200) -> None:
    """Dropout with p > 0: off and equal to the reference in eval mode, stochastic in training,
    with the reference's expectation (``require_dropout_behaviour``)."""
    __tracebackhide__ = True
    with torch.random.fork_rng(devices=[]):
        require_dropout_behaviour(name, learner, reference, run, samples=samples)


# --------------------------------------------------------------------------------------------
# Exercise 6.1: layer_norm(x, weight, bias, eps)
# --------------------------------------------------------------------------------------------

LN_OVER_BATCH = (
    "statistics over the batch axis (dim=0) instead of the features. That is batch "
    "normalisation: each token's output would depend on the other sequences of the batch. "
    "LayerNorm takes the mean and variance over the last axis of each vector (dim=-1)."
)
LN_OVER_SEQUENCE = (
    "statistics over the sequence axis (dim=-2) instead of the features: each token's output "
    "would depend on the other tokens and on the padding. Use dim=-1, the D features of one "
    "token, with keepdim=True."
)
LN_OVER_TWO_AXES = (
    "statistics over the last two axes (sequence and features) together. LayerNorm normalises "
    "each token on its own: mean and variance over dim=-1 only."
)
LN_UNBIASED = (
    "the unbiased variance (divided by D - 1). LayerNorm, like nn.LayerNorm, uses the biased "
    "variance, divided by D. torch.var and Tensor.var default to the unbiased one "
    "(pass unbiased=False, or correction=0)."
)
LN_EPS_OUTSIDE = (
    "eps outside the square root, (x - mean) / (sqrt(var) + eps). It belongs inside: "
    "(x - mean) / sqrt(var + eps). The two differ when the variance is small."
)
LN_NO_EPS = (
    "eps is missing: (x - mean) / sqrt(var) divides by zero for a constant vector (a padding "
    "token, say). Add it inside the square root: sqrt(var + eps)."
)
LN_STD_NOT_SQRT = "divided by the variance instead of the standard deviation, sqrt(var + eps)."
LN_NO_AFFINE = (
    "the learnable weight and bias are not applied. After normalising, scale by weight "
    "(gamma) and shift by bias (beta), one number per feature."
)
LN_NO_WEIGHT = "the learnable weight (gamma) is not applied: multiply the normalised x by it."
LN_NO_BIAS = "the learnable bias (beta) is not applied: add it after scaling."
LN_SWAPPED = "weight and bias swapped: scale by weight, then add bias."
LN_EPS_IGNORED = ("the eps argument is ignored (a hard-coded eps?). Use the eps passed in, "
                  "inside the square root.")
LN_NO_KEEPDIM = (
    "the mean or the variance lost its last axis, so it does not broadcast against x. Keep it "
    "with keepdim=True: x.mean(dim=-1, keepdim=True) has shape (..., 1)."
)
LN_FIXED_AXIS = (
    "the code works for 3-D inputs but not for this one: it assumes a fixed number of axes "
    "(e.g. dim=2, or `B, T, D = x.shape`). LayerNorm acts on the last axis of an input of any "
    "shape (..., D): use dim=-1."
)
LN_UNSTABLE = (
    "the variance is computed as E[x²] − E[x]², which cancels catastrophically for vectors "
    "far from 0: at mean 1000, E[x²] ≈ 10⁶ and float32 keeps only about 7 digits, so the "
    "variance (about 1) is lost in rounding (your code is right in float64, wrong in float32). "
    "Subtract the mean first and average the squared deviations."
)


def _normalise(x, dims, *, unbiased=False, eps=1e-5, eps_inside=True, power=0.5):
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=unbiased, keepdim=True)
    if not eps_inside:
        return (x - mean) / (var.sqrt() + eps)
    return (x - mean) / (var + eps) ** power


def _layer_norm_candidates(x, weight, bias, eps) -> dict[str, torch.Tensor]:
    def affine(n):
        return n * weight + bias

    normalised = _normalise(x, -1, eps=eps)
    found = {
        LN_UNBIASED: affine(_normalise(x, -1, unbiased=True, eps=eps)),
        LN_EPS_OUTSIDE: affine(_normalise(x, -1, eps=eps, eps_inside=False)),
        LN_NO_EPS: affine(_normalise(x, -1, eps=0.0)),
        LN_STD_NOT_SQRT: affine(_normalise(x, -1, eps=eps, power=1.0)),
        LN_NO_AFFINE: normalised,
        LN_NO_WEIGHT: normalised + bias,
        LN_NO_BIAS: normalised * weight,
        LN_SWAPPED: normalised * bias + weight,
        LN_EPS_IGNORED: affine(_normalise(x, -1, eps=1e-5)),
    }
    # E[x²] − E[x]² in float32 is already off by ~1e-5 on some ordinary inputs, where the
    # probes above can catch it before the mean-1000 probe: name it there too.
    mean = x.mean(dim=-1, keepdim=True)
    cancelling = (x ** 2).mean(dim=-1, keepdim=True) - mean ** 2
    found[LN_UNSTABLE] = affine((x - mean) / torch.sqrt(cancelling + eps))
    if x.dim() >= 2:
        found[LN_OVER_BATCH] = affine(_normalise(x, 0, eps=eps))
        found[LN_OVER_SEQUENCE] = affine(_normalise(x, -2, eps=eps))
        found[LN_OVER_TWO_AXES] = affine(_normalise(x, (-2, -1), eps=eps))
    return found


def _call_layer_norm(name: str, fn: Callable, x, weight, bias, eps, shape_ok: bool = False,
                     clone: bool = True):
    """Call the learner's ``layer_norm`` on copies (so an in-place edit cannot hide), with
    targeted hints for a lost keepdim (a broadcasting error) and, once a 3-D input has worked,
    for a fixed number of axes."""
    __tracebackhide__ = True
    try:
        if clone:
            x, weight, bias = x.clone(), weight.clone(), bias.clone()
        return _call(name, fn, x, weight, bias, eps)
    except ExerciseWrong as error:
        cause = error.__cause__
        text = str(error)
        if shape_ok and x.dim() != 3:
            raise ExerciseWrong(f"{text} Likely bug: {LN_FIXED_AXIS}") from cause
        if "must match the size" in text or "broadcast" in text:
            raise ExerciseWrong(f"{text} Likely bug: {LN_NO_KEEPDIM}") from cause
        raise


@exercise("6.1", reference="scratchformer.encoder")
def layer_norm(fn: Callable) -> None:
    """Check ``fn(x (..., D), weight (D,), bias (D,), eps) -> (..., D)`` against ``F.layer_norm``:
    every rank from 1-D to 4-D, tiny variances, the eps argument, constant vectors, inputs of
    mean 1000, float16/bfloat16 (output dtype), inputs left unchanged, autograd."""
    __tracebackhide__ = True
    name = "layer_norm"
    g = _generator()
    B, T, D = distinct_ints(g, 3, 3, 10)
    weight, bias = 1 + 0.5 * _randn(g, D), _randn(g, D)

    generic = ("Normalise each vector over its last axis with its own mean and biased "
               "variance, eps inside the square root, then weight and bias.")

    def probe(what, x, eps=1e-5):
        try:
            actual = _call_layer_norm(name, fn, x, weight, bias, eps, shape_ok=True)
        except ExerciseWrong:
            _judge(name, probes, generic)     # wrong already on 3-D inputs: say that first
            raise
        _require_output(name, what, actual, x.shape)
        return _Probe(what, actual, F.layer_norm(x, (D,), weight, bias, eps),
                      _layer_norm_candidates(x, weight, bias, eps))

    # 1. an ordinary 3-D input; the input must come back unchanged
    x = 2 * _randn(g, B, T, D) + 0.5
    before = snapshot(x, weight, bias)
    actual = _call_layer_norm(name, fn, x, weight, bias, 1e-5, clone=False)
    require_unchanged(name, ("x", "weight", "bias"), before, (x, weight, bias))
    _require_output(name, f"the output for x of shape {(B, T, D)}", actual, x.shape)
    probes = [_Probe(f"the output for x of shape {(B, T, D)}", actual,
                     F.layer_norm(x, (D,), weight, bias, 1e-5),
                     _layer_norm_candidates(x, weight, bias, 1e-5))]
    # 2. tiny variance (where eps sits shows), 3. eps=0.5 (the argument is used)
    probes.append(probe("the output for inputs of tiny variance (about 1e-6)",
                        1e-3 * _randn(g, B, T, D)))
    probes.append(probe("the output for eps=0.5", 2 * _randn(g, B, T, D), eps=0.5))
    # 4. constant vectors (a zero padding vector): no NaN, the output is the bias
    constant = torch.zeros(2, D)
    constant[1] = 3.0
    probes.append(probe(f"the output for constant vectors, shape (2, {D})", constant))
    # 5. every rank the docstring allows: (D,), (N, D), (B, T, D), (A, B, T, D)
    for shape in [(D,), (T + 1, D), (2, B, T, D)]:
        probes.append(probe(f"the output for x of shape {shape}", _randn(g, *shape) + 1))
    _judge(name, probes, generic)
    # 6. numerical stability: vectors of mean 1000 and variance exactly 1, 32 wide.
    # Standardised noise: a short vector of raw noise can have a tiny variance, and then
    # even a stable float32 layer norm misses float64 (once in ~300 checks at D <= 10).
    # At width 32 the unstable formula fails every time (0 of 20,000 seeds passed) and
    # the stable one stays within 4.2e-4 of float64, 5x inside the tolerance.
    wide = 32
    w_far, b_far = 1 + 0.5 * _randn(g, wide), _randn(g, wide)
    noise = _randn(g, B, T, wide)
    noise = (noise - noise.mean(-1, keepdim=True)) / noise.std(-1, unbiased=False, keepdim=True)
    far = 1000 + noise
    actual = _call_layer_norm(name, fn, far, w_far, b_far, 1e-5, shape_ok=True)
    expected = F.layer_norm(far.double(), (wide,), w_far.double(), b_far.double(), 1e-5)
    if not _match(actual, expected.float(), 2e-3, 1e-3):
        in_float64 = _call(name, fn, far.double(), w_far.double(), b_far.double(), 1e-5)
        if _match(in_float64, expected, 1e-6, 1e-6):
            raise ExerciseWrong(f"{name}: the output for inputs of mean 1000 is wrong. "
                                f"Likely bug: {LN_UNSTABLE}")
        raise ExerciseWrong(f"{name}: the output for inputs of mean 1000 differs from the "
                            "reference. Subtract the mean before squaring.")
    # 7. autograd flows through the learner's code to x, weight and bias
    inputs = {k: t.clone().requires_grad_(True) for k, t in
              (("x", _randn(g, B, T, D)), ("weight", weight), ("bias", bias))}
    out = _call(name, fn, inputs["x"], inputs["weight"], inputs["bias"], 1e-5)
    require_gradients(name, out, inputs)
    # 8. float16 and bfloat16: the output keeps the input's dtype. Standardised vectors (a
    # short raw vector can have a variance bfloat16 cannot resolve), judged against float32
    # arithmetic with the package's own layer_norm in the same dtype as the yardstick: in
    # bfloat16 it is up to ~0.05 off, and a fixed tolerance failed it in 2 of 1,500 checks.
    from scratchformer.encoder import layer_norm as package_layer_norm
    for dtype in LOW_PRECISION:
        noise = _randn(g, B, T, D)
        noise = (noise - noise.mean(-1, keepdim=True)) / noise.std(-1, unbiased=False, keepdim=True)
        low, w, b = (2 * noise + 1).to(dtype), weight.to(dtype), bias.to(dtype)
        actual = _call(name, fn, low, w, b, 1e-5)
        _require_output(name, "the output", actual, low.shape, dtype)
        expected = F.layer_norm(low.float(), (D,), w.float(), b.float(), 1e-5)
        rounding = (package_layer_norm(low, w, b, 1e-5).float() - expected).abs().max().item()
        error = (actual.float() - expected).abs().max().item()
        if not torch.isfinite(actual).all() or error > max(6e-2, 3 * rounding):
            raise ExerciseWrong(f"{name}: the output for {dtype} input differs from float32 "
                                f"arithmetic by {error:.3g}, more than 3 times the rounding error "
                                f"of a plain {dtype} layer norm ({rounding:.3g}).")
    _passed(name, "equals F.layer_norm for 1-D to 4-D inputs, tiny variances, constant "
                  "vectors, mean 1000, float16/bfloat16; inputs unchanged, gradients flow.")


# --------------------------------------------------------------------------------------------
# Exercise 6.2: FeedForward.forward
# --------------------------------------------------------------------------------------------

FF_ALWAYS_RELU = ("activation='gelu' is ignored: the code always uses ReLU. Pick the function "
                  "named by self.activation ('relu' -> F.relu, 'gelu' -> F.gelu).")
FF_ALWAYS_GELU = ("activation='relu' is ignored: the code always uses GELU. Pick the function "
                  "named by self.activation ('relu' -> F.relu, 'gelu' -> F.gelu).")
FF_GELU_TANH = ("the tanh approximation of GELU. The module uses the exact, erf-based GELU, "
                "F.gelu(h) (approximate='none'), as nn.TransformerEncoderLayer does.")
FF_NO_ACTIVATION = ("no activation between the two linear layers: without it the network is "
                    "one linear map. FFN(x) = linear2(activation(linear1(x))).")
FF_ACTIVATION_AFTER = ("the activation is applied after linear2 (to the output). It goes "
                       "between the two layers: linear2(activation(linear1(x))).")
FF_ACTIVATION_TWICE = ("the activation is applied twice, also to the output. It goes only "
                       "between the two layers: linear2(activation(linear1(x))).")
FF_NO_BIAS = ("the biases b_1 and b_2 are missing (x @ W without + b). Use the layers "
              "self.linear1 and self.linear2, which add their biases.")
FF_DROPOUT_ON_OUTPUT = ("dropout is applied to the output of linear2. In nn.TransformerEncoderLayer "
                        "(and here) it acts on the hidden layer, between the activation and "
                        "linear2; the encoder layer drops the sublayer's output itself.")
FF_DROPOUT_ON_INPUT = ("dropout is applied to the input x, before linear1. It acts on the hidden "
                       "layer, between the activation and linear2.")
FF_DROPOUT_BEFORE_ACTIVATION = ("dropout is applied before the activation. It acts on the "
                                "activation's output, just before linear2 (the two orders differ "
                                "for GELU).")
FF_DROPOUT_TWICE = ("dropout is applied twice, on the hidden layer and on the output. Only once, "
                    "between the activation and linear2.")
FF_FIXED_AXES = ("the code works for 3-D inputs but not for this one: it assumes a fixed number "
                 "of axes (e.g. `B, T, D = x.shape` or a reshape). nn.Linear acts on the last axis "
                 "of any (..., D) input; no reshape is needed.")
FF_GENERIC = ("FFN(x) = linear2(dropout(activation(linear1(x)))), with the activation named "
              "by self.activation.")
FF_PARAMETERS = ("the module's parameters are not those of the given __init__ (linear1: "
                 "nn.Linear(d_model, d_ff), linear2: nn.Linear(d_ff, d_model)); keep the __init__ "
                 "as given and write only forward.")


def _gelu_tanh(h):
    return F.gelu(h, approximate="tanh")


def _ffn(ref, x, act=None, *, drop=(), bias=True):
    """The reference FFN with switches: ``act`` overrides the activation; ``drop`` names where
    dropout acts ("input", "pre", "hidden", "output"), each a call of ``ref.dropout``."""
    act = act or (F.gelu if ref.activation == "gelu" else F.relu)
    d = ref.dropout
    if "input" in drop:
        x = d(x)
    h = x @ ref.linear1.weight.T + (ref.linear1.bias if bias else 0)
    if "pre" in drop:
        h = d(h)
    h = act(h) if act is not _identity else h
    if "hidden" in drop:
        h = d(h)
    out = h @ ref.linear2.weight.T + (ref.linear2.bias if bias else 0)
    return d(out) if "output" in drop else out


def _identity(t):
    return t


def _ffn_candidates(ref, x) -> dict[str, torch.Tensor]:
    act = F.gelu if ref.activation == "gelu" else F.relu
    found = {
        FF_NO_ACTIVATION: _ffn(ref, x, _identity),
        FF_ACTIVATION_AFTER: act(_ffn(ref, x, _identity)),
        FF_ACTIVATION_TWICE: act(_ffn(ref, x)),
        FF_NO_BIAS: _ffn(ref, x, bias=False),
    }
    if ref.activation == "gelu":
        found[FF_ALWAYS_RELU] = _ffn(ref, x, F.relu)
        found[FF_GELU_TANH] = _ffn(ref, x, _gelu_tanh)
    else:
        found[FF_ALWAYS_GELU] = _ffn(ref, x, F.gelu)
    return found


def _randomise(module: torch.nn.Module, g: torch.Generator, std: float = 0.5) -> torch.nn.Module:
    """Random weights everywhere (LayerNorm gains around 1), so a missing piece shows."""
    with torch.no_grad():
        for key, p in module.named_parameters():
            noise = std * torch.randn(p.shape, generator=g)
            p.copy_(1 + noise if key.endswith("weight") and p.dim() == 1 else noise)
    return module


def _build(name: str, cls, reference, *args, **kwargs):
    """The learner's module with the reference's weights (its __init__ is given)."""
    __tracebackhide__ = True
    learner = _call(name, cls, *args, **kwargs)
    if not isinstance(learner, torch.nn.Module):
        raise ExerciseWrong(f"{name}: {cls!r}(...) did not build an nn.Module.")
    try:
        learner.load_state_dict(reference.state_dict())
    except (RuntimeError, KeyError) as error:
        raise ExerciseWrong(f"{name}: {FF_PARAMETERS if name == 'FeedForward' else LAYER_PARAMETERS} "
                            f"({str(error).splitlines()[0]})") from error
    return learner.train(reference.training)


def _require_deterministic_eval(name: str, first, second) -> None:
    """Two eval-mode passes on the same input must agree exactly."""
    __tracebackhide__ = True
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and \
            first.shape == second.shape and not torch.equal(first, second):
        raise ExerciseWrong(
            f"{name}: in eval mode two forward passes differ. Likely bug: dropout applied in eval "
            "mode too (F.dropout(h, p) defaults to training=True). Call the nn.Dropout modules of "
            "__init__ (or F.dropout(h, p, training=self.training)): model.eval() switches them off.")


@exercise("6.2", reference="scratchformer.encoder")
def feed_forward(cls) -> None:
    """Check a ``FeedForward`` class (``__init__`` given, ``forward`` written by the learner)
    against the package's: relu and gelu, inputs of 2 to 4 axes, dropout (off in eval, on the
    hidden layer in training, with the reference's expectation), float16/bfloat16, autograd."""
    __tracebackhide__ = True
    name = "FeedForward"
    Reference = _reference().FeedForward
    g = _generator()
    D, d_ff, B, T = distinct_ints(g, 4, 3, 17)
    p = 0.3
    modules = {}
    for activation in ("relu", "gelu"):
        reference = _randomise(Reference(D, d_ff, dropout=p, activation=activation), g).eval()
        modules[activation] = (_build(name, cls, reference, D, d_ff, dropout=p,
                                      activation=activation).eval(), reference)
    # 1. eval mode: deterministic, equal to the reference, for relu and gelu, 2-D to 4-D inputs
    probes, shape_ok = [], False
    for activation, (learner, reference) in modules.items():
        for shape in [(B, T, D), (T, D), (2, B, T, D)]:
            x = _randn(g, *shape)
            what = f"the output (activation={activation!r}, x of shape {shape})"
            before = snapshot(x)
            try:
                with torch.no_grad():
                    actual = _call(name, learner, x)
            except ExerciseWrong as error:
                _judge(name, probes, FF_GENERIC)   # wrong already on 3-D inputs: say that first
                if shape_ok and len(shape) != 3 and "raised" in str(error):
                    raise ExerciseWrong(f"{error} Likely bug: {FF_FIXED_AXES}") from error.__cause__
                raise
            require_unchanged(name, ("x",), before, (x,))
            with torch.no_grad():
                _require_deterministic_eval(name, actual, _call(name, learner, x))
            _require_output(name, what, actual, shape)
            shape_ok = shape_ok or len(shape) == 3
            with torch.no_grad():
                probes.append(_Probe(what, actual, reference(x), _ffn_candidates(reference, x)))
    _judge(name, probes, FF_GENERIC)
    # 2. dropout placement: with the same random numbers, the reference's masks fall on the
    #    hidden layer; a mask anywhere else gives another output
    probes = []
    for activation, (learner, reference) in modules.items():
        learner.train(), reference.train()
        x = _randn(g, B, T, D)
        with torch.no_grad():
            for seed in (1, 2):
                actual = _seeded(seed, _call, name, learner, x)
                expected = _seeded(seed, reference, x)
                bugs = {FF_DROPOUT_ON_OUTPUT: ("output",), FF_DROPOUT_ON_INPUT: ("input",),
                        FF_DROPOUT_BEFORE_ACTIVATION: ("pre",),
                        FF_DROPOUT_TWICE: ("hidden", "output")}
                candidates = {hint: _seeded(seed, _ffn, reference, x, None, drop=where)
                              for hint, where in bugs.items()}
                probes.append(_Probe(f"the output in training mode (activation={activation!r})",
                                     actual, expected, candidates))
        learner.eval(), reference.eval()
    if _agreeing_bug(probes) is not None:
        _judge(name, probes, "")
    # 3. dropout statistics (whatever random numbers the code draws): off in eval, on in
    #    training, with the reference's expectation
    learner, reference = modules["relu"]
    x = _randn(g, B, T, D)
    _require_dropout(name, learner, reference, lambda m: _call(name, m, x))
    # 4. float16 and bfloat16 weights and inputs: the output keeps the dtype
    for dtype in LOW_PRECISION:
        learner, reference = (m.to(dtype) for m in modules["gelu"])
        x = _randn(g, B, T, D).to(dtype)
        with torch.no_grad():
            actual = _call(name, learner, x)
            _require_output(name, "the output", actual, x.shape, dtype)
            expected = reference(x)
        if not _match(actual, expected, 5e-2, 5e-2):
            raise ExerciseWrong(f"{name}: the output for {dtype} input differs from the reference "
                                f"by {(actual.float() - expected.float()).abs().max().item():.3g}.")
        learner.float(), reference.float()
    # 5. autograd: gradients reach the input and both layers
    learner = modules["relu"][0]
    x = _randn(g, B, T, D).requires_grad_(True)
    out = _call(name, learner, x)
    require_gradients(name, out, {"x": x, "linear1.weight": learner.linear1.weight,
                                  "linear2.weight": learner.linear2.weight})
    learner.zero_grad()
    _passed(name, "relu and gelu, 2-D to 4-D inputs, dropout on the hidden layer in training "
                  "only, float16/bfloat16, gradients flow.")


# --------------------------------------------------------------------------------------------
# Exercise 6.3: EncoderLayer.forward
# --------------------------------------------------------------------------------------------

LAYER_PARAMETERS = ("the layer's parameters are not those of the given __init__ (self_attn, "
                    "feed_forward, norm1, norm2, dropout1, dropout2); keep the __init__ as given "
                    "and write only forward.")
EL_FLAG_SWAPPED = (
    "norm_first read the wrong way round: your norm_first=False computes pre-LN and "
    "norm_first=True computes post-LN. False is post-LN, the paper: x ← LN(x + Dropout(Sublayer(x))); "
    "True is pre-LN: x ← x + Dropout(Sublayer(LN(x)))."
)
EL_ALWAYS_POST = ("norm_first=True is ignored: both settings compute post-LN. With norm_first=True "
                  "the norm goes on the sublayer's input: x ← x + Dropout(Sublayer(LN(x))).")
EL_ALWAYS_PRE = ("norm_first=False is ignored: both settings compute pre-LN. With norm_first=False "
                 "(the paper) the norm goes after the add: x ← LN(x + Dropout(Sublayer(x))).")
EL_PRE_NORMALISED_RESIDUAL = (
    "in pre-LN the residual is taken from the normalised x (e.g. `x = self.norm1(x)` before the "
    "add), LN(x) + Sublayer(LN(x)). The residual path must carry x itself: "
    "x + Dropout(Sublayer(LN(x))).")
EL_PRE_NORM_AFTER_ADD = (
    "pre-LN also normalises after the add. In pre-LN the norm goes only on the sublayer's input, "
    "x + Dropout(Sublayer(LN(x))); nothing after the add (the stack's final LayerNorm does that).")
EL_POST_NORM_ON_SUBLAYER = (
    "in post-LN the norm is applied to the sublayer's output instead of the sum, "
    "x + LN(Sublayer(x)). It normalises the sum: LN(x + Dropout(Sublayer(x))).")
EL_NORMS_SWAPPED = ("norm1 and norm2 swapped: norm1 belongs to the attention sublayer, norm2 to "
                    "the feed-forward sublayer (their weights differ once trained).")
EL_ONE_NORM = ("the same LayerNorm (norm1) is used for both sublayers; the feed-forward sublayer "
               "has its own, norm2.")
EL_NO_RESIDUAL = "the residual add is missing: each sublayer's input x must be added to its output."
EL_NO_FINAL_POST_NORM = ("in post-LN the second norm is missing: the feed-forward sublayer is "
                         "LN(x + Dropout(FFN(x))) too.")
EL_MASK_IGNORED = ("the mask is not passed to the self-attention: padded keys are attended to. "
                   "Call self.self_attn(h, h, h, mask=mask).")
EL_FFN_FIRST = "the sublayers are in the wrong order: self-attention first, then the feed-forward network."
EL_FFN_READS_INPUT = ("the feed-forward sublayer reads the layer's input instead of the attention "
                      "sublayer's result: the second sublayer continues from the first.")
EL_NO_RESIDUAL_DROPOUT = ("dropout1 and dropout2 are never applied. Dropout goes on each sublayer's "
                          "output, before the residual add (§5.4): x + Dropout(Sublayer(...)).")
EL_DROPOUT_ON_SUM = ("dropout is applied to the sum (or after the norm), so it also drops the "
                     "residual path. It goes on the sublayer's output, before the add.")
EL_DROPOUT_ON_INPUT = ("dropout is applied to the sublayer's input. It goes on the sublayer's "
                       "output, before the add: x + Dropout(Sublayer(...)).")


def _layer(ref, x, mask, *, norm_first=None, pre_normalised=False, pre_norm_after=False,
           post_norm_on_sublayer=False, norms="12", residual=True, post_final_norm=True,
           use_mask=True, order="attention first", ffn_reads_input=False, drop="output"):
    """The reference encoder layer's forward pass, with one switch per classic bug."""
    norm_first = ref.norm_first if norm_first is None else norm_first
    norm_a, norm_f = (getattr(ref, f"norm{i}") for i in norms)
    keep = mask if use_mask else None

    def attend(h):
        return ref.self_attn(h, h, h, mask=keep)[0]

    def connect(x, sublayer, norm, dropout, last):
        plain = drop == "none"
        d = (lambda t: t) if plain else dropout
        if norm_first:
            h = norm(x)
            base = h if pre_normalised else x
            inner = d(h) if drop == "input" else h
            out = sublayer(inner)
            out = base + (out if drop in ("input", "sum") else d(out)) if residual else d(out)
            if drop == "sum":
                out = d(out)
            return norm(out) if pre_norm_after else out
        inner = d(x) if drop == "input" else x
        out = sublayer(inner)
        out = out if drop in ("input", "sum") else d(out)
        if post_norm_on_sublayer:
            return x + norm(out)
        total = x + out if residual else out
        if drop == "sum":
            total = d(total)
        if last and not post_final_norm:
            return total
        return norm(total)

    first, second = (attend, norm_a, ref.dropout1), (ref.feed_forward, norm_f, ref.dropout2)
    if order != "attention first":
        first, second = (ref.feed_forward, norm_a, ref.dropout1), (attend, norm_f, ref.dropout2)
    h = connect(x, *first, last=False)
    if ffn_reads_input:
        fed = second[0](norm_f(x) if norm_first else x)
        fed = fed if drop == "none" else second[2](fed)
        return h + fed if norm_first else norm_f(h + fed)
    return connect(h, *second, last=True)


def _layer_candidates(ref, x, mask) -> dict[str, torch.Tensor]:
    nf = ref.norm_first
    found = {
        EL_FLAG_SWAPPED: _layer(ref, x, mask, norm_first=not nf),
        EL_ALWAYS_POST: _layer(ref, x, mask, norm_first=False),
        EL_ALWAYS_PRE: _layer(ref, x, mask, norm_first=True),
        EL_NORMS_SWAPPED: _layer(ref, x, mask, norms="21"),
        EL_ONE_NORM: _layer(ref, x, mask, norms="11"),
        EL_NO_RESIDUAL: _layer(ref, x, mask, residual=False),
        EL_FFN_FIRST: _layer(ref, x, mask, order="ffn first"),
        EL_FFN_READS_INPUT: _layer(ref, x, mask, ffn_reads_input=True),
    }
    if mask is not None:
        found[EL_MASK_IGNORED] = _layer(ref, x, mask, use_mask=False)
    if nf:
        found[EL_PRE_NORMALISED_RESIDUAL] = _layer(ref, x, mask, pre_normalised=True)
        found[EL_PRE_NORM_AFTER_ADD] = _layer(ref, x, mask, pre_norm_after=True)
    else:
        found[EL_POST_NORM_ON_SUBLAYER] = _layer(ref, x, mask, post_norm_on_sublayer=True)
        found[EL_NO_FINAL_POST_NORM] = _layer(ref, x, mask, post_final_norm=False)
    # the two "ignored" candidates equal the reference for one setting: keep only the real bug
    found.pop(EL_ALWAYS_PRE if nf else EL_ALWAYS_POST)
    return found


def _layer_config(g: torch.Generator):
    """B, S, H, D, d_ff all different, D = H * head_dim."""
    B, S, H = distinct_ints(g, 3, 2, 7)
    head_dim = int(torch.randint(-(-7 // H), 6, (1,), generator=g))
    D = H * head_dim
    d_ff = D + int(torch.randint(1, 9, (1,), generator=g))
    return B, S, H, D, d_ff


@exercise("6.3", reference="scratchformer.encoder")
def encoder_layer(cls) -> None:
    """Check an ``EncoderLayer`` class (``__init__`` given, ``forward`` written by the learner)
    against the package's: post-LN and pre-LN, every mask shape, dropout (off in eval, on each
    sublayer's output in training, with the reference's expectation), float16/bfloat16,
    inputs left unchanged, autograd."""
    __tracebackhide__ = True
    name = "EncoderLayer"
    Reference = _reference().EncoderLayer
    g = _generator()
    B, S, H, D, d_ff = _layer_config(g)
    p = 0.25
    modules = {}
    for norm_first in (False, True):
        reference = _randomise(Reference(D, H, d_ff, dropout=p, norm_first=norm_first), g, 0.4)
        modules[norm_first] = (_build(name, cls, reference.eval(), D, H, d_ff, dropout=p,
                                      norm_first=norm_first).eval(), reference)
    masks = {"no mask": None, **mask_variants(g, (B,), S, S), **mask_variants(g, (B, H), S, S)}
    # 1. eval mode (dropout off): deterministic, equal to the reference, every mask shape
    probes = []
    for norm_first, (learner, reference) in modules.items():
        label = "pre-LN (norm_first=True)" if norm_first else "post-LN (norm_first=False)"
        for mask_name, mask in masks.items():
            x = 2 * _randn(g, B, S, D) + 0.5
            before = snapshot(x, mask)
            with torch.no_grad():
                actual = _call(name, learner, x, mask)
                require_unchanged(name, ("x", "mask"), before, (x, mask))
                _require_deterministic_eval(name, actual, _call(name, learner, x, mask))
            what = f"the output, {label}, mask {mask_name}"
            _require_output(name, what, actual, (B, S, D))
            with torch.no_grad():
                probes.append(_Probe(what, actual, reference(x, mask),
                                     _layer_candidates(reference, x, mask)))
    _judge(name, probes, "post-LN: x ← LN(x + Dropout(Sublayer(x))); pre-LN: "
                         "x ← x + Dropout(Sublayer(LN(x))); attention first, then the "
                         "feed-forward network, each with its own norm.")
    # 2. dropout placement in training: same random numbers as the reference, masks on each
    #    sublayer's output; a mask anywhere else gives another output
    probes = []
    for norm_first, (learner, reference) in modules.items():
        learner.train(), reference.train()
        x, mask = _randn(g, B, S, D), masks[f"key padding {(B, 1, S)}"]
        with torch.no_grad():
            for seed in (1, 2):
                bugs = {EL_NO_RESIDUAL_DROPOUT: "none", EL_DROPOUT_ON_SUM: "sum",
                        EL_DROPOUT_ON_INPUT: "input"}
                candidates = {hint: _seeded(seed, _layer, reference, x, mask, drop=where)
                              for hint, where in bugs.items()}
                probes.append(_Probe(f"the output in training mode, norm_first={norm_first}",
                                     _seeded(seed, _call, name, learner, x, mask),
                                     _seeded(seed, reference, x, mask), candidates))
        learner.eval(), reference.eval()
    if _agreeing_bug(probes) is not None:
        _judge(name, probes, "")
    # 3. dropout statistics, whatever random numbers the code draws
    for learner, reference in modules.values():
        x, mask = _randn(g, B, S, D), masks[f"key padding {(B, 1, S)}"]
        _require_dropout(name, learner, reference,
                         lambda m, x=x, mask=mask: _call(name, m, x, mask))
    # 4. float16 and bfloat16, with a key-padding mask: the output keeps the dtype
    for dtype in LOW_PRECISION:
        for norm_first, (learner, reference) in modules.items():
            learner.to(dtype), reference.to(dtype)
            x, mask = _randn(g, B, S, D).to(dtype), masks[f"key padding {(B, 1, S)}"]
            with torch.no_grad():
                actual = _call(name, learner, x, mask)
                _require_output(name, "the output", actual, (B, S, D), dtype)
                expected = reference(x, mask)
            learner.float(), reference.float()
            if not (torch.isfinite(actual).all() and _match(actual, expected, 6e-2, 6e-2)):
                raise ExerciseWrong(
                    f"{name}: for {dtype} input, norm_first={norm_first}, the output differs "
                    f"from the reference by {(actual.float() - expected.float()).abs().max().item():.3g}.")
    # 5. autograd: gradients reach x and both sublayers, in both placements
    for learner, _ in modules.values():
        x = _randn(g, B, S, D).requires_grad_(True)
        out = _call(name, learner, x, masks[f"key padding {(B, 1, S)}"])
        require_gradients(name, out, {"x": x, "self_attn.in_proj.weight": learner.self_attn.in_proj.weight,
                                      "feed_forward.linear1.weight": learner.feed_forward.linear1.weight})
        learner.zero_grad()
    _passed(name, "post-LN and pre-LN, every mask shape, dropout on each sublayer's output in "
                  "training only, float16/bfloat16, inputs unchanged, gradients flow.")
