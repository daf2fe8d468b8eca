"""The chapter 16 checkers bite: the references pass on fresh inputs, stubs are 'not attempted',
every known-buggy implementation fails with its targeted hint (a hint only when every probe
agrees), and correct implementations written differently pass."""

import numpy as np
import pytest
import torch

from checker_testing import fails_with
from scratchformer import checks, translation
from scratchformer.checks import translation as T


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


# ---- references pass, stubs are not attempted --------------------------------------------------

def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(4):  # fresh random inputs and configurations every call
        checks.average_checkpoints(translation.average_checkpoints)
        checks.ddp_loss_weight(translation.ddp_loss_weight)
    assert capsys.readouterr().out.count("✅") == 8


@pytest.mark.parametrize("checker", [checks.average_checkpoints, checks.ddp_loss_weight],
                         ids=["average_checkpoints", "ddp_loss_weight"])
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(stub)


def test_exercise_numbers():
    assert checks.REGISTRY["average_checkpoints"] == ("16.1", "scratchformer.translation")
    assert checks.REGISTRY["ddp_loss_weight"] == ("16.2", "scratchformer.translation")


# ---- Exercise 16.1: average_checkpoints ---------------------------------------------------------

def _average(states, *, divide_by=None, last=None, ints="copy", keep_dtype=True,
             in_place=False, reuse_dict=False, accumulate=torch.float64, crash=False):
    """A configurable, deliberately buggy average, written as a learner would."""
    if crash:
        raise KeyError("encoder.weight")
    chosen = states[-last:] if last else states
    out = states[0] if reuse_dict else {}
    for key, tensor in states[-1].items():
        if tensor.is_floating_point() or ints == "average":
            if in_place:
                total = states[0][key]
                for s in chosen[1:]:
                    total += s[key]
            else:
                total = sum(s[key].to(accumulate) for s in chosen)
            mean = total / (divide_by(len(chosen)) if divide_by else len(chosen))
            out[key] = mean.to(tensor.dtype) if keep_dtype else mean.float()
        elif ints == "first":
            out[key] = states[0][key].clone()
        else:
            out[key] = tensor.clone()
    return out


def _fn(**options):
    return lambda states: _average(states, **options)


@pytest.mark.parametrize("options, hint", [
    (dict(last=2), T.LAST_TWO),
    (dict(divide_by=lambda k: k - 1), T.WRONG_COUNT_LOW),
    (dict(divide_by=lambda k: k + 1), T.WRONG_COUNT_HIGH),
    (dict(divide_by=lambda k: 1), T.NOT_DIVIDED),
    (dict(last=1), T.LAST_ONLY),
    (dict(ints="average"), "was averaged: counts"),
    (dict(ints="first"), "copied from the first checkpoint"),
    (dict(keep_dtype=False), "torch.bfloat16 and went out as torch.float32"),
    (dict(in_place=True), "changed its input"),
    (dict(reuse_dict=True), "changed the state dict `states[0]` itself"),
    (dict(crash=True), "raised KeyError"),
], ids=["last-two", "k-minus-1", "k-plus-1", "no-division", "last-only", "ints-averaged",
        "ints-from-first", "dtype-lost", "in-place", "dict-reused", "crash"])
def test_average_checkpoints_rejects(options, hint):
    fails_with(checks.average_checkpoints, _fn(**options), hint)


def test_average_checkpoints_first_only_and_integer_mean():
    fails_with(checks.average_checkpoints, lambda states: {k: v.clone() for k, v in
                                                          states[0].items()},
               "copied from the first checkpoint")          # ints reveal it before the weights

    def rounded_int_mean(states):
        out = _average(states)
        for key in ("norm.num_batches_tracked", "step"):
            out[key] = sum(s[key] for s in states) // len(states)
        return out
    fails_with(checks.average_checkpoints, rounded_int_mean, "averaged: counts")


def test_average_checkpoints_wrong_keys_and_types():
    fails_with(checks.average_checkpoints, lambda states: list(states[-1].values()),
               "must return a dict")
    fails_with(checks.average_checkpoints,
               lambda states: {k: v for k, v in _average(states).items() if k != "mask"},
               "must return a dict")


def test_average_checkpoints_accepts_other_correct_versions():
    def stacked(states):                       # torch.stack, float32 accumulation
        out = {}
        for key, last in states[-1].items():
            if last.is_floating_point():
                out[key] = torch.stack([s[key].float() for s in states]).mean(0).to(last.dtype)
            else:
                out[key] = last.detach().clone()
        return out

    def running(states):                       # a running mean, numpy for fp32
        out = {}
        for key, last in states[-1].items():
            if not last.is_floating_point():
                out[key] = last.clone()
                continue
            mean = torch.zeros_like(last, dtype=torch.float64)
            for k, s in enumerate(states, 1):
                mean = mean + (s[key].double() - mean) / k
            out[key] = mean.to(last.dtype)
        return out

    checks.average_checkpoints(stacked)
    checks.average_checkpoints(running)
    checks.average_checkpoints(_fn(accumulate=torch.float32))


# ---- Exercise 16.2: ddp_loss_weight --------------------------------------------------------------

@pytest.mark.parametrize("fn, hint", [
    (lambda n, total, world: 1.0, T.MEAN_OF_MEANS),
    (lambda n, total, world: n / total, T.FORGOT_WORLD),
    (lambda n, total, world: n / (total * world), T.DIVIDED_BY_WORLD),
    (lambda n, total, world: total / (world * n) if n else 0.0, T.INVERTED),
    (lambda n, total, world: world * n // total, T.INTEGER_DIVISION),
    (lambda n, total, world: total / (world * n), "raised ZeroDivisionError"),
    (lambda n, total, world: str(world * n / total), "must return a number"),
], ids=["mean-of-means", "forgot-world", "divided-by-world", "inverted", "integer-division",
        "crash-on-empty-rank", "string"])
def test_ddp_loss_weight_rejects(fn, hint):
    fails_with(checks.ddp_loss_weight, fn, hint)


def test_ddp_loss_weight_no_hint_from_one_probe():
    # the mean of means on ranks with an odd label count, right on the others: no variant
    # agrees with every probe, so the message gives the numbers, not a guess
    with pytest.raises(checks.ExerciseWrong) as error:
        checks.ddp_loss_weight(lambda n, total, world: 1.0 if n % 2 else world * n / total)
    assert "Likely bug" not in str(error.value) and "mean over all" in str(error.value)


def test_ddp_loss_weight_accepts_other_correct_versions():
    checks.ddp_loss_weight(lambda n, total, world: n / (total / world))
    checks.ddp_loss_weight(lambda n, total, world: np.float32(world) * n / total)
    checks.ddp_loss_weight(lambda n, total, world: torch.tensor(world * n / total,
                                                                dtype=torch.float64))
