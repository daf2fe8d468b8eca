"""Checkers for chapter 11 (``scratchformer.schedules``): the Noam rate (exercise 11.1) and
warmup followed by cosine decay, as a closed form and as a ``LambdaLR`` (exercise 11.2)."""

from __future__ import annotations

import importlib
import io
import math
import numbers
import warnings
from collections.abc import Callable

import numpy as np
import torch

from scratchformer.checks._common import (
    NOT_ATTEMPTED,
    ExerciseNotAttempted,
    ExerciseWrong,
    _call,
    _generator,
    _passed,
    _raised,
)
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import agreeing_bug, distinct_ints

__all__ = ["noam_rate", "warmup_cosine_schedule"]


def _reference():
    return importlib.import_module("scratchformer.schedules")


def _draw(g: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=g))


def _same(a, b, rel: float = 1e-6) -> bool:
    """Two numbers (or tensors of numbers) equal to a relative tolerance; NaN never matches."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rel, atol=1e-12))
    try:
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)
    except (TypeError, ValueError, OverflowError):
        return False


def _quietly(name: str, fn: Callable, *args, **kwargs):
    """``_call`` with NumPy's and Python's warnings silenced (0 ** -0.5 in NumPy warns)."""
    __tracebackhide__ = True
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return _call(name, fn, *args, **kwargs)


def _as_float(name: str, what: str, value) -> float:
    """Accept Python and NumPy numbers, 0-d NumPy arrays and 0-d tensors; reject the rest."""
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise ExerciseWrong(f"{name}: {what} returned a tensor of shape {tuple(value.shape)}; "
                                "return one number (a Python float: float(x) or x.item()).")
        if value.is_complex():
            raise ExerciseWrong(f"{name}: {what} returned a complex tensor; return a float.")
        return float(value.item())
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or not np.issubdtype(value.dtype, np.number):
            raise ExerciseWrong(f"{name}: {what} returned a NumPy array of shape {value.shape}; "
                                "return one number (a Python float).")
        value = value[()]
    if isinstance(value, bool) or isinstance(value, np.bool_):
        raise ExerciseWrong(f"{name}: {what} returned the bool {value!r}; return a float.")
    if isinstance(value, numbers.Real):
        return float(value)
    if value is None:
        raise ExerciseWrong(f"{name}: {what} returned None. Did you forget the `return`?")
    raise ExerciseWrong(f"{name}: {what} should return a float, got {type(value).__name__} "
                        f"{value!r:.60}.")


# --------------------------------------------------------------------------------------------
# Exercise 11.1: noam_rate(step, d_model, warmup, factor=1.0) -> float
# --------------------------------------------------------------------------------------------

WARMUP_EXPONENT = (
    "the warmup term uses warmup^-0.5 instead of warmup^-1.5. With step · warmup^-1.5 both terms "
    "of the min are equal at step == warmup, so the rate rises linearly to the peak and then "
    "decays; with warmup^-0.5 the rising line is far too high."
)
EXPONENTS_SWAPPED = (
    "the exponents are swapped: the decay term is step^-0.5 and the warmup term step · "
    "warmup^-1.5, not step^-1.5 and step · warmup^-0.5."
)
MAX = (
    "max instead of min: the rate is the smaller of the two terms, min(step^-0.5, step · "
    "warmup^-1.5), so that it rises during the warmup and decays afterwards."
)
NO_D_MODEL = (
    "the factor d_model^-0.5 is missing: the rate is factor · d_model^-0.5 · min(...)."
)
D_MODEL_SIGN = (
    "d_model enters with the wrong sign: the rate is multiplied by d_model^-0.5 (a larger model "
    "gets a smaller rate), not by d_model^0.5."
)
NO_FACTOR = (
    "`factor` is ignored: it multiplies the whole rate (factor · d_model^-0.5 · min(...))."
)
STEP_PLUS_ONE = (
    "the step is off by one: you compute the rate of step + 1. Steps count from 1 and the rate "
    "of step k uses k itself; only step 0 is special (it counts as step 1)."
)
WARMUP_LINEAR_ONLY = (
    "the warmup term is step / warmup (warmup^-1) instead of step · warmup^-1.5: then the two "
    "terms do not meet at step == warmup."
)
D_MODEL_INT_POWER = (
    "integer arithmetic in the exponent of d_model: in Python -1 // 2 is -1, so d_model ** "
    "(-1 // 2) is 1 / d_model. Write the exponent as -0.5."
)
WARMUP_INT_POWER = (
    "integer arithmetic in the exponent of warmup: in Python -3 // 2 is -2, so warmup ** "
    "(-3 // 2) is warmup^-2. Write the exponent as -1.5."
)
INT_NEGATIVE_POWER = (
    "an int raised to a negative int power: NumPy refuses it (and in Python -1 // 2 is -1, "
    "-3 // 2 is -2). Write the exponents as floats, -0.5 and -1.5."
)
ISQRT_STEP = (
    "math.isqrt (or another integer square root) for step^-0.5: isqrt rounds the square root "
    "down to an int, so the decay is wrong whenever step is not a perfect square. Use "
    "step ** -0.5 or 1 / math.sqrt(step)."
)
ISQRT_BOTH = (
    "math.isqrt (an integer square root) for the square roots of step and d_model: isqrt "
    "rounds down to an int. Use ** -0.5 or math.sqrt."
)


def _noam_formula(step, d, w, f, *, step_power=-0.5, warmup_power=-1.5, d_power=-0.5,
                  use_factor=True, use_max=False, shift=0, isqrt="") -> float:
    """The Noam rate with switches that reproduce known bugs; float64, never raises."""
    s = max(int(step), 1) + shift
    decay = 1 / math.isqrt(s) if "step" in isqrt else s ** step_power
    rise = s * float(w) ** warmup_power
    scale = 1 / math.isqrt(int(d)) if "d" in isqrt else float(d) ** d_power
    return (f if use_factor else 1.0) * scale * (max if use_max else min)(rise, decay)


_NOAM_BUGS: dict[str, dict] = {
    WARMUP_EXPONENT: dict(warmup_power=-0.5),
    EXPONENTS_SWAPPED: dict(step_power=-1.5, warmup_power=-0.5),
    MAX: dict(use_max=True),
    NO_D_MODEL: dict(d_power=0.0),
    D_MODEL_SIGN: dict(d_power=0.5),
    NO_FACTOR: dict(use_factor=False),
    STEP_PLUS_ONE: dict(shift=1),
    WARMUP_LINEAR_ONLY: dict(warmup_power=-1.0),
    D_MODEL_INT_POWER: dict(d_power=-1.0),
    WARMUP_INT_POWER: dict(warmup_power=-2.0),
    ISQRT_STEP: dict(isqrt="step"),
    ISQRT_BOTH: dict(isqrt="step d"),
}

STEP_ZERO_RAISES = (
    "step 0 must be treated as step 1: LambdaLR asks for the rate of step 0 when it is built, "
    "and 0 ** -0.5 divides by zero. Replace step by max(step, 1) first."
)
STEP_ZERO_NOT_FINITE = (
    "at step 0 your rate is {value}: 0 ** -0.5 is infinite in NumPy and PyTorch. Step 0 must be "
    "treated as step 1 (max(step, 1)), so the rate is finite."
)
STEP_ZERO_VALUE = (
    "at step 0 your rate is {value:.6g}, but step 0 must be treated as step 1, whose rate is "
    "{expected:.6g} (min(0 ** -0.5, 0) is 0 or inf, never the rate of the first step). Replace "
    "step by max(step, 1) first."
)


def _noam_probes(g: torch.Generator) -> list[tuple]:
    """(step, d_model, warmup, factor) with every field different: steps early in the warmup
    (at most sqrt(warmup), where the two terms of the min are far apart), later in it, at its
    end and after it; NumPy ints in some probes; factors away from 1."""
    probes = []
    where = ["early", "after", "during", "after", "at", "after", "early"]
    for index, side in enumerate(where):
        while True:
            d_model, warmup = _draw(g, 16, 1024), _draw(g, 100, 2000)
            step = {"early": _draw(g, 2, math.isqrt(warmup)),
                    "during": _draw(g, warmup // 2, warmup - 1), "at": warmup,
                    "after": _draw(g, warmup + 1, 3 * warmup)}[side]
            if len({step, d_model, warmup}) == (2 if side == "at" else 3):
                break
        factor = _uniform(g, 1.5, 3.0) if index % 2 else _uniform(g, 0.2, 0.7)
        if index in (2, 5):                                   # NumPy integers as arguments
            step, d_model, warmup = np.int64(step), np.int64(d_model), np.int64(warmup)
        probes.append((step, d_model, warmup, factor))
    return probes


def _show(args: tuple) -> str:
    step, d_model, warmup, factor = args
    return f"noam_rate({int(step)}, {int(d_model)}, {int(warmup)}, factor={factor:.4g})"


@exercise("11.1", reference="scratchformer.schedules")
def noam_rate(fn: Callable) -> None:
    """Check ``fn(step, d_model, warmup, factor=1.0) -> float`` against the reference: random
    probes in which every argument differs, on both sides of the warmup; step 0; a default
    factor; NumPy integers; return types. A bug is named only when every probe agrees."""
    __tracebackhide__ = True
    name = "noam_rate"
    reference = _reference().noam_rate
    probes = _noam_probes(_generator())
    answers = []
    for args in probes:
        try:
            out = _quietly(name, fn, *args)
        except ExerciseWrong as wrong:
            if "negative integer powers" in str(wrong):
                raise ExerciseWrong(f"{wrong} Likely bug: {INT_NEGATIVE_POWER}") from wrong
            raise
        answers.append(_as_float(name, _show(args), out))
    expected = [reference(*a) for a in probes]
    wrong = [(a, x, e) for a, x, e in zip(probes, answers, expected) if not _same(x, e)]
    if wrong:
        candidates = [(x, {hint: _noam_formula(*a, **switches)
                           for hint, switches in _NOAM_BUGS.items()})
                      for a, x in zip(probes, answers)]
        bug = agreeing_bug(candidates, same=_same)
        args, answer, right = wrong[0]
        where = f"{_show(args)} returned {answer:.6g}, expected {right:.6g}"
        if bug is not None:
            raise ExerciseWrong(f"{name}: {where}. Likely bug: {bug}")
        raise ExerciseWrong(
            f"{name}: {where} ({len(wrong)} of {len(probes)} probes differ). Check the formula "
            "factor · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5) term by term, and that "
            "nothing is rounded to an int on the way.")
    # the default factor
    step, d_model, warmup, _ = probes[1]
    default = _as_float(name, "noam_rate(step, d_model, warmup)",
                        _quietly(name, fn, step, d_model, warmup))
    if not _same(default, reference(step, d_model, warmup)):
        raise ExerciseWrong(f"{name}: without a factor, noam_rate({int(step)}, {int(d_model)}, "
                            f"{int(warmup)}) returned {default:.6g}, expected "
                            f"{reference(step, d_model, warmup):.6g}: the default is factor=1.0.")
    # step 0 counts as step 1
    for args in probes[:2]:
        zero_args = (0, *args[1:])
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                value = fn(*zero_args)
        except NotImplementedError:
            raise ExerciseNotAttempted(NOT_ATTEMPTED.format(name=name)) from None
        except Exception as error:
            raise _raised(name, error, f"At step 0: {STEP_ZERO_RAISES}") from error
        value = _as_float(name, _show(zero_args), value)
        right = reference(*zero_args)
        if not math.isfinite(value):
            raise ExerciseWrong(f"{name}: {STEP_ZERO_NOT_FINITE.format(value=value)}")
        if not _same(value, right):
            raise ExerciseWrong(f"{name}: {STEP_ZERO_VALUE.format(value=value, expected=right)}")
    _passed(name, f"equals the reference at {len(probes)} random (step, d_model, warmup, factor) "
                  "on both sides of the warmup and at its peak, with the default factor, with "
                  "NumPy integers, and at step 0 (treated as step 1).")


# --------------------------------------------------------------------------------------------
# Exercise 11.2: warmup_cosine_ratio(step, warmup, total_steps, min_ratio=0.0) -> float and
# warmup_cosine_schedule(optimizer, warmup, total_steps, min_ratio=0.0) -> LambdaLR
# --------------------------------------------------------------------------------------------

RATIO_WARMUP_BEHIND = (
    "the warmup is one step behind: step 1 must already run at 1/warmup of the peak (k / "
    "warmup for k = 1..warmup, reaching 1 at step == warmup), not at 0."
)
RATIO_WARMUP_FROM_MIN = (
    "the warmup starts from min_ratio: it rises linearly from about 0 (k / warmup), and "
    "min_ratio only sets where the cosine decay ends."
)
RATIO_NO_WARMUP = (
    "there is no warmup: during the first `warmup` steps the ratio must rise linearly, k / "
    "warmup, to 1 at step == warmup."
)
RATIO_INT_DIVISION = (
    "integer division in the warmup: k // warmup is 0 until step == warmup. Use k / warmup."
)
RATIO_COSINE_OVER_TOTAL = (
    "the cosine does not reach min_ratio at total_steps: its progress must be (k - warmup) / "
    "(total_steps - warmup), which is 1 at step == total_steps, not (k - warmup) / total_steps."
)
RATIO_COSINE_FROM_ZERO = (
    "the cosine counts from step 0 instead of from the end of the warmup: its progress is "
    "(k - warmup) / (total_steps - warmup), so the decay starts at 1 right after the warmup."
)
RATIO_MIN_IGNORED = (
    "min_ratio is ignored: the decay ends at min_ratio, not 0. Rescale the cosine, min_ratio + "
    "(1 - min_ratio) · ½(1 + cos(π · progress))."
)
RATIO_MIN_CLAMPED = (
    "min_ratio is applied as a floor (max(min_ratio, cosine)) instead of rescaling the cosine: "
    "the curve must be min_ratio + (1 - min_ratio) · ½(1 + cos(π · progress)), which reaches "
    "min_ratio exactly at total_steps and is smooth on the way."
)
RATIO_NOT_HELD = (
    "after total_steps the ratio must stay at min_ratio; yours follows the cosine back up. "
    "Clamp the progress to at most 1."
)
RATIO_NO_HALF = (
    "the cosine term must be ½(1 + cos(π · progress)), which goes from 1 to 0; cos(π · progress) "
    "alone goes from 1 to -1 and makes the learning rate negative."
)
RATIO_STEP_ZERO = (
    "step 0 must be treated as step 1 (as in noam_rate): the ratio at step 0 is 1 / warmup, "
    "not 0."
)
RATIO_DEGENERATE = (
    "with warmup == total_steps there is no decay phase: the ratio reaches 1 at step == warmup "
    "and is min_ratio after total_steps. Guard the division by total_steps - warmup, which is 0 "
    "here."
)


def _ratio_formula(step, W, T, m, *, warmup="linear", progress="right", floor="rescale",
                   hold=True, half=True, zero_as_one=True) -> float:
    """r(k) with switches that reproduce known bugs; float64, returns NaN instead of raising."""
    k = max(step, 1) if zero_as_one else step
    if k <= W:
        return {"linear": k / W, "behind": (k - 1) / W, "from_min": m + (1 - m) * k / W,
                "none": 1.0, "int": float(k // W)}[warmup]
    if progress == "right" and T == W:
        p = 1.0
    else:
        p = {"right": (k - W) / max(T - W, 1), "over_total": (k - W) / T,
             "from_zero": k / T}[progress]
    if hold:
        p = min(p, 1.0)
    c = 0.5 * (1 + math.cos(math.pi * p)) if half else math.cos(math.pi * p)
    return {"rescale": m + (1 - m) * c, "ignored": c, "floor": max(m, c)}[floor]


_RATIO_BUGS: dict[str, dict] = {
    RATIO_WARMUP_BEHIND: dict(warmup="behind"),
    RATIO_WARMUP_FROM_MIN: dict(warmup="from_min"),
    RATIO_NO_WARMUP: dict(warmup="none"),
    RATIO_INT_DIVISION: dict(warmup="int"),
    RATIO_COSINE_OVER_TOTAL: dict(progress="over_total"),
    RATIO_COSINE_FROM_ZERO: dict(progress="from_zero"),
    RATIO_MIN_IGNORED: dict(floor="ignored"),
    RATIO_MIN_CLAMPED: dict(floor="floor"),
    RATIO_NOT_HELD: dict(hold=False),
    RATIO_NO_HALF: dict(half=False),
}

SCHEDULE_NOT_A_SCHEDULER = (
    "return the scheduler: a torch.optim.lr_scheduler.LambdaLR built on the optimizer you were "
    "given (it sets the optimizer's learning rates; the training loop calls its step())."
)
SCHEDULE_OFF_BY_ONE = (
    "off by one step: LambdaLR calls the lambda with e = 0 for the first optimizer step (e counts "
    "the scheduler.step() calls so far), so optimizer step k runs with e = k - 1. Return the "
    "ratio of step e + 1."
)
SCHEDULE_AHEAD = (
    "one step ahead: optimizer step k runs with the lambda's argument e = k - 1, so the ratio "
    "of step e + 1 is the one to return, not that of step e + 2."
)
SCHEDULE_ALREADY_SCALED = (
    "the lambda multiplies by the learning rate itself: LambdaLR already multiplies its result "
    "by each group's initial lr, so the lambda must return the ratio alone."
)
SCHEDULE_GROUP0_SCALED = (
    "the lambda multiplies by the first parameter group's learning rate: LambdaLR already "
    "multiplies its result by each group's own initial lr; return the ratio alone."
)
SCHEDULE_COUNTS_CALLS = (
    "the lambda counts its own calls instead of using its argument: LambdaLR calls it once per "
    "parameter group at every step (and once more when it is built), so a counter runs ahead. "
    "Compute the step from the argument e (step e + 1)."
)
SCHEDULE_MIN_RATIO_DROPPED = (
    "min_ratio is not passed on: the schedule's learning rates decay to 0 instead of min_ratio "
    "times the initial lr. Pass min_ratio to the ratio."
)
SCHEDULE_STATE = (
    "the scheduler's state_dict() cannot be loaded with torch.load(..., weights_only=True), so "
    "a checkpoint of it could not be resumed safely. LambdaLR saves the attributes of a lambda "
    "that is a callable object (not a plain function); keep only numbers there, or use a plain "
    "function (a closure)."
)


def _ratio_configs(g: torch.Generator) -> list[tuple]:
    """(warmup, total_steps, min_ratio) in which the fields differ: min_ratio 0 (the default),
    > 0, no warmup (warmup = 1), and warmup == total_steps (no decay phase) last."""
    W1, W2 = distinct_ints(g, 2, 3, 12)
    T1, T2, T3 = distinct_ints(g, 3, 25, 60)
    W4 = _draw(g, 4, 9)
    return [(W1, T1, 0.0), (W2, T2, _uniform(g, 0.05, 0.45)), (1, T3, _uniform(g, 0.5, 0.9)),
            (W4, W4, _uniform(g, 0.1, 0.4))]


def _require_ratio(name: str, ratio_fn: Callable, configs: list[tuple]) -> None:
    """The closed form, at every step 1..total_steps + 6 of every configuration, then step 0."""
    __tracebackhide__ = True
    reference = _reference().warmup_cosine_ratio
    probes, first_wrong = [], None
    for W, T, m in configs:
        steps = range(1, T + 7)

        def args(k, W=W, T=T, m=m):        # min_ratio 0: left to its default
            return (k, W, T) if m == 0.0 else (k, W, T, m)

        values = []
        for k in steps:
            try:
                out = _quietly(name, ratio_fn, *args(k))
            except ExerciseWrong as wrong:
                if W == T and k > T:
                    raise ExerciseWrong(f"{wrong} Likely bug: {RATIO_DEGENERATE}") from wrong
                raise
            values.append(_as_float(name, f"warmup_cosine_ratio{args(k)}", out))
        actual = torch.tensor(values, dtype=torch.float64)
        expected = torch.tensor([reference(*args(k)) for k in steps], dtype=torch.float64)
        if not _same(actual, expected):
            bad = next(i for i in range(len(values)) if not _same(actual[i], expected[i]))
            if W == T and first_wrong is None and bad + 1 >= T:     # at or after step T
                raise ExerciseWrong(f"{name}: warmup_cosine_ratio{args(bad + 1)} returned "
                                    f"{values[bad]:.6g}, expected {expected[bad]:.6g}. Likely "
                                    f"bug: {RATIO_DEGENERATE}")
            if first_wrong is None:
                first_wrong = (args(bad + 1), values[bad], expected[bad].item(), W, T, m)
        if W != T:        # the degenerate configuration gives no evidence about the others
            probes.append((actual, {hint: torch.tensor(
                [_ratio_formula(k, W, T, m, **switches) for k in steps], dtype=torch.float64)
                for hint, switches in _RATIO_BUGS.items()}))
    if first_wrong is not None:
        call, value, right, W, T, m = first_wrong
        bug = agreeing_bug(probes, same=_same)
        where = (f"warmup_cosine_ratio{call} returned {value:.6g}, expected {right:.6g} "
                 f"(warmup={W}, total_steps={T}, min_ratio={m:.3g})")
        if bug is not None:
            raise ExerciseWrong(f"{name}: {where}. Likely bug: {bug}")
        raise ExerciseWrong(f"{name}: {where}. Check the three pieces in turn: the warmup k / "
                            "warmup, the cosine from 1 at step warmup to min_ratio at "
                            "total_steps, and min_ratio after that.")
    W, T, m = configs[1]
    value = _as_float(name, f"warmup_cosine_ratio(0, {W}, {T}, {m:.3g})",
                      _quietly(name, ratio_fn, 0, W, T, m))
    if not _same(value, reference(0, W, T, m)):
        raise ExerciseWrong(f"{name}: warmup_cosine_ratio(0, {W}, {T}, {m:.3g}) returned "
                            f"{value:.6g}. Likely bug: {RATIO_STEP_ZERO}")


def _scheduled_lrs(name: str, schedule_fn: Callable, W: int, T: int, m: float,
                   base_lrs: tuple[float, float], call: str) -> torch.Tensor:
    """Drive a real SGD with two parameter groups for T + 6 steps under the learner's scheduler:
    the learning rate of every group at every step, (T + 6, 2)."""
    __tracebackhide__ = True
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)],
                                momentum=0.9)
    args = {"positional": (optimizer, W, T, m), "keyword": (optimizer, W, T),
            "default": (optimizer, W, T)}[call]
    kwargs = {"min_ratio": m} if call == "keyword" else {}
    scheduler = _quietly(name, schedule_fn, *args, **kwargs)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise ExerciseWrong(f"{name}: it returned {type(scheduler).__name__}. "
                            f"{SCHEDULE_NOT_A_SCHEDULER}")
    rows = []
    for _ in range(T + 6):
        rows.append([float(group["lr"]) for group in optimizer.param_groups])
        for p in params:
            p.grad = torch.full_like(p, 0.1)
        optimizer.step()
        _quietly(f"{name}: scheduler.step()", scheduler.step)
    state = scheduler.state_dict()
    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception as error:
        raise ExerciseWrong(f"{name}: {SCHEDULE_STATE} ({type(error).__name__})") from error
    return torch.tensor(rows, dtype=torch.float64)


def _schedule_variants(W: int, T: int, m: float, base: tuple[float, float],
                       n: int) -> dict[str, torch.Tensor]:
    """What each known scheduler bug would give: (n, 2) learning rates per step and group."""
    r = [_ratio_formula(k, W, T, m) for k in range(0, n + 3)]     # r[k]; r[0] = r[1]
    r0 = [_ratio_formula(k, W, T, 0.0) for k in range(0, n + 3)]  # min_ratio dropped
    counted = [_ratio_formula(c, W, T, m) for c in range(1, 2 * n + 4)]

    def table(f):
        return torch.tensor([[f(k, i) for i in range(2)] for k in range(1, n + 1)],
                            dtype=torch.float64)

    return {
        SCHEDULE_OFF_BY_ONE: table(lambda k, i: base[i] * r[k - 1]),
        SCHEDULE_AHEAD: table(lambda k, i: base[i] * r[k + 1]),
        SCHEDULE_ALREADY_SCALED: table(lambda k, i: base[i] ** 2 * r[k]),
        SCHEDULE_GROUP0_SCALED: table(lambda k, i: base[i] * base[0] * r[k]),
        SCHEDULE_COUNTS_CALLS: table(lambda k, i: base[i] * counted[2 * (k - 1) + i]),
        SCHEDULE_MIN_RATIO_DROPPED: table(lambda k, i: base[i] * r0[k]),
    }


@exercise("11.2", reference="scratchformer.schedules")
def warmup_cosine_schedule(schedule_fn: Callable, ratio_fn: Callable) -> None:
    """Check ``warmup_cosine_ratio`` (the closed form, at every step of configurations in which
    warmup, total steps and min_ratio differ, including no warmup and warmup == total_steps)
    and ``warmup_cosine_schedule`` (a real optimizer with two parameter groups driven past
    total_steps; the learning rate of every step; a state_dict that loads with
    weights_only=True). A bug is named only when every configuration agrees."""
    __tracebackhide__ = True
    name = "warmup_cosine_schedule"
    g = _generator()
    configs = _ratio_configs(g)
    _require_ratio("warmup_cosine_ratio", ratio_fn, configs)
    reference = _reference().warmup_cosine_ratio
    calls = ["default", "keyword", "positional", "positional"]
    probes, first_wrong = [], None
    for (W, T, m), call in zip(configs, calls):
        base = (_uniform(g, 0.05, 0.6), _uniform(g, 1.2, 3.0))
        actual = _scheduled_lrs(name, schedule_fn, W, T, m, base, call)
        expected = torch.tensor([[b * reference(k, W, T, m) for b in base]
                                 for k in range(1, T + 7)], dtype=torch.float64)
        if not _same(actual, expected):
            if first_wrong is None:
                k = next(i for i in range(len(actual)) if not _same(actual[i], expected[i]))
                first_wrong = (k + 1, actual[k].tolist(), expected[k].tolist(), W, T, m)
        probes.append((actual, _schedule_variants(W, T, m, base, T + 6)))
    if first_wrong is not None:
        k, got, right, W, T, m = first_wrong
        bug = agreeing_bug(probes, same=_same)
        where = (f"optimizer step {k} ran at learning rates {got[0]:.6g} and {got[1]:.6g} (two "
                 f"parameter groups), expected {right[0]:.6g} and {right[1]:.6g} (warmup={W}, "
                 f"total_steps={T}, min_ratio={m:.3g})")
        if bug is not None:
            raise ExerciseWrong(f"{name}: {where}. Likely bug: {bug}")
        raise ExerciseWrong(f"{name}: {where}. Optimizer step k must run at each group's "
                            "initial lr times warmup_cosine_ratio(k, ...); LambdaLR's argument "
                            "counts the scheduler steps taken so far (0 for the first step).")
    _passed(name, f"warmup_cosine_ratio equals the reference at every step of {len(configs)} "
                  "configurations (with and without warmup, min_ratio 0 and > 0, warmup == "
                  "total_steps, after total_steps, step 0), and under warmup_cosine_schedule "
                  "every step of a real optimizer with two parameter groups runs at the right "
                  "learning rate; its state_dict loads with weights_only=True.")
