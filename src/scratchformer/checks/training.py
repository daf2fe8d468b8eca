"""Checkers for chapter 12 (``scratchformer.training``): teacher forcing (exercise 12.1) and
one training step in the right order (exercise 12.2)."""

from __future__ import annotations

import importlib
import math
import warnings

import torch

from scratchformer.checks._common import ExerciseWrong, _call, _generator, _passed
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import agreeing_bug, as_pair, require_unchanged, snapshot

__all__ = ["teacher_forcing", "train_step"]


def _training():
    return importlib.import_module("scratchformer.training")


def _draw(g: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


# --------------------------------------------------------------------------------------------
# Exercise 12.1: teacher_forcing(tgt) -> (tgt_in, labels)
# --------------------------------------------------------------------------------------------

NOT_SHIFTED = (
    "the labels are not shifted: they equal the decoder's input, so at every position the "
    "decoder is asked to predict the token it is reading (and the first label is <s>). The "
    "label at position t is the token that follows the input at position t: the target "
    "without its first token."
)
INPUT_DROPS_BOS = (
    "the decoder's input drops the wrong end: it starts after <s> instead of with it. The "
    "decoder must read <s> first (it has nothing else to start from) and never reads the last "
    "position, which nothing follows: drop the last position from the input, the first from "
    "the labels."
)
SWAPPED = (
    "the two outputs are swapped: you return (labels, tgt_in), i.e. the shift goes the wrong "
    "way. The contract is (tgt_in, labels): first what the decoder reads, which starts with "
    "<s>, then what it must predict, which starts one token later."
)
KEEPS_LENGTH = (
    "an output keeps the full length T. Both outputs are one position shorter than tgt (B, T): "
    "the input drops the last position, the labels the first (torch.roll would wrap the first "
    "token around to the end instead of dropping it)."
)
IN_PLACE = (
    "your code modifies tgt in place. The caller's target batch is used again (for the "
    "token count, for the next epoch): work on slices or copies, never write into tgt."
)
NOT_INTEGER = (
    "the outputs are not integer token ids. Keep tgt's dtype: the embedding looks ids up, "
    "and the loss compares labels with class indices."
)
FIXED_SIZE = (
    "the shapes of your outputs do not follow tgt's (or your code is right for some shapes and "
    "wrong for others). Does it depend on a fixed batch size or length, a hard-coded number, or "
    "a reshape that fits one shape only? Slice along the time axis only."
)


def _teacher_forcing_variants(tgt: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """hint -> (tgt_in, labels) of a known bug."""
    return {
        NOT_SHIFTED: (tgt[:, :-1], tgt[:, :-1]),
        INPUT_DROPS_BOS: (tgt[:, 1:], tgt[:, 1:]),
        SWAPPED: (tgt[:, 1:], tgt[:, :-1]),
    }


def _target_batch(g: torch.Generator, B: int, T: int, vocab: int = 13) -> torch.Tensor:
    """(B, T) rows ``<s> y_1 ... y_n </s>`` then padding (pad 0, <s> 1, </s> 2); row 0 full."""
    lengths = [T] + [_draw(g, 2, T) for _ in range(B - 1)]
    tgt = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        tgt[b, 0] = 1
        if n > 2:
            tgt[b, 1:n - 1] = torch.randint(4, vocab, (n - 2,), generator=g)
        tgt[b, n - 1] = 2
    return tgt


def _same_pair(a, b) -> bool:
    return (isinstance(a, tuple) and len(a) == 2 and all(isinstance(x, torch.Tensor) for x in a)
            and all(x.shape == y.shape and torch.equal(x.long(), y.long()) for x, y in zip(a, b)))


@exercise("12.1", reference="scratchformer.training")
def teacher_forcing(fn) -> None:
    """Check ``teacher_forcing(tgt) -> (tgt_in, labels)`` on target batches of several batch
    sizes and lengths (B = 1, T = 2 included), long and int32, against the one shift."""
    __tracebackhide__ = True
    name = "teacher_forcing"
    g = _generator()
    shapes = [(_draw(g, 3, 6), _draw(g, 8, 12)), (1, 2), (_draw(g, 7, 9), _draw(g, 3, 5)),
              (2, _draw(g, 13, 16))]
    results = []                      # (shape, learner pair or error text, expected pair, tgt)
    for index, (B, T) in enumerate(shapes):
        tgt = _target_batch(g, B, T)
        if index == 2:
            tgt = tgt.to(torch.int32)
        before = snapshot(tgt)
        out = _call(f"{name}(tgt)", fn, tgt)
        require_unchanged(name, ["tgt"], before, [tgt])
        pair = as_pair(name, "the result", out)
        for what, x in zip(("tgt_in", "labels"), pair):
            if not isinstance(x, torch.Tensor):
                raise ExerciseWrong(f"{name}: {what} should be a torch.Tensor, got "
                                    f"{type(x).__name__}.")
            if x.is_floating_point() or x.dtype == torch.bool:
                raise ExerciseWrong(f"{name}: {what} has dtype {x.dtype}. Likely bug: {NOT_INTEGER}")
        results.append(((B, T), tuple(pair), (tgt[:, :-1], tgt[:, 1:]), tgt))
    wrong = [r for r in results if not _same_pair(r[1], r[2])]
    if not wrong:
        _passed(name, f"the one shift on {len(results)} target batches (B = 1 and T = 2 included, "
                      "long and int32); tgt unchanged.")
        return
    def where(result) -> str:
        (B, T), pair, expected, _ = result
        shape_text = ", ".join(f"{tuple(x.shape)}" for x in pair)
        return (f"for tgt of shape {(B, T)} you return tensors of shapes {shape_text}; "
                f"expected (tgt_in, labels) of shapes {tuple(expected[0].shape)} each")

    if len(wrong) < len(results):
        right = next(r[0] for r in results if _same_pair(r[1], r[2]))
        raise ExerciseWrong(f"{name}: right for tgt of shape {right}, but {where(wrong[0])}. "
                            f"Likely bug: {FIXED_SIZE}")
    for result in wrong:                 # a length that does not follow T: a fixed size
        (B, T), pair = result[0], result[1]
        if any(x.dim() != 2 or x.shape[0] != B or x.shape[1] not in (T - 1, T) for x in pair):
            raise ExerciseWrong(f"{name}: {where(result)}. Likely bug: {FIXED_SIZE}")
    (B, T), pair, expected, tgt = wrong[0]
    where = where(wrong[0])
    if any(x.shape[1] == T for x in pair):
        raise ExerciseWrong(f"{name}: {where}. Likely bug: {KEEPS_LENGTH}")
    bug = agreeing_bug([(pair, _teacher_forcing_variants(t)) for _, pair, _, t in results],
                       same=_same_pair)
    if bug is not None:
        raise ExerciseWrong(f"{name}: {where}. Likely bug: {bug}")
    raise ExerciseWrong(f"{name}: {where}, and the values differ. tgt_in is what the decoder "
                        "reads (it starts with <s>); labels[:, t] is the token that follows "
                        "tgt_in[:, t] in tgt.")


# --------------------------------------------------------------------------------------------
# Exercise 12.2: train_step(model, micro_batches, optimizer, scheduler, ...) -> dict
# --------------------------------------------------------------------------------------------

NO_UPDATE = (
    "the parameters never change. Are the gradients cleared (optimizer.zero_grad()) between "
    "backward and optimizer.step(), or is optimizer.step() never called? The order is: "
    "backward for every micro-batch, clip, optimizer.step(), scheduler.step(), and only then "
    "zero_grad for the next step."
)
NO_ZERO_GRAD = (
    "the first step is right, the second is not: its update equals that of the gradients of "
    "both steps added up. Gradients accumulate in .grad until they are cleared; call "
    "optimizer.zero_grad(set_to_none=True) once per step, after optimizer.step() (or at the "
    "start of the step, before the first backward)."
)
CLIP_NO_EFFECT = (
    "the update is that of the unclipped gradients: clipping has no effect. Clip after the "
    "last backward (and after scaler.unscale_) and before optimizer.step(): clipping before "
    "backward finds no gradient, clipping after the step is too late."
)
SCHEDULER_FIRST = (
    "the scheduler steps before the optimizer, so every step uses the next step's learning "
    "rate (and the first rate is never used). Call scheduler.step() after optimizer.step()."
)
NO_SCHEDULER_STEP = (
    "the learning rate never changes: scheduler.step() is never called. Call it once per "
    "step, after optimizer.step()."
)
UNWEIGHTED_MEAN = (
    "the micro-batch losses are averaged with equal weights. A micro-batch with more labels "
    "must count more: the step's loss is the mean over all labels of the step, i.e. each "
    "micro-batch's mean loss weighted by its share of the labels (its count / the total), as "
    "if the micro-batches were one batch."
)
UNWEIGHTED_SUM = (
    "the micro-batch losses are summed with equal weights: the gradient grows with the number "
    "of micro-batches and ignores how many labels each has. Weight each micro-batch's mean "
    "loss by its share of the step's labels (its count / the total)."
)
NOT_NORMALISED = (
    "each micro-batch's loss is weighted by its number of labels but never divided by the "
    "total: the gradient is that of a sum over tokens, as large as the batch. Divide by the "
    "step's total number of labels (weights count / total)."
)
CLIP_SCALED = (
    "with fp16 and a GradScaler, the gradients are clipped while still multiplied by the loss "
    "scale: call scaler.unscale_(optimizer) before clipping (scaler.step would unscale them "
    "only afterwards), so that the clipping threshold applies to the true gradients."
)
IGNORES_LOSS_FN = (
    "the step ignores its loss_fn argument: given a loss_fn, the update is still that of "
    "micro_batch_loss. Compute each micro-batch's loss with the loss_fn the step was given "
    "(the line before the exercise sets it to micro_batch_loss when it is None), as "
    "loss_fn(model, src, tgt, epsilon=epsilon, precision=precision); chapter 15 trains "
    "through it."
)

# hint -> the switches of _variant_step reproducing the bug
_STEP_BUGS: dict[str, dict] = {
    NO_UPDATE: dict(clear_before_step=True),
    NO_ZERO_GRAD: dict(zero_grad=False),
    CLIP_NO_EFFECT: dict(clip=False),
    SCHEDULER_FIRST: dict(scheduler_first=True),
    NO_SCHEDULER_STEP: dict(step_scheduler=False),
    UNWEIGHTED_MEAN: dict(weights="mean"),
    UNWEIGHTED_SUM: dict(weights="sum"),
    NOT_NORMALISED: dict(weights="tokens"),
    CLIP_SCALED: dict(clip_scaled=True),
    IGNORES_LOSS_FN: dict(ignore_loss_fn=True),
}


def _variant_step(model, micro_batches, optimizer, scheduler=None, *, epsilon=0.1,
                  clip_norm=1.0, precision="fp32", scaler=None, clear_before_step=False,
                  zero_grad=True, clip=True, scheduler_first=False, step_scheduler=True,
                  weights="tokens/total", clip_scaled=False, loss_fn=None,
                  ignore_loss_fn=False):
    """The reference training step with one known bug switched on (none: the reference)."""
    T = _training()
    if loss_fn is None or ignore_loss_fn:
        loss_fn = T.micro_batch_loss
    scaler = T.loss_scaler(precision, scaler)
    counts = [T.label_count(tgt, T.pad_id_of(model)) for _, tgt in micro_batches]
    total = max(sum(counts), 1)
    lr = optimizer.param_groups[0]["lr"]
    max_norm = math.inf if clip_norm is None else clip_norm
    loss = 0.0
    for (src, tgt), n in zip(micro_batches, counts):
        w = {"tokens/total": n / total, "mean": 1 / len(micro_batches), "sum": 1.0,
             "tokens": float(n)}[weights]
        part = loss_fn(model, src, tgt, epsilon=epsilon, precision=precision) * w
        scaler.scale(part).backward()
        loss = loss + part.detach()
    if clip_scaled:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.unscale_(optimizer)
    else:
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                   max_norm if clip else math.inf)
    if clear_before_step:
        optimizer.zero_grad(set_to_none=True)
    if scheduler is not None and scheduler_first:
        scheduler.step()
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None and step_scheduler and not scheduler_first:
        scheduler.step()
    if zero_grad:
        optimizer.zero_grad(set_to_none=True)
    return {"loss": float(loss), "tokens": sum(counts), "grad_norm": float(grad_norm), "lr": lr}


class _Probe:
    """One setting in which a step function is driven: a tiny seeded Transformer, an optimizer,
    a scheduler whose rate changes every step, micro-batches of unequal token counts, a
    clipping threshold, a precision. ``run(step_fn)`` calls the step ``calls`` times on fresh
    copies and returns the parameter updates and the returned dicts."""

    def __init__(self, g: torch.Generator, *, optimizer: str, schedule: bool, clip: str,
                 n_micro: int, calls: int = 2, precision: str = "fp32", loss_fn=None):
        from scratchformer.model import Transformer, TransformerConfig

        self.optimizer_kind, self.schedule, self.clip = optimizer, schedule, clip
        self.loss_fn = loss_fn                   # None: the step's default loss
        self.calls, self.precision = calls, precision
        heads = _draw(g, 1, 2)
        self.config = TransformerConfig(
            src_vocab_size=_draw(g, 9, 12), tgt_vocab_size=_draw(g, 13, 16),
            d_model=4 * heads * _draw(g, 1, 2), n_heads=heads, n_encoder_layers=1,
            n_decoder_layers=1, d_ff=_draw(g, 10, 14), dropout=0.0, norm_first=bool(_draw(g, 0, 1)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
            self.model = Transformer(self.config)    # reset before every run
        self.initial = {k: v.clone() for k, v in self.model.state_dict().items()}
        self._reference = None
        self.epsilon = [0.0, 0.1, 0.2][_draw(g, 0, 2)]
        self.lr = [0.05, 0.1, 0.2][_draw(g, 0, 2)]
        # calls x micro-batches; the micro-batches of one call differ a lot in their counts
        self.batches = [[self._micro_batch(g, k) for k in range(n_micro)] for _ in range(calls)]
        self.clip_norm = None
        if clip != "none":       # a threshold below the first step's gradient norm
            norm = self._first_norm()
            self.clip_norm = norm * (0.3 if clip == "active" else 10.0)

    def _micro_batch(self, g, k):
        V_src, V_tgt = self.config.src_vocab_size, self.config.tgt_vocab_size
        B = [2, 5, 3][k % 3]
        S, T = _draw(g, 3, 6), [3, 8, 5][k % 3]
        src = torch.randint(4, V_src, (B, S), generator=g)
        src[1:, -1] = 0                                         # some source padding
        tgt = torch.randint(4, V_tgt, (B, T), generator=g)
        tgt[:, 0] = 1
        for b in range(B):
            n = T if b == 0 else _draw(g, 2, T)
            tgt[b, n - 1] = 2
            tgt[b, n:] = 0
        return src, tgt

    def fresh(self):
        model = self.model
        model.load_state_dict(self.initial)
        model.zero_grad(set_to_none=True)
        model.train()
        momentum = 0.9 if self.optimizer_kind == "momentum" else 0.0   # linear in the grads
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=momentum)
        scheduler = None
        if self.schedule:                                      # rates: lr, 3 lr, 5 lr, ...
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0 + 2.0 * k)
        scaler = None
        if self.precision == "fp16":
            scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)
        return model, optimizer, scheduler, scaler

    def _first_norm(self) -> float:
        model, optimizer, scheduler, scaler = self.fresh()
        T = _training()
        counts = [T.label_count(t, 0) for _, t in self.batches[0]]
        for (src, tgt), n in zip(self.batches[0], counts):
            (T.micro_batch_loss(model, src, tgt, epsilon=self.epsilon) * n / sum(counts)).backward()
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf))

    def reference(self, name: str):
        """The reference's run, computed once."""
        if self._reference is None:
            self._reference = self.run(name, _variant_step)
        return self._reference

    def run(self, name: str, step_fn, learner: bool = False):
        model, optimizer, scheduler, scaler = self.fresh()
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        before = start.clone()
        updates, outs = [], []
        for batches in self.batches:
            args = (model, [(s.clone(), t.clone()) for s, t in batches], optimizer, scheduler)
            options = dict(epsilon=self.epsilon, clip_norm=self.clip_norm,
                           precision=self.precision, scaler=scaler)
            if self.loss_fn is not None:
                options["loss_fn"] = self.loss_fn
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = _call(f"{name}(...)", step_fn, *args, **options) if learner else \
                    step_fn(*args, **options)
            after = torch.cat([p.detach().flatten() for p in model.parameters()])
            updates.append(after - before)
            before = after
            outs.append(out)
        return updates, outs

    def describe(self) -> str:
        clip = "no clipping" if self.clip_norm is None else f"clip_norm={self.clip_norm:.3g}"
        sched = "a scheduler" if self.schedule else "no scheduler"
        kind = "SGD with momentum" if self.optimizer_kind == "momentum" else "SGD"
        custom = ", a custom loss_fn" if self.loss_fn is not None else ""
        return (f"{kind}, {sched}, {clip}, {len(self.batches[0])} "
                f"micro-batches, {self.precision}{custom}")


def _doubled_loss(model, src, tgt, *, epsilon=0.1, precision="fp32"):
    """A custom ``loss_fn``: twice the default loss, with the smoothing of the step's call."""
    return 2.0 * _training().micro_batch_loss(model, src, tgt, epsilon=epsilon,
                                              precision=precision)


def _same_updates(a, b) -> bool:
    """Two lists of parameter updates agree to rounding (relative to their size)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        scale = max(float(y.abs().max()), float(x.abs().max()), 1e-12)
        if float((x - y).abs().max()) > 1e-4 * scale + 1e-9:
            return False
    return True


def _fp16_available() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.scaled_dot_product_attention(*(torch.randn(1, 1, 2, 4),) * 3)
        torch.amp.GradScaler("cpu")
        return True
    except Exception:  # this torch has no fp16 autocast or GradScaler on the CPU
        return False


def _require_record(name: str, out) -> None:
    __tracebackhide__ = True
    if not isinstance(out, dict):
        raise ExerciseWrong(f"{name}: the step returned {type(out).__name__}; keep the given "
                            "`return {...}` line: a dict with loss, tokens, grad_norm and lr.")
    missing = {"loss", "tokens", "grad_norm", "lr"} - set(out)
    if missing:
        raise ExerciseWrong(f"{name}: the returned dict lacks {sorted(missing)}.")


@exercise("12.2", reference="scratchformer.training")
def train_step(fn) -> None:
    """Drive the learner's ``train_step`` with tiny real Transformers, SGD and Adam, a scheduler
    whose rate changes every step, micro-batches of unequal token counts, clipping on and off,
    fp32 and (if this torch supports it on the CPU) fp16 with a GradScaler; two calls each."""
    __tracebackhide__ = True
    name = "train_step"
    g = _generator()
    probes = [_Probe(g, optimizer="sgd", schedule=True, clip="active", n_micro=2),
              _Probe(g, optimizer="sgd", schedule=True, clip="none", n_micro=3),
              _Probe(g, optimizer="momentum", schedule=True, clip="loose", n_micro=2),
              _Probe(g, optimizer="sgd", schedule=False, clip="none", n_micro=1, calls=1),
              _Probe(g, optimizer="sgd", schedule=False, clip="none", n_micro=2, calls=1,
                     loss_fn=_doubled_loss)]
    if _fp16_available():
        probes.append(_Probe(g, optimizer="sgd", schedule=True, clip="active", n_micro=2,
                             precision="fp16"))
    # fp32 first: a bug there is named before fp16 (with its GradScaler) can raise
    observed = _require_same_steps(name, fn, probes[:5])
    if len(probes) > 5:
        _require_same_steps(name, fn, probes[5:], observed)
    fp16 = " and fp16 with a GradScaler" if len(probes) > 5 else ""
    _passed(name, f"{len(probes)} settings (SGD with and without momentum, a rate that changes "
                  f"every step, clipping on and off, 1 to 3 micro-batches of unequal sizes, "
                  f"fp32{fp16}, a custom loss_fn): the same updates and records as the "
                  f"reference.")


def _require_same_steps(name: str, fn, probes: list[_Probe], earlier: list | None = None
                        ) -> list:
    """The learner's updates and records equal the reference's in every probe; otherwise name
    the known bug that reproduces the updates of every probe (``earlier`` ones included), if
    exactly one does. Returns the observations."""
    __tracebackhide__ = True
    observed = list(earlier or [])
    for probe in probes:
        updates, outs = probe.run(name, fn, learner=True)
        for out in outs:
            _require_record(name, out)
        observed.append((probe, updates, outs))
    # 1. the parameter updates of every call
    wrong = []
    for probe, updates, _outs in observed:
        expected, _ = probe.reference(name)
        if not _same_updates(updates, expected):
            wrong.append((probe, updates, expected))
    if wrong:
        variants = []
        for probe, updates, _outs in observed:
            runs = {}
            for hint, switches in _STEP_BUGS.items():
                def step(*a, _switches=switches, **o):
                    return _variant_step(*a, **o, **_switches)
                runs[hint] = probe.run(name, step)[0]
            variants.append((updates, runs))
        bug = agreeing_bug(variants, same=_same_updates)
        probe, updates, expected = wrong[0]
        k = next(i for i, (u, e) in enumerate(zip(updates, expected))
                 if not _same_updates([u], [e]))
        where = (f"after call {k + 1} the parameters differ from the reference's "
                 f"({probe.describe()})")
        if bug is not None:
            raise ExerciseWrong(f"{name}: {where}. Likely bug: {bug}")
        raise ExerciseWrong(f"{name}: {where}. Check, in order: one backward per micro-batch "
                            "with its loss weighted by its share of the step's labels, "
                            "scaler.unscale_, clipping, optimizer.step(), scheduler.step(), "
                            "zero_grad.")
    # 2. what the step returns: loss, tokens, grad_norm (before clipping), lr
    for probe, _updates, outs in observed:
        _, expected = probe.reference(name)
        for k, (out, ref) in enumerate(zip(outs, expected)):
            where = f"call {k + 1} ({probe.describe()})"
            if not _close_float(out["loss"], ref["loss"]):
                raise ExerciseWrong(f"{name}: at {where} the returned loss is {out['loss']!r}, "
                                    f"expected {ref['loss']:.6g}: the loss of the step, the "
                                    "weighted sum of the micro-batch losses (a float).")
            if not _close_float(out["grad_norm"], ref["grad_norm"]):
                clipped = probe.clip_norm is not None and _close_float(out["grad_norm"],
                                                                       probe.clip_norm)
                hint = (" It equals clip_norm: return the norm clip_grad_norm_ returns (measured "
                        "before clipping), not the norm after it." if clipped else "")
                raise ExerciseWrong(f"{name}: at {where} the returned grad_norm is "
                                    f"{out['grad_norm']!r}, expected {ref['grad_norm']:.6g}, the "
                                    f"total gradient norm before clipping.{hint}")
            if out["tokens"] != ref["tokens"] or not _close_float(out["lr"], ref["lr"]):
                raise ExerciseWrong(f"{name}: at {where} the returned tokens / lr are "
                                    f"{out['tokens']!r} / {out['lr']!r}, expected "
                                    f"{ref['tokens']} / {ref['lr']:.6g}. Keep the given "
                                    "`return {...}` line and the lines before the exercise.")
    return observed


def _close_float(a, b) -> bool:
    try:
        return abs(float(a) - float(b)) <= 1e-5 + 1e-4 * abs(float(b))
    except (TypeError, ValueError):
        return False
