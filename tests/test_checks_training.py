"""The chapter 12 checkers bite: the references pass, the stubs are 'not attempted', every
known-buggy teacher_forcing and train_step fails with its targeted hint, and correct versions
written differently pass."""

import math

import pytest
import torch

from scratchformer import checks
from scratchformer.checks import training as C
from scratchformer.training import (
    label_count,
    loss_scaler,
    micro_batch_loss,
    pad_id_of,
    teacher_forcing,
    train_step,
)


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(2):
        checks.teacher_forcing(teacher_forcing)
    checks.train_step(train_step)
    assert capsys.readouterr().out.count("✅") == 3


@pytest.mark.parametrize("checker", [checks.teacher_forcing, checks.train_step],
                         ids=["teacher_forcing", "train_step"])
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(stub)


def test_checkers_are_exported_and_numbered():
    assert {"teacher_forcing", "train_step"} <= set(checks.__all__)
    assert checks.REGISTRY["teacher_forcing"] == ("12.1", "scratchformer.training")
    assert checks.REGISTRY["train_step"] == ("12.2", "scratchformer.training")


# ---- 12.1 teacher_forcing ----------------------------------------------------------------------

def tf_not_shifted(tgt):
    return tgt[:, :-1], tgt[:, :-1]


def tf_keeps_bos_in_labels(tgt):           # the same bug, written differently
    tgt_in = tgt[:, :-1]
    return tgt_in, tgt_in.clone()


def tf_input_drops_bos(tgt):
    return tgt[:, 1:], tgt[:, 1:]


def tf_swapped(tgt):
    return tgt[:, 1:], tgt[:, :-1]


def tf_wrong_direction(tgt):              # "labels are what came before": the same outputs
    labels, tgt_in = tgt[:, :-1], tgt[:, 1:]
    return tgt_in, labels


def tf_rolled(tgt):
    return tgt, tgt.roll(-1, dims=1)


def tf_full_input(tgt):
    return tgt, tgt[:, 1:]


def tf_in_place(tgt):
    tgt_in, labels = tgt[:, :-1].clone(), tgt[:, 1:]
    tgt[tgt == 2] = 0                      # "drop </s>": writes into the caller's batch
    return tgt_in, labels


def tf_fixed_batch(tgt):
    flat = tgt.reshape(-1)                 # only right when B == 1
    return flat[:-1].view(1, -1), flat[1:].view(1, -1)


def tf_fixed_length(tgt):
    return tgt[:, :9], tgt[:, 1:10]        # a length of 10 hard-coded


def tf_float(tgt):
    return tgt[:, :-1].float(), tgt[:, 1:].float()


def tf_not_a_pair(tgt):
    return torch.stack([tgt[:, :-1], tgt[:, 1:]])


def tf_crashes(tgt):
    return tgt[:, :-1], tgt[:, 1:].view(-1, 3)


TF_MUTANTS = {
    "not-shifted": (tf_not_shifted, "labels are not shifted"),
    "keeps-bos-in-labels": (tf_keeps_bos_in_labels, "labels are not shifted"),
    "input-drops-bos": (tf_input_drops_bos, "drops the wrong end"),
    "swapped": (tf_swapped, "swapped: you return \\(labels, tgt_in\\)"),
    "wrong-direction": (tf_wrong_direction, "shift goes the wrong way"),
    "rolled": (tf_rolled, "keeps the full length T"),
    "full-input": (tf_full_input, "keeps the full length T"),
    "in-place": (tf_in_place, "changed its input `tgt` in place"),
    "fixed-batch-size": (tf_fixed_batch, "do not follow tgt's"),
    "fixed-length": (tf_fixed_length, "do not follow tgt's"),
    "float": (tf_float, "not integer token ids"),
    "not-a-pair": (tf_not_a_pair, "as a pair"),
    "crashes": (tf_crashes, "your code raised RuntimeError"),
}


@pytest.mark.parametrize("name", list(TF_MUTANTS))
def test_teacher_forcing_mutants_fail_with_their_hint(name):
    fn, hint = TF_MUTANTS[name]
    for _ in range(3):                    # the hint holds on fresh draws
        with pytest.raises(checks.ExerciseWrong, match=hint):
            checks.teacher_forcing(fn)


def tf_copies(tgt):
    return tgt[:, :-1].clone(), tgt[:, 1:].contiguous().clone()


def tf_narrow(tgt):
    T = tgt.size(1)
    return [tgt.narrow(1, 0, T - 1), tgt.narrow(1, 1, T - 1)]     # a list is a pair too


def tf_index(tgt):
    idx = torch.arange(tgt.shape[1])
    return tgt[:, idx[:-1]], tgt.index_select(1, idx[1:])


@pytest.mark.parametrize("fn", [tf_copies, tf_narrow, tf_index])
def test_teacher_forcing_alternatives_pass(fn, capsys):
    checks.teacher_forcing(fn)
    assert "✅" in capsys.readouterr().out


# ---- 12.2 train_step ---------------------------------------------------------------------------
# Each mutant is written as a learner would write the body; the lines before it are the ones the
# exercise gives.

def _given(model, micro_batches, optimizer, precision, scaler, clip_norm):
    scaler = loss_scaler(precision, scaler)
    counts = [label_count(tgt, pad_id_of(model)) for _, tgt in micro_batches]
    total = max(sum(counts), 1)
    lr = optimizer.param_groups[0]["lr"]
    max_norm = math.inf if clip_norm is None else clip_norm
    return scaler, counts, total, lr, max_norm


def make_step(order=("backward", "unscale", "clip", "step", "update", "sched", "zero"),
              weights="share", grad_norm_after=False, scale_loss=True, use_loss_fn=True):
    """A learner's train_step with the operations in ``order`` and the micro-batch ``weights``."""
    def step(model, micro_batches, optimizer, scheduler=None, *, epsilon=0.1, clip_norm=1.0,
             precision="fp32", scaler=None, loss_fn=None):
        scaler, counts, total, lr, max_norm = _given(model, micro_batches, optimizer, precision,
                                                     scaler, clip_norm)
        if loss_fn is None or not use_loss_fn:
            loss_fn = micro_batch_loss
        loss, grad_norm = 0.0, torch.tensor(0.0)
        for op in order:
            if op == "backward":
                for (src, tgt), n in zip(micro_batches, counts):
                    w = {"share": n / total, "mean": 1 / len(micro_batches), "sum": 1.0,
                         "tokens": n}[weights]
                    part = loss_fn(model, src, tgt, epsilon=epsilon,
                                   precision=precision) * w
                    (scaler.scale(part) if scale_loss else part).backward()
                    loss = loss + part.detach()
            elif op == "unscale":
                scaler.unscale_(optimizer)
            elif op == "clip":
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                if grad_norm_after:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
            elif op == "step":
                scaler.step(optimizer)
            elif op == "update":
                scaler.update()
            elif op == "sched":
                if scheduler is not None:
                    scheduler.step()
            elif op == "zero":
                optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss), "tokens": sum(counts), "grad_norm": float(grad_norm),
                "lr": lr}
    return step


STEP_MUTANTS = {
    "zero-grad-after-backward": (
        make_step(("backward", "zero", "unscale", "clip", "step", "update", "sched")),
        "the parameters never change"),
    "no-optimizer-step": (
        make_step(("backward", "unscale", "clip", "update", "sched", "zero")),
        "the parameters never change"),
    "no-zero-grad": (
        make_step(("backward", "unscale", "clip", "step", "update", "sched")),
        "gradients of both steps added up"),
    "clip-before-backward": (
        make_step(("clip", "backward", "unscale", "step", "update", "sched", "zero")),
        "clipping has no effect"),
    "clip-after-step": (
        make_step(("backward", "unscale", "step", "update", "clip", "sched", "zero")),
        "clipping has no effect"),
    "scheduler-before-optimizer": (
        make_step(("backward", "unscale", "clip", "sched", "step", "update", "zero")),
        "scheduler steps before the optimizer"),
    "no-scheduler-step": (
        make_step(("backward", "unscale", "clip", "step", "update", "zero")),
        "scheduler.step\\(\\) is never called"),
    "mean-of-micro-batches": (make_step(weights="mean"), "averaged with equal weights"),
    "sum-of-micro-batches": (make_step(weights="sum"), "summed with equal weights"),
    "weighted-not-normalised": (make_step(weights="tokens"), "never divided by the total"),
    "clip-before-unscale": (
        make_step(("backward", "clip", "unscale", "step", "update", "sched", "zero")),
        "clipped while still multiplied by the loss scale"),
    "no-unscale": (
        make_step(("backward", "clip", "step", "update", "sched", "zero")),
        "clipped while still multiplied by the loss scale"),
    "grad-norm-after-clipping": (make_step(grad_norm_after=True), "It equals clip_norm"),
    "loss-not-scaled": (make_step(scale_loss=False), "your code raised AssertionError"),
    "ignores-loss-fn": (make_step(use_loss_fn=False), "ignores its loss_fn argument"),
}


def _fp16_needed(name):
    if name in ("clip-before-unscale", "no-unscale", "loss-not-scaled") and not C._fp16_available():
        pytest.skip("this torch has no fp16 autocast / GradScaler on the CPU")


@pytest.mark.parametrize("name", list(STEP_MUTANTS))
def test_train_step_mutants_fail_with_their_hint(name):
    _fp16_needed(name)
    fn, hint = STEP_MUTANTS[name]
    with pytest.raises(checks.ExerciseWrong, match=hint):
        checks.train_step(fn)


def test_train_step_returning_nothing_is_named():
    def no_record(*args, **kwargs):
        train_step(*args, **kwargs)
    with pytest.raises(checks.ExerciseWrong, match="returned NoneType"):
        checks.train_step(no_record)


def zero_grad_first(model, micro_batches, optimizer, scheduler=None, *, epsilon=0.1,
                    clip_norm=1.0, precision="fp32", scaler=None, loss_fn=None):
    """Clears the gradients at the start instead of the end: also right."""
    scaler, counts, total, lr, max_norm = _given(model, micro_batches, optimizer, precision,
                                                 scaler, clip_norm)
    loss_fn = loss_fn or micro_batch_loss
    optimizer.zero_grad()
    losses = [loss_fn(model, s, t, epsilon=epsilon, precision=precision)
              for s, t in micro_batches]
    loss = sum(l * n for l, n in zip(losses, counts)) / total     # one backward
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    if scheduler:
        scheduler.step()
    return {"loss": loss.item(), "tokens": sum(counts), "grad_norm": grad_norm.item(), "lr": lr}


def manual_clip(model, micro_batches, optimizer, scheduler=None, *, epsilon=0.1, clip_norm=1.0,
                precision="fp32", scaler=None, loss_fn=None):
    """Clipping written by hand, zero_grad(set_to_none=False), weights as a tensor."""
    scaler, counts, total, lr, max_norm = _given(model, micro_batches, optimizer, precision,
                                                 scaler, clip_norm)
    loss_of = micro_batch_loss if loss_fn is None else loss_fn
    share = torch.tensor(counts, dtype=torch.float64) / total
    loss = 0.0
    for (src, tgt), w in zip(micro_batches, share):
        part = loss_of(model, src, tgt, epsilon=epsilon, precision=precision) * float(w)
        scaler.scale(part).backward()
        loss += part.item()
    scaler.unscale_(optimizer)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                      for g in grads]))
    if grad_norm > max_norm:
        for g in grads:
            g.mul_(max_norm / (grad_norm + 1e-6))
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=False)
    return {"loss": loss, "tokens": sum(counts), "grad_norm": float(grad_norm), "lr": lr}


@pytest.mark.parametrize("fn", [zero_grad_first, manual_clip, make_step()])
def test_train_step_alternatives_pass(fn, capsys):
    checks.train_step(fn)
    assert "✅" in capsys.readouterr().out


def test_train_step_variants_reproduce_the_reference():
    """The checker's own reference (all switches off) is the package's train_step."""
    probe = C._Probe(C._generator(), optimizer="sgd", schedule=True, clip="active", n_micro=2)
    ours, _ = probe.run("train_step", train_step)
    theirs, _ = probe.run("train_step", C._variant_step)
    assert C._same_updates(ours, theirs)
