"""Checkers for chapter 10 (``scratchformer.losses``): the label-smoothed loss (exercise 10.1)
and the smallest value it can reach (exercise 10.2)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from scratchformer.checks._common import ExerciseWrong, _call, _generator, _passed
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import (
    LOW_PRECISION,
    agreeing_bug,
    distinct_ints,
    require_unchanged,
    snapshot,
)

__all__ = ["label_smoothed_loss", "minimum_loss"]


# --------------------------------------------------------------------------------------------
# Exercise 10.1: label_smoothed_loss(logits, target, epsilon, pad_id, pad_gets_mass)
# --------------------------------------------------------------------------------------------

PAD_MASS = (
    "with pad_gets_mass=False the smoothing mass also goes to <pad>: eps / (V - 1) on every "
    "class but the gold one. <pad> is never a correct answer, so it gets no mass: spread eps "
    "over the V - 2 classes that are neither the gold token nor pad_id."
)
GOLD_MASS = (
    "with pad_gets_mass=False the gold token also gets a share of eps (eps / (V - 1) on every "
    "class but <pad>), so it ends with more than 1 - eps. The eps goes to the V - 2 classes that "
    "are neither the gold token nor pad_id."
)
DENOMINATOR_V = (
    "the smoothing mass is eps / V on each of the V - 2 classes that are neither gold nor pad, "
    "so the target distribution sums to less than 1. The V - 2 classes share eps: eps / (V - 2) "
    "each."
)
DENOMINATOR_V1 = (
    "the smoothing mass is eps / (V - 1) on each of the V - 2 classes that are neither gold nor "
    "pad, so the target distribution sums to less than 1. The V - 2 classes share eps: "
    "eps / (V - 2) each."
)
FLAG_IGNORED_PYTORCH = (
    "pad_gets_mass is ignored: both settings compute PyTorch's convention (eps / V on every "
    "class). With pad_gets_mass=False the mass eps goes only to the V - 2 classes that are "
    "neither gold nor pad."
)
FLAG_IGNORED_OURS = (
    "pad_gets_mass is ignored: pad_gets_mass=True also spreads eps over the V - 2 classes that "
    "are neither gold nor pad. True is PyTorch's convention, F.cross_entropy(..., "
    "label_smoothing=eps): eps / V on every class, gold and <pad> included."
)
FLAG_SWAPPED = (
    "pad_gets_mass is read the wrong way round: True gives the V - 2 convention and False "
    "PyTorch's eps / V. True means that <pad> gets mass too (PyTorch's convention)."
)
TRUE_V1 = (
    "with pad_gets_mass=True the mass is eps / (V - 1) on every class but the gold one. "
    "PyTorch's convention is eps / V on every class, the gold one included (it gets "
    "1 - eps + eps / V), as F.cross_entropy(..., label_smoothing=eps) computes."
)
NO_SMOOTHING = (
    "epsilon is ignored: the loss is plain cross-entropy. The target keeps 1 - eps on the gold "
    "token and spreads eps over the other classes."
)
GOLD_WEIGHT_ONE = (
    "the gold token keeps the weight 1 instead of 1 - eps, so the target distribution sums to "
    "1 + eps. Give the gold token 1 - eps."
)
MEAN_ALL = (
    "the sum over the real tokens is divided by B * T, the number of all positions, padding "
    "included: the more padding a batch has, the smaller its loss. Divide by the number of "
    "non-pad target tokens."
)
MEAN_ALL_WITH_PAD = (
    "the padded positions are treated as targets (the model is trained to predict <pad>) and "
    "the mean runs over all B * T positions. Leave out the positions whose target is pad_id, "
    "and divide by the number of the others."
)
PAD_LOSS_SUMMED = (
    "the losses at the padded positions are added too (only the count leaves them out). Zero "
    "the token losses where target == pad_id before summing (masked_fill or torch.where)."
)
PER_SENTENCE = (
    "the loss is a mean of per-sentence means: each sentence's tokens are averaged first, so a "
    "token of a short sentence weighs more than one of a long sentence. Sum the token losses "
    "over the whole batch and divide once, by the number of non-pad tokens."
)
PER_BATCH_SUM = (
    "the sum is divided by the number of sentences B, not by the number of non-pad tokens."
)
SUM_ONLY = "the token losses are summed but not divided by the number of non-pad tokens."
PAD_ZERO = (
    "the padding id is hard-coded as 0: with pad_id != 0 the wrong positions are skipped (and "
    "the wrong class left out of the smoothing). Use the pad_id argument everywhere."
)
UNSTABLE = (
    "numerical stability: exp(logits) overflows to inf (or the probabilities underflow to 0 "
    "and their log is -inf). Use F.log_softmax(logits, dim=-1), which subtracts the largest "
    "logit (the logsumexp trick) and never forms exp(logits) or log(0)."
)
LOG_OF_SOFTMAX = (
    "numerical stability: log(softmax(x)) rounds probabilities below about 1e-38 to 0, and "
    "log(0) = -inf, so the smoothing term becomes inf for confident logits. "
    "F.log_softmax(x, dim=-1) computes x - logsumexp(x) without forming the probabilities."
)
EMPTY_NAN = (
    "a batch without a single non-pad token gives NaN: 0 / 0. It must give 0.0 (finite and "
    "differentiable), e.g. divide by the count clamped to at least 1."
)
EMPTY_NOT_DIFFERENTIABLE = (
    "for a batch without a single non-pad token the result is not connected to the logits, so "
    "loss.backward() would fail in the training loop. Return a 0.0 that still depends on the "
    "logits: compute as usual and divide by the count clamped to at least 1."
)
LOW_PRECISION_HINT = (
    "compute in float32: cast the logits with .float() before the log-softmax, and return "
    "the float32 result. A log-softmax in bfloat16 keeps about 3 significant digits."
)
DETACHED = (
    "the value is right but the gradient is not: part of the loss is detached (.detach(), "
    ".item(), torch.no_grad or a NumPy round trip), so the model would be trained on part of "
    "the loss only."
)

_MASS_KINDS = ("v-2", "v", "v-1 pad", "v-1 gold", "sum/v", "sum/(v-1)")


def _token_losses(log_p: torch.Tensor, target: torch.Tensor, epsilon: float, pad_id: int,
                  kind: str, gold_weight: float) -> torch.Tensor:
    """-gold_weight log p_gold - eps * (weighted mean of log p over the smoothing classes), one
    per position (B, T), for the smoothing ``kind``:

    "v-2" eps/(V-2) on classes neither gold nor pad (ours), "v" eps/V on all (PyTorch's),
    "v-1 pad" eps/(V-1) on every class but gold, "v-1 gold" eps/(V-1) on every class but pad,
    "sum/v" and "sum/(v-1)" the V-2 classes with the wrong denominator."""
    V = log_p.size(-1)
    gold = log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    is_gold = F.one_hot(target, V).bool()
    is_pad = torch.zeros_like(is_gold)
    is_pad[..., pad_id] = True
    if kind == "v":
        smooth = log_p.sum(-1) / V
    elif kind == "v-1 pad":
        smooth = log_p.masked_fill(is_gold, 0).sum(-1) / (V - 1)
    elif kind == "v-1 gold":
        smooth = log_p.masked_fill(is_pad, 0).sum(-1) / (V - 1)
    else:
        rest = log_p.masked_fill(is_gold | is_pad, 0).sum(-1)
        smooth = rest / {"v-2": V - 2, "sum/v": V, "sum/(v-1)": V - 1}[kind]
    return -gold_weight * gold - epsilon * smooth


def _variant(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False, *, when_false="v-2",
             when_true="v", norm="tokens", pad_override=None, gold_weight=None,
             use_epsilon=True) -> torch.Tensor:
    """The reference loss, computed in float64, with one switch per classic bug."""
    eps = float(epsilon) if use_epsilon else 0.0
    pad = pad_id if pad_override is None else pad_override
    log_p = F.log_softmax(logits.double(), dim=-1)
    kind = when_true if pad_gets_mass else when_false
    weight = 1 - eps if gold_weight is None else gold_weight
    token = _token_losses(log_p, target, eps, pad, kind, weight)          # (B, T)
    keep = target != pad
    kept = token.masked_fill(~keep, 0)
    n = keep.sum().clamp(min=1)
    B, T = target.shape
    if norm == "tokens":
        out = kept.sum() / n
    elif norm == "all":
        out = kept.sum() / (B * T)
    elif norm == "with pad":
        out = token.sum() / (B * T)
    elif norm == "pad summed":
        out = token.sum() / n
    elif norm == "sentences":
        out = (kept.sum(1) / keep.sum(1)).mean()
    elif norm == "batch":
        out = kept.sum() / B
    elif norm == "sum":
        out = kept.sum()
    else:
        raise ValueError(norm)
    return out.float()


_LOSS_BUGS: dict[str, dict] = {
    PAD_MASS: dict(when_false="v-1 pad"),
    GOLD_MASS: dict(when_false="v-1 gold"),
    DENOMINATOR_V: dict(when_false="sum/v"),
    DENOMINATOR_V1: dict(when_false="sum/(v-1)"),
    FLAG_IGNORED_PYTORCH: dict(when_false="v"),
    FLAG_IGNORED_OURS: dict(when_true="v-2"),
    FLAG_SWAPPED: dict(when_false="v", when_true="v-2"),
    TRUE_V1: dict(when_true="v-1 pad"),
    NO_SMOOTHING: dict(use_epsilon=False),
    GOLD_WEIGHT_ONE: dict(gold_weight=1.0),
    MEAN_ALL: dict(norm="all"),
    MEAN_ALL_WITH_PAD: dict(norm="with pad"),
    PAD_LOSS_SUMMED: dict(norm="pad summed"),
    PER_SENTENCE: dict(norm="sentences"),
    PER_BATCH_SUM: dict(norm="batch"),
    SUM_ONLY: dict(norm="sum"),
    PAD_ZERO: dict(pad_override=0),
}


def _reference_loss(logits, target, epsilon=0.1, pad_id=0, pad_gets_mass=False) -> torch.Tensor:
    return _variant(logits, target, epsilon, pad_id, pad_gets_mass)


def _padded_target(g: torch.Generator, B: int, T: int, V: int, pad_id: int) -> torch.Tensor:
    """(B, T) right-padded ids: rows of different lengths (one full, one of length 1 when
    B > 2), real ids never pad_id, and id 0 among the real ids when pad_id != 0."""
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    lengths[-1] = max(1, T // 3)
    if B > 2:
        lengths[1] = 1
    real = torch.randint(0, V - 1, (B, T), generator=g)
    real = real + (real >= pad_id).long()                   # skip pad_id
    if pad_id != 0:
        real[0, 0] = 0                                      # a real token with id 0
    positions = torch.arange(T)
    return torch.where(positions < lengths[:, None], real, torch.full_like(real, pad_id))


def _config(g: torch.Generator) -> tuple[int, int, int]:
    """B, T, V all different, V >= 5."""
    B, T = distinct_ints(g, 2, 2, 8)
    V = int(torch.randint(9, 24, (1,), generator=g))
    return B, T, V


def _float_out(name: str, out, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """The learner's result must be a 0-d float32 tensor."""
    __tracebackhide__ = True
    if isinstance(out, numbers.Number) and not isinstance(out, bool):
        raise ExerciseWrong(
            f"{name}: the loss is the Python number {out!r}, not a tensor. Likely bug: .item() or "
            "float() at the end: return the 0-d tensor, so that loss.backward() can train the "
            "model."
        )
    if not isinstance(out, torch.Tensor):
        raise ExerciseWrong(f"{name}: the loss should be a 0-d torch.Tensor, got "
                            f"{type(out).__name__}.")
    if tuple(out.shape) == tuple(shape):
        raise ExerciseWrong(
            f"{name}: the result has shape {tuple(out.shape)}, one loss per position. Reduce it "
            "to one number: sum the losses of the non-pad tokens and divide by their count."
        )
    if out.dim() != 0:
        raise ExerciseWrong(f"{name}: the loss should be a 0-d tensor (a scalar), got shape "
                            f"{tuple(out.shape)}.")
    if out.dtype != dtype:
        raise ExerciseWrong(
            f"{name}: the loss has dtype {out.dtype}; it must be {dtype}. Likely bug: "
            + (LOW_PRECISION_HINT if out.dtype in LOW_PRECISION else
               "compute in float32 (or cast the result back with .float()).")
        )
    return out


def _loss_call(name: str, fn: Callable, logits, target, epsilon, pad_id, pad_gets_mass):
    """Call the learner's loss on copies; the caller's tensors must come back unchanged."""
    __tracebackhide__ = True
    given = snapshot(logits, target)
    out = _call(name, fn, given[0], given[1], epsilon, pad_id, pad_gets_mass)
    require_unchanged(name, ("logits", "target"), (logits, target), given)
    return out


def _describe(B, T, V, epsilon, pad_id, pad_gets_mass) -> str:
    return (f"the loss for logits ({B}, {T}, {V}), epsilon={epsilon:.3f}, pad_id={pad_id}, "
            f"pad_gets_mass={pad_gets_mass}")


@exercise("10.1", reference="scratchformer.losses")
def label_smoothed_loss(fn: Callable) -> None:
    """Check ``fn(logits (B, T, V), target (B, T), epsilon, pad_id, pad_gets_mass) -> 0-d``:
    both conventions (pad_gets_mass=True equal to F.cross_entropy with ignore_index and
    label_smoothing), pad_id 0 and not 0, sentences of different lengths, logits around 1000
    and very confident ones, an all-padding row and an all-padding batch, inputs unchanged,
    gradients, float16/bfloat16 logits (a float32 result)."""
    __tracebackhide__ = True
    name = "label_smoothed_loss"
    g = _generator()
    generic = ("Per non-pad position: -(1 - eps) log p(gold) - eps times the mean of log p "
               "over the smoothing classes; sum over the non-pad positions, divide by their "
               "count.")

    # 1. six probes: both conventions, pad_id 0 and not 0, different sizes and epsilons
    probes, failing = [], []
    for k, pad_gets_mass in enumerate((False, True) * 3):
        B, T, V = _config(g)
        pad_id = 0 if k in (0, 3) else int(torch.randint(1, V, (1,), generator=g))
        epsilon = round(0.05 + 0.4 * float(torch.rand((), generator=g)), 3)
        logits = 2 * torch.randn(B, T, V, generator=g)
        target = _padded_target(g, B, T, V, pad_id)
        out = _loss_call(name, fn, logits, target, epsilon, pad_id, pad_gets_mass)
        _float_out(name, out, (B, T))
        expected = _reference_loss(logits, target, epsilon, pad_id, pad_gets_mass)
        variants = {hint: _variant(logits, target, epsilon, pad_id, pad_gets_mass, **switches)
                    for hint, switches in _LOSS_BUGS.items()}
        out = out.detach()
        probes.append((out, variants))
        if not (torch.isfinite(out) and torch.allclose(out, expected, rtol=1e-4, atol=1e-5)):
            failing.append((_describe(B, T, V, epsilon, pad_id, pad_gets_mass), out, expected,
                            pad_gets_mass))
    if failing:
        what, out, expected, pytorch = failing[0]
        bug = agreeing_bug(probes)
        if bug is not None:
            raise ExerciseWrong(f"{name}: {what} is wrong. Likely bug: {bug}")
        also = (" With pad_gets_mass=True it must equal F.cross_entropy(logits.flatten(0, 1), "
                "target.flatten(), ignore_index=pad_id, label_smoothing=epsilon)." if pytorch
                else "")
        raise ExerciseWrong(f"{name}: {what} is {out.item():.6g}, expected "
                            f"{expected.item():.6g}.{also} {generic}")

    # 2. numerical stability: logits around 1000, and very confident logits (spread ~ 100s)
    B, T, V = _config(g)
    target = _padded_target(g, B, T, V, 0)
    base = 2 * torch.randn(B, T, V, generator=g)
    for what, logits, hint in (("logits around 1000 (the loss only depends on differences "
                                "of logits)", base + 1000, UNSTABLE),
                               ("very confident logits (differences of several hundred)",
                                80 * base, LOG_OF_SOFTMAX)):
        for pad_gets_mass in (False, True):
            out = _float_out(name, _loss_call(name, fn, logits, target, 0.1, 0, pad_gets_mass),
                             (B, T))
            expected = _reference_loss(logits, target, 0.1, 0, pad_gets_mass)
            if not (torch.isfinite(out) and torch.allclose(out.detach(), expected, rtol=1e-4,
                                                           atol=2e-3)):
                raise ExerciseWrong(f"{name}: the loss for {what} is {out.item():.6g}, expected "
                                    f"{expected.item():.6g}. Likely bug: {hint}")

    # 3. a row that is all padding, in a batch with real tokens: no NaN, the same loss
    B, T, V = _config(g)
    pad_id = int(torch.randint(0, V, (1,), generator=g))
    target = _padded_target(g, B, T, V, pad_id)
    target[-1] = pad_id
    logits = 2 * torch.randn(B, T, V, generator=g)
    for pad_gets_mass in (False, True):
        out = _float_out(name, _loss_call(name, fn, logits, target, 0.2, pad_id, pad_gets_mass),
                         (B, T))
        expected = _reference_loss(logits, target, 0.2, pad_id, pad_gets_mass)
        if not (torch.isfinite(out) and torch.allclose(out.detach(), expected, rtol=1e-4,
                                                       atol=1e-5)):
            raise ExerciseWrong(
                f"{name}: for a batch whose last sentence is all padding (pad_id={pad_id}, "
                f"pad_gets_mass={pad_gets_mass}) the loss is {out.item():.6g}, expected "
                f"{expected.item():.6g}: an empty sentence adds nothing, neither to the sum nor "
                "to the count." + (" Likely bug: " + PER_SENTENCE if not torch.isfinite(out)
                                   else ""))

    # 4. gradients: they reach the logits and equal the reference's
    for pad_gets_mass in (False, True):
        B, T, V = _config(g)
        pad_id = int(torch.randint(0, V, (1,), generator=g))
        target = _padded_target(g, B, T, V, pad_id)
        logits = (2 * torch.randn(B, T, V, generator=g)).requires_grad_(True)
        out = _float_out(name, _call(name, fn, logits, target, 0.1, pad_id, pad_gets_mass),
                         (B, T))
        if not out.requires_grad:
            raise ExerciseWrong(
                f"{name}: the loss does not depend on the logits through autograd. Likely bug: "
                "`.detach()`, `.item()`, `torch.no_grad()` or a NumPy round trip inside your "
                "code; training needs the gradient.")
        out.backward()
        reference_logits = logits.detach().clone().requires_grad_(True)
        _reference_loss(reference_logits, target, 0.1, pad_id, pad_gets_mass).backward()
        if logits.grad is None or not torch.allclose(logits.grad, reference_logits.grad,
                                                     rtol=1e-3, atol=1e-6):
            raise ExerciseWrong(f"{name}: pad_gets_mass={pad_gets_mass}: {DETACHED}")

    # 5. a batch that is all padding: 0.0, finite and differentiable
    for pad_gets_mass in (False, True):
        logits = torch.randn(B, T, V, generator=g).requires_grad_(True)
        empty = torch.full((B, T), pad_id)
        before = snapshot(logits, empty)
        out = _float_out(name, _call(name, fn, logits, empty, 0.1, pad_id, pad_gets_mass),
                         (B, T))
        require_unchanged(name, ("logits", "target"), before, (logits, empty))
        if not torch.isfinite(out):
            raise ExerciseWrong(f"{name}: for a batch that is all padding the loss is "
                                f"{out.item()}. Likely bug: {EMPTY_NAN}")
        if out.item() != 0.0:
            raise ExerciseWrong(f"{name}: for a batch that is all padding the loss is "
                                f"{out.item():.6g}; with no token to predict it must be 0.0.")
        if not out.requires_grad:
            raise ExerciseWrong(f"{name}: {EMPTY_NOT_DIFFERENTIABLE}")
        out.backward()
        if logits.grad is not None and not torch.isfinite(logits.grad).all():
            raise ExerciseWrong(f"{name}: for a batch that is all padding the gradient contains "
                                f"NaN or inf. Likely bug: {EMPTY_NAN}")

    # 6. float16 and bfloat16 logits: a finite float32 loss, close to the float32 computation
    for dtype in LOW_PRECISION:
        for pad_gets_mass in (False, True):
            B, T, V = _config(g)
            target = _padded_target(g, B, T, V, 0)
            logits = (4 * torch.randn(B, T, V, generator=g)).to(dtype)
            out = _float_out(name, _loss_call(name, fn, logits, target, 0.1, 0, pad_gets_mass),
                             (B, T))
            expected = _reference_loss(logits.float(), target, 0.1, 0, pad_gets_mass)
            if not (torch.isfinite(out) and torch.allclose(out.detach(), expected, rtol=1e-5,
                                                           atol=1e-6)):
                raise ExerciseWrong(
                    f"{name}: for {dtype} logits (pad_gets_mass={pad_gets_mass}) the loss is "
                    f"{out.item():.6g}, but computed in float32 from the same logits it is "
                    f"{expected.item():.6g}. Likely bug: {LOW_PRECISION_HINT}")
    _passed(name, "both conventions (pad_gets_mass=True equals F.cross_entropy), pad_id 0 and "
                  "not 0, per-token normalisation, logits at 1000 and very confident ones, "
                  "all-padding rows and batches, inputs unchanged, gradients, float16/bfloat16.")


# --------------------------------------------------------------------------------------------
# Exercise 10.2: minimum_loss(vocab_size, epsilon, pad_gets_mass)
# --------------------------------------------------------------------------------------------

MIN_ZERO = (
    "the minimum is not 0: the smoothed target q is not one-hot, and the cross-entropy of any "
    "p against q is at least the entropy of q, reached at p = q."
)
MIN_PAD_MASS = (
    "with pad_gets_mass=False, <pad> gets no mass: the target has 1 - eps on the gold token and "
    "eps / (V - 2) on each of the V - 2 other classes (not eps / (V - 1) on V - 1)."
)
MIN_FLAG_IGNORED_PYTORCH = (
    "pad_gets_mass is ignored: both settings use PyTorch's target (eps / V everywhere). With "
    "False the target is 1 - eps on the gold token and eps / (V - 2) on the V - 2 others."
)
MIN_FLAG_IGNORED_OURS = (
    "pad_gets_mass is ignored: True also uses eps / (V - 2). With True (PyTorch's convention) "
    "every class gets eps / V, so the gold token has 1 - eps + eps / V and the V - 1 others "
    "eps / V each."
)
MIN_TRUE_GOLD = (
    "with pad_gets_mass=True the gold token has 1 - eps + eps / V (it gets its share eps / V "
    "too), not 1 - eps."
)
MIN_NO_GOLD_TERM = (
    "the gold token's term is missing: the entropy sums -q log q over every class with mass, "
    "the gold one included."
)
MIN_GOLD_ONLY = (
    "only the gold token's term is there: the classes that share eps contribute -q log q "
    "each too."
)
MIN_ONE_SMOOTH_TERM = (
    "the smoothing classes are counted once: each of them contributes -q log q, so multiply "
    "that term by their number."
)
MIN_BITS = (
    "the result is in bits (log base 2). The loss uses the natural log (nats): use math.log."
)
MIN_SIGN = "the sign is wrong: an entropy -sum q log q is >= 0."
MIN_ZERO_LOG_ZERO = (
    "0 log 0 must count as 0 (the limit of q log q as q -> 0): with epsilon = 0 or 1 some "
    "classes have no mass, and log(0) raises or gives NaN. Skip the classes with q = 0 (or use "
    "torch.special.xlogy / scipy's entr)."
)


def _entropy(masses: list[tuple[float, int]]) -> float:
    """-sum q log q over (mass, how many classes) pairs, 0 log 0 = 0."""
    return -sum(n * q * math.log(q) for q, n in masses if q > 0)


def _min_masses(V: int, eps: float, pytorch: bool, bug: str = "") -> list[tuple[float, int]]:
    if pytorch and bug != "ours for true":
        gold = 1 - eps if bug == "true gold" else 1 - eps + eps / V
        return [(gold, 1), (eps / V, V - 1)]
    if bug == "pad mass":
        return [(1 - eps, 1), (eps / (V - 1), V - 1)]
    if bug == "pytorch for false":
        return [(1 - eps + eps / V, 1), (eps / V, V - 1)]
    return [(1 - eps, 1), (eps / (V - 2), V - 2)]


def _min_variants(V: int, eps: float, pytorch: bool) -> dict[str, float]:
    exact = _entropy(_min_masses(V, eps, pytorch))
    (gold, _), (smooth, count) = _min_masses(V, eps, pytorch)
    return {
        MIN_ZERO: 0.0,
        MIN_PAD_MASS: _entropy(_min_masses(V, eps, pytorch, "pad mass")),
        MIN_FLAG_IGNORED_PYTORCH: _entropy(_min_masses(V, eps, True)),
        MIN_FLAG_IGNORED_OURS: _entropy(_min_masses(V, eps, False)),
        MIN_TRUE_GOLD: _entropy(_min_masses(V, eps, pytorch, "true gold")),
        MIN_NO_GOLD_TERM: _entropy([(smooth, count)]),
        MIN_GOLD_ONLY: _entropy([(gold, 1)]),
        MIN_ONE_SMOOTH_TERM: _entropy([(gold, 1), (smooth, 1)]),
        MIN_BITS: exact / math.log(2),
        MIN_SIGN: -exact,
    }


def _as_float(name: str, value) -> float:
    """Accept Python and NumPy numbers and 0-d tensors."""
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise ExerciseWrong(f"{name}: return a number (a float), got {type(value).__name__} "
                        f"{value!r}.")


@exercise("10.2", reference="scratchformer.losses")
def minimum_loss(fn: Callable) -> None:
    """Check ``fn(vocab_size, epsilon, pad_gets_mass) -> float``, the infimum of the
    label-smoothed loss per token, for random vocabularies and epsilons, both conventions, the
    edge cases epsilon = 0 and 1 and the smallest vocabularies; NumPy ints accepted."""
    __tracebackhide__ = True
    import numpy as np

    name = "minimum_loss"
    g = _generator()
    probes, failing = [], []
    for k, pytorch in enumerate((False, True) * 3):
        V = int(torch.randint(4, 60, (1,), generator=g))
        eps = round(0.02 + 0.45 * float(torch.rand((), generator=g)), 3)
        size = np.int64(V) if k == 2 else V           # a NumPy int is an int too
        actual = _as_float(name, _call(name, fn, size, eps, pytorch))
        expected = _entropy(_min_masses(V, eps, pytorch))
        probes.append((actual, _min_variants(V, eps, pytorch)))
        if not (math.isfinite(actual) and math.isclose(actual, expected, rel_tol=1e-6,
                                                       abs_tol=1e-9)):
            failing.append((V, eps, pytorch, actual, expected))
    if failing:
        V, eps, pytorch, actual, expected = failing[0]
        what = f"minimum_loss({V}, {eps}, pad_gets_mass={pytorch})"
        bug = agreeing_bug(probes)
        if bug is not None:
            raise ExerciseWrong(f"{name}: {what} is wrong. Likely bug: {bug}")
        if math.isnan(actual):
            raise ExerciseWrong(f"{name}: {what} returned nan. Likely bug: {MIN_ZERO_LOG_ZERO}")
        raise ExerciseWrong(f"{name}: {what} returned {actual:.6g}, expected {expected:.6g}: "
                            "the entropy -sum q log q of the smoothed target q (natural log).")
    # edge cases: no smoothing (a one-hot target: 0), all the mass smoothed, the smallest V
    for V, eps, pytorch in ((7, 0.0, False), (9, 0.0, True), (6, 1.0, False), (5, 1.0, True),
                            (3, 0.3, False), (2, 0.3, True)):
        try:
            actual = _as_float(name, _call(name, fn, V, eps, pytorch))
        except ExerciseWrong as error:
            raise ExerciseWrong(f"{error} Likely bug: {MIN_ZERO_LOG_ZERO}") from error
        expected = _entropy(_min_masses(V, eps, pytorch))
        if not (math.isfinite(actual) and math.isclose(actual, expected, rel_tol=1e-6,
                                                       abs_tol=1e-9)):
            hint = (f" Likely bug: {MIN_ZERO_LOG_ZERO}" if eps in (0.0, 1.0)
                    and not math.isfinite(actual) else "")
            raise ExerciseWrong(f"{name}: minimum_loss({V}, {eps}, pad_gets_mass={pytorch}) "
                                f"returned {actual:.6g}, expected {expected:.6g}.{hint}")
    _passed(name, "the entropy of the smoothed target for both conventions, random V and "
                  "epsilon, epsilon = 0 and 1, V = 2 and 3.")
