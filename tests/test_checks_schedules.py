"""The chapter 11 checkers bite: references pass, stubs are 'not attempted', every known-buggy
implementation fails with its targeted hint, and correct implementations written differently
pass."""

import math

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from scratchformer import checks
from scratchformer.schedules import (
    noam_rate,
    noam_schedule,
    warmup_cosine_ratio,
    warmup_cosine_schedule,
)


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


# ---- references pass, stubs are not attempted --------------------------------------------------

def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(3):  # fresh random probes every call
        checks.noam_rate(noam_rate)
        checks.warmup_cosine_schedule(warmup_cosine_schedule, warmup_cosine_ratio)
    assert capsys.readouterr().out.count("✅") == 6


@pytest.mark.parametrize("call", [
    lambda: checks.noam_rate(stub),
    lambda: checks.warmup_cosine_schedule(stub, stub),
    lambda: checks.warmup_cosine_schedule(stub, warmup_cosine_ratio),      # ratio done only
    lambda: checks.warmup_cosine_schedule(warmup_cosine_schedule, stub),   # schedule uses stub
], ids=["noam", "cosine-both", "cosine-schedule", "cosine-ratio"])
def test_stub_is_not_attempted(call):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        call()


def test_checkers_are_exported_and_numbered():
    assert {"noam_rate", "warmup_cosine_schedule"} <= set(checks.__all__)
    assert checks.REGISTRY["noam_rate"] == ("11.1", "scratchformer.schedules")
    assert checks.REGISTRY["warmup_cosine_schedule"] == ("11.2", "scratchformer.schedules")


# ---- Exercise 11.1: noam_rate ---------------------------------------------------------------------

def learner_noam(step, d_model, warmup, factor=1.0, *, step_power=-0.5, warmup_power=-1.5,
                 d_power=-0.5, use_factor=True, use_max=False, shift=0, zero="one",
                 isqrt_step=False, isqrt_d=False):
    """A learner's noam_rate, written independently of the reference, with switchable bugs.
    Sizes are converted to float first, so that NumPy ints give no error."""
    d_model, warmup = float(d_model), float(warmup)
    if zero == "one":
        step = max(step, 1)
    step = step + shift
    if zero == "numpy":      # an equivalent form for step >= 1; at step 0, inf * 0 = NaN
        s = np.float64(step)
        return factor * d_model ** -0.5 * s ** -0.5 * min(1.0, (s / warmup) ** 1.5)
    decay = 1 / math.isqrt(step) if isqrt_step else step ** step_power
    rise = step * warmup ** warmup_power
    pick = max if use_max else min
    scale = 1 / math.isqrt(int(d_model)) if isqrt_d else d_model ** d_power
    return (factor if use_factor else 1.0) * scale * pick(decay, rise)


def test_the_independent_noam_is_right(capsys):
    checks.noam_rate(learner_noam)
    assert "✅" in capsys.readouterr().out


def noam_if_else(step, d_model, warmup, factor=1.0):
    step = max(1, int(step))
    if step < warmup:
        rate = step / warmup ** 1.5
    else:
        rate = 1 / math.sqrt(step)
    return factor * rate / math.sqrt(d_model)


def noam_numpy(step, d_model, warmup, factor=1.0):
    step = np.maximum(step, 1).astype(np.float64)                # a NumPy float64 back
    return factor * np.power(d_model, -0.5) * np.minimum(step ** -0.5, step * warmup ** -1.5)


def noam_torch(step, d_model, warmup, factor=1.0):
    s = torch.tensor(max(int(step), 1), dtype=torch.float32)     # a 0-d float32 tensor back
    w, d = torch.tensor(float(warmup)), torch.tensor(float(d_model))
    return factor * d.rsqrt() * torch.minimum(s.rsqrt(), s * w.pow(-1.5))


def noam_log_space(step, d_model, warmup, factor=1.0):
    step = max(step, 1)
    log_rate = math.log(factor) - 0.5 * math.log(d_model) + min(
        -0.5 * math.log(step), math.log(step) - 1.5 * math.log(warmup))
    return math.exp(log_rate)


@pytest.mark.parametrize("fn", [noam_if_else, noam_numpy, noam_torch, noam_log_space],
                         ids=["if-else", "numpy", "torch-0d", "log-space"])
def test_correct_noam_written_differently_passes(fn, capsys):
    checks.noam_rate(fn)
    assert "✅" in capsys.readouterr().out


NOAM_BUGS = {
    "warmup^-0.5": (dict(warmup_power=-0.5), "warmup\\^-0.5 instead of warmup\\^-1.5"),
    "exponents swapped": (dict(step_power=-1.5, warmup_power=-0.5), "exponents are swapped"),
    "max for min": (dict(use_max=True), "max instead of min"),
    "no d_model^-0.5": (dict(d_power=0.0), "d_model\\^-0.5 is missing"),
    "d_model^+0.5": (dict(d_power=0.5), "d_model enters with the wrong sign"),
    "factor ignored": (dict(use_factor=False), "`factor` is ignored"),
    "step + 1": (dict(shift=1), "off by one"),
    "step / warmup": (dict(warmup_power=-1.0), "step / warmup"),
    "-1 // 2": (dict(d_power=-1), "-1 // 2"),
    "-3 // 2": (dict(warmup_power=-2), "-3 // 2"),
    "isqrt(step)": (dict(isqrt_step=True), "math.isqrt .* for step\\^-0.5"),
    "isqrt(step), isqrt(d_model)": (dict(isqrt_step=True, isqrt_d=True),
                                    "square roots of step and d_model"),
    "step 0 divides by zero": (dict(zero="raw"), "ZeroDivisionError.*step 0 must be treated"),
    "step 0 gives NaN": (dict(zero="numpy"), "at step 0 your rate is nan"),
}


@pytest.mark.parametrize("bug", NOAM_BUGS, ids=list(NOAM_BUGS))
def test_buggy_noam_gets_targeted_hint(bug):
    switches, hint = NOAM_BUGS[bug]
    for _ in range(3):   # fresh probes each time: the hint must not depend on luck
        with pytest.raises(checks.ExerciseWrong, match=hint):
            checks.noam_rate(lambda *a, **k: learner_noam(*a, **k, **switches))


def test_step_zero_giving_zero_is_named():
    def zero_at_zero(step, d_model, warmup, factor=1.0):
        return 0.0 if step == 0 else noam_rate(step, d_model, warmup, factor)
    with pytest.raises(checks.ExerciseWrong, match="at step 0 your rate is 0.*treated as step 1"):
        checks.noam_rate(zero_at_zero)


def test_default_factor_is_checked():
    def factor_two(step, d_model, warmup, factor=2.0):
        return noam_rate(step, d_model, warmup, factor)
    with pytest.raises(checks.ExerciseWrong, match="the default is factor=1.0"):
        checks.noam_rate(factor_two)


@pytest.mark.parametrize("returned, message", [
    (lambda r: [r], "should return a float, got list"),
    (lambda r: torch.tensor([r]), "tensor of shape \\(1,\\)"),
    (lambda r: np.array([r, r]), "NumPy array of shape \\(2,\\)"),
    (lambda r: None, "returned None"),
    (lambda r: f"{r}", "should return a float, got str"),
], ids=["list", "tensor-(1,)", "array-(2,)", "None", "str"])
def test_return_types_that_are_not_one_number_are_rejected(returned, message):
    with pytest.raises(checks.ExerciseWrong, match=message):
        checks.noam_rate(lambda *a, **k: returned(noam_rate(*a, **k)))


def test_int_arithmetic_that_rounds_to_zero_is_wrong():
    def floor_division(step, d_model, warmup, factor=1.0):
        step = max(step, 1)
        return factor * min(step ** -0.5, step // warmup ** 1.5) / d_model ** 0.5
    with pytest.raises(checks.ExerciseWrong, match="returned"):
        checks.noam_rate(floor_division)


def test_crash_is_wrong_with_the_line():
    def crash(step, d_model, warmup, factor=1.0):
        table = {}
        return table[step]
    with pytest.raises(checks.ExerciseWrong, match=r"raised KeyError \(line \d+: `return table\[step\]`"):
        checks.noam_rate(crash)


def test_numpy_ints_break_only_code_that_cannot_take_them():
    """np.int64 ** -1 raises in NumPy: the checker passes NumPy ints and names the crash."""
    def int_power(step, d_model, warmup, factor=1.0):
        step = max(step, 1)
        return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1 / warmup ** 0.5)
    with pytest.raises(checks.ExerciseWrong, match="raised ValueError.*int raised to a negative"):
        checks.noam_rate(int_power)


def test_a_bug_in_one_regime_only_gets_no_misleading_hint():
    """max for min only after the warmup: no single known bug explains every probe."""
    def half_max(step, d_model, warmup, factor=1.0):
        wrong = learner_noam(step, d_model, warmup, factor, use_max=True)
        return wrong if step > warmup else noam_rate(step, d_model, warmup, factor)
    with pytest.raises(checks.ExerciseWrong, match="Check the formula") as wrong:
        checks.noam_rate(half_max)
    assert "Likely bug" not in str(wrong.value)


# ---- Exercise 11.2: warmup_cosine_ratio and warmup_cosine_schedule ------------------------------

def learner_ratio(step, warmup, total_steps, min_ratio=0.0, *, warmup_kind="linear",
                  progress="right", floor="rescale", hold=True, half=True, zero="one",
                  guard=True):
    """A learner's warmup_cosine_ratio, independent of the reference, with switchable bugs."""
    k = max(step, 1) if zero == "one" else step
    if k <= warmup:
        if warmup_kind == "linear":
            return k / warmup
        if warmup_kind == "behind":
            return (k - 1) / warmup
        if warmup_kind == "from_min":
            return min_ratio + (1 - min_ratio) * k / warmup
        if warmup_kind == "int":
            return k // warmup
        return 1.0
    if progress == "right":
        length = total_steps - warmup
        p = (k - warmup) / (max(length, 1) if guard else length)
    elif progress == "over_total":
        p = (k - warmup) / total_steps
    else:
        p = k / total_steps
    if hold:
        p = min(p, 1.0)
    c = (1 + math.cos(math.pi * p)) / 2 if half else math.cos(math.pi * p)
    if floor == "rescale":
        return min_ratio + (1 - min_ratio) * c
    return c if floor == "ignored" else max(min_ratio, c)


def learner_schedule(optimizer, warmup, total_steps, min_ratio=0.0, *, ratio=learner_ratio,
                     offset=1, scaled="no"):
    """A learner's warmup_cosine_schedule with switchable bugs."""
    base = [group["lr"] for group in optimizer.param_groups]

    def factor(i):
        scale = {"no": 1.0, "own": base[i], "first": base[0]}[scaled]
        return lambda e: scale * ratio(e + offset, warmup, total_steps, min_ratio)

    return LambdaLR(optimizer, [factor(i) for i in range(len(base))])


def test_the_independent_cosine_is_right(capsys):
    checks.warmup_cosine_schedule(learner_schedule, learner_ratio)
    assert "✅" in capsys.readouterr().out


def ratio_numpy(step, warmup, total_steps, min_ratio=0.0):
    k = np.float64(max(step, 1))
    progress = np.clip((k - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
    cosine = min_ratio + (1 - min_ratio) * (1 + np.cos(np.pi * progress)) / 2
    return np.where(k <= warmup, k / warmup, cosine)                # a 0-d array back


def ratio_torch(step, warmup, total_steps, min_ratio=0.0):
    k = torch.tensor(float(max(step, 1)), dtype=torch.float64)
    if k <= warmup:
        return k / warmup
    if k >= total_steps:
        return torch.tensor(float(min_ratio))
    progress = (k - warmup) / (total_steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + torch.cos(torch.pi * progress))


class RatioObject:
    """A callable object as the lambda: LambdaLR saves its (numeric) attributes."""

    def __init__(self, warmup, total_steps, min_ratio):
        self.warmup, self.total_steps, self.min_ratio = warmup, total_steps, min_ratio

    def __call__(self, e):
        return warmup_cosine_ratio(e + 1, self.warmup, self.total_steps, self.min_ratio)


def schedule_object(optimizer, warmup, total_steps, min_ratio=0.0):
    return LambdaLR(optimizer, RatioObject(warmup, total_steps, min_ratio))


class CosineScheduler(LRScheduler):
    """A scheduler subclass computing the rates itself: an LRScheduler, not a LambdaLR."""

    def __init__(self, optimizer, warmup, total_steps, min_ratio=0.0):
        self.args = (warmup, total_steps, min_ratio)
        super().__init__(optimizer)

    def get_lr(self):
        return [base * warmup_cosine_ratio(self.last_epoch + 1, *self.args)
                for base in self.base_lrs]


@pytest.mark.parametrize("schedule, ratio", [
    (learner_schedule, ratio_numpy), (learner_schedule, ratio_torch),
    (schedule_object, warmup_cosine_ratio), (CosineScheduler, warmup_cosine_ratio),
], ids=["numpy-ratio", "torch-ratio", "callable-object", "scheduler-subclass"])
def test_correct_cosine_written_differently_passes(schedule, ratio, capsys):
    checks.warmup_cosine_schedule(schedule, ratio)
    assert "✅" in capsys.readouterr().out


RATIO_BUGS = {
    "warmup one step behind": (dict(warmup_kind="behind"), "warmup is one step behind"),
    "warmup from min_ratio": (dict(warmup_kind="from_min"), "warmup starts from min_ratio"),
    "no warmup": (dict(warmup_kind="none"), "there is no warmup"),
    "k // warmup": (dict(warmup_kind="int"), "integer division in the warmup"),
    "cosine over total_steps": (dict(progress="over_total"),
                                "does not reach min_ratio at total_steps"),
    "cosine from step 0": (dict(progress="from_zero"), "counts from step 0"),
    "min_ratio ignored": (dict(floor="ignored"), "min_ratio is ignored"),
    "min_ratio as a floor": (dict(floor="floor"), "applied as a floor"),
    "not held after total_steps": (dict(hold=False), "must stay at min_ratio"),
    "cos without ½(1 + ·)": (dict(half=False), "½\\(1 \\+ cos"),
    "step 0 gives 0": (dict(zero="raw"), "step 0 must be treated as step 1"),
    "warmup == total_steps divides by zero": (dict(guard=False),
                                              "ZeroDivisionError.*no decay phase"),
}


@pytest.mark.parametrize("bug", RATIO_BUGS, ids=list(RATIO_BUGS))
def test_buggy_ratio_gets_targeted_hint(bug):
    switches, hint = RATIO_BUGS[bug]

    def ratio(*args):
        return learner_ratio(*args, **switches)

    def schedule(optimizer, warmup, total_steps, min_ratio=0.0):
        return learner_schedule(optimizer, warmup, total_steps, min_ratio, ratio=ratio)

    for _ in range(3):
        with pytest.raises(checks.ExerciseWrong, match=hint):
            checks.warmup_cosine_schedule(schedule, ratio)


class CountingRatio:
    """A lambda that counts its own calls instead of reading its argument."""

    def __init__(self, warmup, total_steps, min_ratio):
        self.args, self.calls = (warmup, total_steps, min_ratio), 0

    def __call__(self, e):
        self.calls += 1
        return warmup_cosine_ratio(self.calls, *self.args)


class HoldsTheOptimizer:
    """A callable object that keeps a reference to the optimizer: its state is not numbers."""

    def __init__(self, optimizer, warmup, total_steps, min_ratio):
        self.optimizer, self.args = optimizer, (warmup, total_steps, min_ratio)

    def __call__(self, e):
        return warmup_cosine_ratio(e + 1, *self.args)


SCHEDULE_BUGS = {
    "off by one (Annotated Transformer style)": (
        lambda o, w, t, min_ratio=0.0: learner_schedule(o, w, t, min_ratio, offset=0), "off by one step"),
    "one step ahead": (lambda o, w, t, min_ratio=0.0: learner_schedule(o, w, t, min_ratio, offset=2),
                       "one step ahead"),
    "lambda times the group's lr": (lambda o, w, t, min_ratio=0.0: learner_schedule(o, w, t, min_ratio, scaled="own"),
                                    "multiplies by the learning rate itself"),
    "lambda times the first group's lr": (
        lambda o, w, t, min_ratio=0.0: learner_schedule(o, w, t, min_ratio, scaled="first"),
        "first parameter group's learning rate"),
    "a counter instead of the argument": (
        lambda o, w, t, min_ratio=0.0: LambdaLR(o, CountingRatio(w, t, min_ratio)), "counts its own calls"),
    "state that is not numbers": (
        lambda o, w, t, min_ratio=0.0: LambdaLR(o, HoldsTheOptimizer(o, w, t, min_ratio)), "weights_only=True"),
    "returns the lambda, not a scheduler": (
        lambda o, w, t, min_ratio=0.0: (lambda e: warmup_cosine_ratio(e + 1, w, t, min_ratio)),
        "it returned function.*return the scheduler"),
    "min_ratio not passed on": (
        lambda o, w, t, min_ratio=0.0: learner_schedule(o, w, t), "min_ratio is not passed on"),
}


@pytest.mark.parametrize("bug", SCHEDULE_BUGS, ids=list(SCHEDULE_BUGS))
def test_buggy_schedule_gets_targeted_hint(bug):
    schedule, hint = SCHEDULE_BUGS[bug]
    for _ in range(3):
        with pytest.raises(checks.ExerciseWrong, match=hint):
            checks.warmup_cosine_schedule(schedule, warmup_cosine_ratio)


def test_a_schedule_right_for_one_group_only_gets_no_misleading_hint():
    """The second parameter group keeps its lr constant: no known bug explains it."""
    def first_group_only(optimizer, warmup, total_steps, min_ratio=0.0):
        ratio = learner_schedule(optimizer, warmup, total_steps, min_ratio).lr_lambdas[0]
        return LambdaLR(optimizer, [ratio, lambda e: 1.0])
    with pytest.raises(checks.ExerciseWrong, match="must run at each group's initial lr") as wrong:
        checks.warmup_cosine_schedule(first_group_only, warmup_cosine_ratio)
    assert "Likely bug" not in str(wrong.value)


def test_schedule_crash_is_wrong_with_the_line():
    def crash(optimizer, warmup, total_steps, min_ratio=0.0):
        return LambdaLR(optimizer, lambda e: [1.0][e])
    with pytest.raises(checks.ExerciseWrong, match=r"raised IndexError \(line \d+"):
        checks.warmup_cosine_schedule(crash, warmup_cosine_ratio)


def test_noam_schedule_is_not_a_cosine_schedule():
    """Sanity of the checker's comparison: a different schedule altogether is rejected."""
    def noam_instead(optimizer, warmup, total_steps, min_ratio=0.0):
        return noam_schedule(optimizer, 64, warmup)
    with pytest.raises(checks.ExerciseWrong, match="optimizer step 1 ran at"):
        checks.warmup_cosine_schedule(noam_instead, warmup_cosine_ratio)


def test_min_ratio_before_the_warmup_end_is_named_for_warmup_equal_to_total():
    """With warmup == total_steps, step total_steps ends the warmup (ratio 1); a learner who tests
    `step >= total_steps` first returns min_ratio there."""
    def end_first(step, warmup, total_steps, min_ratio=0.0):
        if step >= total_steps:
            return min_ratio
        return warmup_cosine_ratio(step, warmup, total_steps, min_ratio)

    def schedule(optimizer, warmup, total_steps, min_ratio=0.0):
        return learner_schedule(optimizer, warmup, total_steps, min_ratio, ratio=end_first)

    with pytest.raises(checks.ExerciseWrong, match="no decay phase"):
        checks.warmup_cosine_schedule(schedule, end_first)
