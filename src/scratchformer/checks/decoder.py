"""Checkers for chapter 08 (``scratchformer.decoder``): the forward pass of a decoder layer
(self-attention, cross-attention, feed-forward) and of the decoder stack."""

# Each checker loads random weights into the learner's module and the reference, in a
# configuration where every size differs, and runs both on a set of probes: both LayerNorm
# placements, T != S (and one T == S probe), every mask shape for both masks. A bug is named
# only when one known wrong variant reproduces the learner's outcome on every probe (its
# outputs, and its errors where the variant raises too). Then come rows with nothing to attend
# to, inputs left unchanged and gradients, float16 and bfloat16, and dropout in training and in
# eval mode.

from __future__ import annotations

import copy
import types

import torch

from scratchformer.checks._common import (
    NAN_FROM_EMPTY_ROW,
    ExerciseNotAttempted,
    ExerciseWrong,
    _call,
    _close,
    _generator,
    _passed,
    _randn,
)
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import (
    LOW_PRECISION,
    mask_variants,
    require_dropout_behaviour,
    require_dtype,
    require_gradients,
    require_unchanged,
    snapshot,
)

__all__ = ["decoder_layer", "decoder_stack"]

DROPOUT = 0.3


# --------------------------------------------------------------------------------------------
# Configurations, modules and probes
# --------------------------------------------------------------------------------------------

def _randint(g: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _config(g: torch.Generator) -> dict[str, int]:
    """Sizes in which every field differs: B, T, S, H, D, d_ff and n_layers."""
    while True:
        H = _randint(g, 2, 3)
        c = dict(B=_randint(g, 2, 5), T=_randint(g, 3, 7), S=_randint(g, 4, 9), H=H,
                 D=H * _randint(g, 3, 5), D_FF=_randint(g, 7, 24), L=_randint(g, 2, 4))
        if len(set(c.values())) == len(c):
            return c


def _randomise(module: torch.nn.Module, g: torch.Generator) -> torch.nn.Module:
    """Random weights everywhere, LayerNorm gains around 1, so that every missing piece shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = 0.4 * _randn(g, *p.shape)
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)
    return module.eval()


def _instantiate(name: str, cls: type, ref: torch.nn.Module, *args, parameters: str, **kwargs):
    """Build the learner's module with the reference's constructor arguments and load its weights."""
    __tracebackhide__ = True
    try:
        module = cls(*args, **kwargs)
    except NotImplementedError:
        raise ExerciseNotAttempted(f"{name}: not attempted yet.") from None
    except Exception as error:
        raise ExerciseWrong(f"{name}: constructing {cls.__name__}{args} raised "
                            f"{type(error).__name__}: {error}") from error
    try:
        module.load_state_dict(ref.state_dict())
    except Exception as error:
        raise ExerciseWrong(f"{name}: could not load the reference weights ({error}). Keep the "
                            f"chapter's parameters: {parameters}.") from error
    return module.to(next(ref.parameters()).dtype).train(ref.training)


def _keep_masks(g: torch.Generator, B: int, H: int, T: int, S: int) -> list[tuple[str, torch.Tensor]]:
    """Random keep-masks of every shape MultiHeadAttention accepts for T queries x S keys."""
    shapes = list(mask_variants(g, (B,), T, S).items())                # (T, S), (B, 1, S), (B, T, S)
    shapes += [(k, v) for k, v in mask_variants(g, (B, H), T, S).items() if k != "(T, S)"]
    return shapes                                                       # + (B,1,1,S), (B,1,T,S), (B,H,T,S)


class _Probe:
    """One call: a description, the reference module it compares with, and the arguments."""

    def __init__(self, what: str, ref: torch.nn.Module, args: tuple):
        self.what, self.ref, self.args = what, ref, args


def _clones(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _probes(g: torch.Generator, c: dict, refs: dict) -> list[_Probe]:
    """For each LayerNorm placement: T != S without masks, with a causal target mask and a source
    padding mask, with every mask shape for both masks; and one T == S probe with masks."""
    from scratchformer.causal import causal_mask

    B, T, S, H, D = c["B"], c["T"], c["S"], c["H"], c["D"]
    probes = []
    for norm_first, ref in refs.items():
        place = "pre-LN" if norm_first else "post-LN"
        x, memory = _randn(g, B, T, D), _randn(g, B, S, D)
        padding = torch.ones(B, 1, S, dtype=torch.bool)
        padding[0, 0, _randint(g, 1, S - 1):] = False
        probes.append(_Probe(f"{place}, T={T}, S={S}, no masks", ref, (x, memory, None, None)))
        probes.append(_Probe(f"{place}, causal tgt_mask (T, T), memory_mask (B, 1, S)", ref,
                             (x, memory, causal_mask(T), padding)))
        tgt, mem = _keep_masks(g, B, H, T, T), _keep_masks(g, B, H, T, S)
        for (tgt_shape, tgt_mask), (mem_shape, mem_mask) in zip(tgt, mem[1:] + mem[:1]):
            probes.append(_Probe(f"{place}, tgt_mask {tgt_shape}, memory_mask {mem_shape}", ref,
                                 (x, memory, tgt_mask, mem_mask)))
        square = _randn(g, B, T, D)                                    # a memory with S = T
        square_padding = torch.ones(B, 1, T, dtype=torch.bool)
        square_padding[-1, 0, _randint(g, 1, T - 1):] = False
        probes.append(_Probe(f"{place}, T = S = {T}, causal tgt_mask and a padding memory_mask", ref,
                             (x, square, causal_mask(T), square_padding)))
    return probes


def _outcome(fn, args: tuple):
    """``fn(*args)`` detached, or the exception it raised (the learner's: an ExerciseWrong)."""
    try:
        with torch.no_grad():
            out = fn(*_clones(args))
    except ExerciseNotAttempted:
        raise
    except Exception as error:                          # noqa: BLE001 - compared, reported later
        return error
    return out.detach() if isinstance(out, torch.Tensor) else out


def _agree(learner, predicted) -> bool:
    """The learner's outcome is the one a hypothesis predicts: close outputs, or both raised the
    same kind of error."""
    if isinstance(predicted, BaseException):
        cause = learner.__cause__ if isinstance(learner, ExerciseWrong) else learner
        return isinstance(cause, BaseException) and type(cause) is type(predicted)
    return isinstance(learner, torch.Tensor) and _close(learner, predicted)


def _explain(learner: list, probes: list[_Probe], expected: list, hypotheses: dict) -> str | None:
    """The hint of the first hypothesis that reproduces the learner's outcome on every probe and
    differs from the reference on at least one probe where the learner gave an output."""
    for hint, variants in hypotheses.items():
        for variant in variants:
            predicted = [_outcome(lambda *a, p=p, v=variant: v(p.ref, *a), p.args) for p in probes]
            if not all(_agree(o, h) for o, h in zip(learner, predicted)):
                continue
            if any(isinstance(o, torch.Tensor) and isinstance(h, torch.Tensor) and not _close(h, e)
                   for o, h, e in zip(learner, predicted, expected)):
                return hint
    return None


def _first_failure(name: str, learner: list, probes: list[_Probe], expected: list,
                   generic: str) -> None:
    """Raise for the first probe where the learner's outcome differs from the reference's."""
    __tracebackhide__ = True
    for out, probe, ref_out in zip(learner, probes, expected):
        what = f"the output ({probe.what})"
        if isinstance(out, ExerciseWrong):
            raise ExerciseWrong(f"{str(out).rstrip('.')} ({probe.what}).") from out.__cause__
        if isinstance(out, tuple):
            raise ExerciseWrong(f"{name}: return only the output tensor (B, T, D), not a tuple. "
                                "MultiHeadAttention returns (out, weights): keep [0].")
        if not isinstance(out, torch.Tensor):
            raise ExerciseWrong(f"{name}: {what} is {type(out).__name__}; return a torch.Tensor.")
        if out.shape != ref_out.shape:
            raise ExerciseWrong(f"{name}: {what} has shape {tuple(out.shape)}, expected "
                                f"{tuple(ref_out.shape)} (B, T, D): one vector per target position.")
        if not torch.isfinite(out).all():
            raise ExerciseWrong(f"{name}: {what} contains NaN or inf.")
        if not _close(out, ref_out):
            error = (out.float() - ref_out.float()).abs().max().item()
            raise ExerciseWrong(f"{name}: {what} differs from the reference (largest difference "
                                f"{error:.3g}). {generic}")


def _empty_rows(name: str, run, ref, g: torch.Generator, c: dict) -> None:
    """A sequence with an empty source and a target with no real token: finite outputs and
    gradients, equal to the reference."""
    __tracebackhide__ = True
    from scratchformer.causal import causal_padding_mask

    B, T, S, D = c["B"], c["T"], c["S"], c["D"]
    x = _randn(g, B, T, D).requires_grad_(True)
    memory = _randn(g, B, S, D).requires_grad_(True)
    keep_t = torch.ones(B, T, dtype=torch.bool)
    keep_t[-1] = False                                     # a target with no real token
    keep_t[0, :2] = False                                  # left padding: empty rows 0 and 1
    keep_s = torch.ones(B, 1, S, dtype=torch.bool)
    keep_s[-1] = False                                     # an empty source
    tgt_mask = causal_padding_mask(keep_t)
    what = "sequences with an empty source and target rows with nothing to attend to"
    out = run(x, memory, tgt_mask, keep_s)
    if isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
        raise ExerciseWrong(f"{name}: the output for {what} contains NaN or inf. {NAN_FROM_EMPTY_ROW}")
    with torch.no_grad():
        expected = ref(x, memory, tgt_mask, keep_s)
    if not _close(out, expected):
        raise ExerciseWrong(f"{name}: the output for {what} differs from the reference.")
    out.float().sum().backward()
    for label, t in (("x", x), ("memory", memory)):
        if t.grad is not None and not torch.isfinite(t.grad).all():
            raise ExerciseWrong(f"{name}: the gradient with respect to {label} for {what} "
                                f"contains NaN. {NAN_FROM_EMPTY_ROW}")


def _inputs_and_gradients(name: str, run, g: torch.Generator, c: dict) -> None:
    """The inputs (tensors and masks) are left as they were; gradients reach x and memory."""
    __tracebackhide__ = True
    B, T, S, D, H = c["B"], c["T"], c["S"], c["D"], c["H"]
    tgt_mask = _keep_masks(g, B, H, T, T)[2][1]                       # (B, T, T)
    memory_mask = _keep_masks(g, B, H, T, S)[1][1]                    # (B, 1, S)
    x, memory = _randn(g, B, T, D), _randn(g, B, S, D)
    before = snapshot(x, memory, tgt_mask, memory_mask)
    with torch.no_grad():
        run(x, memory, tgt_mask, memory_mask)
    require_unchanged(name, ["x", "memory", "tgt_mask", "memory_mask"], before,
                      [x, memory, tgt_mask, memory_mask])
    x.requires_grad_(True)
    memory.requires_grad_(True)
    out = run(x, memory, tgt_mask, memory_mask)
    require_gradients(name, out, {"x": x, "memory": memory})


def _low_precision(name: str, make_run, ref, g: torch.Generator, c: dict) -> None:
    """float16 and bfloat16, with masks that leave empty rows: output dtype = input dtype, close
    to the reference in the same dtype, finite."""
    __tracebackhide__ = True
    from scratchformer.causal import causal_padding_mask

    B, T, S, D = c["B"], c["T"], c["S"], c["D"]
    keep_t = torch.ones(B, T, dtype=torch.bool)
    keep_t[0, :2] = False
    keep_s = torch.ones(B, 1, S, dtype=torch.bool)
    keep_s[-1, 0, 1:] = False
    x, memory = _randn(g, B, T, D), _randn(g, B, S, D)
    for dtype in LOW_PRECISION:
        reference = copy.deepcopy(ref).to(dtype)
        run = make_run(reference)
        args = (x.to(dtype), memory.to(dtype), causal_padding_mask(keep_t), keep_s)
        out = run(*args)
        what = f"the output for {dtype} inputs, with causal and padding masks"
        require_dtype(name, what, out, dtype)
        if not torch.isfinite(out).all():
            raise ExerciseWrong(f"{name}: {what} contains NaN or inf. Likely bug: a -1e9 or -inf "
                                f"fill overflows in {dtype}. {NAN_FROM_EMPTY_ROW}")
        # Judged against float32 arithmetic on the same rounded weights and inputs, with the
        # reference's own rounding error as the yardstick: a correct layer that orders its
        # operations differently (e.g. the explicit attention path instead of the fused one)
        # rounds differently in bfloat16, by up to ~0.13 here, which a fixed tolerance of
        # 5e-2 rejected in about 1 call in 12.
        with torch.no_grad():
            expected = reference(*args)
            exact = copy.deepcopy(reference).float()(
                *(a.float() if a.is_floating_point() else a for a in args))
        rounding = (expected.float() - exact).abs().max().item()
        error = (out.float() - exact).abs().max().item()
        if error > max(4 * rounding, 5e-2):
            raise ExerciseWrong(f"{name}: {what} differs from float32 arithmetic by {error:.3g}, "
                                f"more than 4 times the reference's own {dtype} rounding error "
                                f"({rounding:.3g}).")


def _require_dropout(name: str, learner, reference, run, samples: int = 500,
                     max_z2: float = 1.8, max_log_ratio: float = 0.04) -> None:
    """Dropout p > 0: deterministic and equal to the reference in eval mode, stochastic in
    training (the shared probe), and in training the same distribution of outputs as the
    reference, tested on its mean and its spread, element by element: the average squared
    z-score of the difference of the means is about 1 when both agree, and the average log ratio
    of the variances about 0 (a few thousandths over 500 passes). Dropout that is missing,
    misplaced or not rescaled moves one or both far beyond."""
    __tracebackhide__ = True
    require_dropout_behaviour(name, learner, reference, run, samples=2, max_z=None)
    learner.train()
    reference.train()
    try:
        with torch.no_grad():
            ours = torch.stack([run(learner).double() for _ in range(samples)])
            theirs = torch.stack([run(reference).double() for _ in range(samples)])
    finally:
        learner.eval()
        reference.eval()
    ours_var, theirs_var = ours.var(0), theirs.var(0)
    moved = (ours_var > 1e-12) & (theirs_var > 1e-12)        # the entries dropout changes at all
    z2 = ((ours.mean(0) - theirs.mean(0)) ** 2 / ((ours_var + theirs_var) / samples))[moved].mean()
    log_ratio = (ours_var[moved].log() - theirs_var[moved].log()).mean()
    if z2 > max_z2 or log_ratio.abs() > max_log_ratio:
        spread = "larger" if log_ratio > 0 else "smaller"
        raise ExerciseWrong(
            f"{name}: in train mode the outputs are distributed differently from the reference's "
            f"over {samples} passes (mean squared z-score of the mean {z2.item():.1f}, about 1 if "
            f"they agreed; the spread is {abs(log_ratio.item()):.0%} {spread} in log terms). Likely "
            "bug: dropout missing on a sublayer's output, in the wrong place (the paper applies it "
            "to each sublayer's output, before the residual addition), or the kept values not "
            "rescaled by 1/(1-p): use the layer's nn.Dropout modules dropout1..3."
        )


# --------------------------------------------------------------------------------------------
# Exercise 8.1: DecoderLayer.forward
# --------------------------------------------------------------------------------------------

KV_FROM_DECODER = (
    "the cross-attention takes its keys and values from the decoder instead of the memory: "
    "self.cross_attn(h, h, h) is a second self-attention, and the source is never read. The "
    "queries come from the decoder, the keys and values from the encoder's output, the memory."
)
Q_FROM_MEMORY = (
    "the cross-attention takes its queries from the memory instead of the decoder. The queries are "
    "the target positions (the decoder's stream), the keys and values the source positions: "
    "MultiHeadAttention's first argument is the query. With queries from the memory there is one "
    "output row per source position, (B, S, D), not per target position."
)
CAUSAL_ON_CROSS = (
    "the masks are in the wrong attentions: tgt_mask (the target's causal and padding mask, "
    "T x T keys) belongs to the self-attention, memory_mask (the source padding, S keys) to the "
    "cross-attention, which may read the whole source."
)
MEMORY_MASK_IGNORED = (
    "the memory mask is ignored: padded source positions get attention weight. Pass memory_mask "
    "to the cross-attention."
)
EXTRA_CAUSAL = (
    "your layer adds a causal mask of its own to tgt_mask. The caller's tgt_mask already says which "
    "keys each target position may see (it is the causal mask when there is one, and a decoder "
    "with a cache passes another): pass it to the self-attention as it is."
)
TGT_MASK_IGNORED = (
    "the target mask is ignored: pass tgt_mask to the self-attention, or each target position "
    "sees the future (and the target's padding)."
)
MASKS_IGNORED = "both masks are ignored: tgt_mask goes to the self-attention, memory_mask to the cross-attention."
WRONG_ORDER = (
    "the sublayers are in the wrong order: cross-attention before self-attention. A decoder layer "
    "first attends to the target so far (masked self-attention, norm1), then to the source "
    "(cross-attention, norm2), then applies the feed-forward network (norm3)."
)
NORM_SWAPPED = (
    "the two LayerNorm placements are swapped: with norm_first=False your layer normalises each "
    "sublayer's input (pre-LN) and with norm_first=True the sum (post-LN). Pass self.norm_first on "
    "unchanged."
)
NORM_ALWAYS_POST = (
    "the pre-LN placement is missing: with norm_first=True your layer still normalises after the "
    "residual add (post-LN). Pre-LN normalises each sublayer's input and adds the sublayer's "
    "output to the un-normalised stream: pass self.norm_first on."
)
NORM_ALWAYS_PRE = (
    "the post-LN placement is missing: with norm_first=False (the paper's, the default) your "
    "layer still normalises each sublayer's input (pre-LN). Post-LN normalises the sum of the "
    "stream and the sublayer's output: pass self.norm_first on."
)
MEMORY_NORMALISED = (
    "the memory goes through the decoder's LayerNorm. Only the decoder's own stream is normalised "
    "inside the layer; the memory enters the cross-attention as it is (in a pre-LN model the "
    "encoder's final LayerNorm has already normalised it)."
)
NO_RESIDUAL = (
    "the residual connection is missing: each sublayer's output must be added to its input (the "
    "stream), LN(h + Dropout(Sub(h))) in post-LN, h + Dropout(Sub(LN(h))) in pre-LN."
)
NORMALISED_RESIDUAL = (
    "in pre-LN the residual path carries the normalised stream: it must carry h itself, "
    "h + Dropout(Sub(LN(h))), not LN(h) + Dropout(Sub(LN(h)))."
)
SHARED_NORM = (
    "one LayerNorm is used for every sublayer: each has its own, norm1 (self-attention), norm2 "
    "(cross-attention), norm3 (feed-forward), with their own gains and biases."
)
FF_MISSING = "the feed-forward sublayer is missing: after the cross-attention comes feed_forward, with norm3."
CROSS_MISSING = "the cross-attention sublayer is missing: the layer never reads the memory."
SELF_MISSING = "the self-attention sublayer is missing: the target positions never see each other."
LAYER_PARAMETERS = ("self_attn, cross_attn (MultiHeadAttention), feed_forward (FeedForward), norm1, norm2, "
                    "norm3 (LayerNorm), dropout1, dropout2, dropout3")
LAYER_GENERIC = (
    "Each sublayer goes through residual(h, sublayer, norm_k, self.norm_first, dropout_k): "
    "self-attention on the stream with tgt_mask; cross-attention with queries from the stream, "
    "keys and values from memory, with memory_mask; then feed_forward."
)


def _layer_forward(layer, x, memory, tgt_mask=None, memory_mask=None, *, kv="memory", q="decoder",
                   self_mask="tgt", cross_mask="memory", order=("self", "cross", "ff"), norm_first=None,
                   norm_memory=False, connection="residual", norms="own", skip=(), extra_causal=False):
    """The reference forward pass of ``layer``, with one switch per classic bug."""
    from scratchformer.causal import causal_mask

    masks = {"tgt": tgt_mask, "memory": memory_mask, None: None}
    if extra_causal:
        causal = causal_mask(x.size(1), device=x.device)
        masks["tgt"] = causal if tgt_mask is None else tgt_mask & causal
    if norm_first is None:
        norm_first = layer.norm_first
    elif norm_first == "swap":
        norm_first = not layer.norm_first

    def self_attend(h):
        return layer.self_attn(h, h, h, mask=masks[self_mask])[0]

    def cross_attend(h):
        mem = layer.norm2(memory) if norm_memory else memory
        keys = h if kv == "decoder" else mem
        queries = mem if q == "memory" else h
        return layer.cross_attn(queries, keys, keys, mask=masks[cross_mask])[0]

    def connect(h, sublayer, norm, dropout):
        if connection == "none":
            return dropout(sublayer(norm(h))) if norm_first else norm(dropout(sublayer(h)))
        if connection == "normalised" and norm_first:
            h = norm(h)
            return h + dropout(sublayer(h))
        return norm(h + dropout(sublayer(h))) if not norm_first else h + dropout(sublayer(norm(h)))

    sublayers = {"self": (self_attend, layer.norm1, layer.dropout1),
                 "cross": (cross_attend, layer.norm2, layer.dropout2),
                 "ff": (layer.feed_forward, layer.norm3, layer.dropout3)}
    for part in order:
        if part in skip:
            continue
        sublayer, norm, dropout = sublayers[part]
        x = connect(x, sublayer, layer.norm1 if norms == "shared" else norm, dropout)
    return x


def _variant(**switches):
    return lambda layer, *args: _layer_forward(layer, *args, **switches)


LAYER_HYPOTHESES = {
    KV_FROM_DECODER: [_variant(kv="decoder"), _variant(kv="decoder", cross_mask=None)],
    Q_FROM_MEMORY: [_variant(q="memory"), _variant(q="memory", kv="decoder")],
    CAUSAL_ON_CROSS: [_variant(self_mask="memory", cross_mask="tgt"),
                      _variant(self_mask=None, cross_mask="tgt"),
                      _variant(self_mask="memory", cross_mask=None)],
    MASKS_IGNORED: [_variant(self_mask=None, cross_mask=None)],
    MEMORY_MASK_IGNORED: [_variant(cross_mask=None)],
    TGT_MASK_IGNORED: [_variant(self_mask=None)],
    EXTRA_CAUSAL: [_variant(extra_causal=True)],
    WRONG_ORDER: [_variant(order=("cross", "self", "ff"))],
    NORM_SWAPPED: [_variant(norm_first="swap")],
    NORM_ALWAYS_POST: [_variant(norm_first=False)],
    NORM_ALWAYS_PRE: [_variant(norm_first=True)],
    MEMORY_NORMALISED: [_variant(norm_memory=True)],
    NO_RESIDUAL: [_variant(connection="none")],
    NORMALISED_RESIDUAL: [_variant(connection="normalised")],
    SHARED_NORM: [_variant(norms="shared")],
    FF_MISSING: [_variant(skip=("ff",))],
    CROSS_MISSING: [_variant(skip=("cross",))],
    SELF_MISSING: [_variant(skip=("self",))],
}


def _layer_module(name: str, cls_or_fn, ref):
    """The learner's layer holding ``ref``'s weights: an instance of the learner's class, or a copy
    of ``ref`` whose forward is the learner's function."""
    if isinstance(cls_or_fn, type):
        return _instantiate(name, cls_or_fn, ref, ref.d_model, ref.n_heads, ref.feed_forward.d_ff,
                            dropout=ref.dropout1.p, norm_first=ref.norm_first,
                            parameters=LAYER_PARAMETERS)
    module = copy.deepcopy(ref)
    module.forward = types.MethodType(cls_or_fn, module)
    return module


DROPOUT_ON_RESIDUAL = (
    "dropout acts on the residual stream (after the addition, or on x itself), not only on "
    "the sublayer's output: with every sublayer silenced (outputs exactly 0) the layer's "
    "output in train mode still changes from pass to pass. The paper applies dropout to each "
    "sublayer's output before it is added: x + dropout(sublayer(x)), then the norm."
)


def _require_dropout_on_sublayers_only(name: str, cls_or_fn, ref, probe: tuple) -> None:
    """With the last linear map of every sublayer set to zero, x + dropout(sublayer(x)) is
    x + 0 whatever dropout draws, so a correct layer is deterministic in train mode; dropout
    on the residual stream is not. (A statistical comparison alone missed that bug in about
    1 check in 25: after the norm the two distributions can be close.)"""
    __tracebackhide__ = True
    silent = copy.deepcopy(ref)
    with torch.no_grad():
        for last in (silent.self_attn.out_proj, silent.cross_attn.out_proj,
                     silent.feed_forward.linear2):
            for parameter in last.parameters():
                parameter.zero_()
    module = _layer_module(name, cls_or_fn, silent)
    module.train()
    try:
        with torch.no_grad():
            outs = [_call(name, module, *_clones(probe)) for _ in range(3)]
    finally:
        module.eval()
    if not all(isinstance(o, torch.Tensor) for o in outs):
        return                                  # the statistical probe reports the type
    if not all(torch.equal(outs[0], o) for o in outs[1:]):
        raise ExerciseWrong(f"{name}: in train mode the output varies although every sublayer "
                            f"outputs zeros. Likely bug: {DROPOUT_ON_RESIDUAL}")


@exercise("8.1", reference="scratchformer.decoder")
def decoder_layer(cls_or_fn) -> None:
    """Check a decoder layer's forward pass against the chapter's reference.

    ``cls_or_fn``: a class built as ``cls(d_model, n_heads, d_ff, dropout=..., norm_first=...)``
    with the parameters of :class:`scratchformer.decoder.DecoderLayer`, whose ``forward(x, memory,
    tgt_mask=None, memory_mask=None)`` returns (B, T, D); or a function with that signature whose
    first argument is the layer (an unbound ``forward``).
    """
    __tracebackhide__ = True
    name = "DecoderLayer.forward"
    from scratchformer.decoder import DecoderLayer as Reference

    g = _generator()
    c = _config(g)
    refs, runs = {}, {}
    for norm_first in (False, True):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        refs[norm_first] = _randomise(Reference(c["D"], c["H"], c["D_FF"], norm_first=norm_first), g)
        module = _layer_module(name, cls_or_fn, refs[norm_first])
        runs[refs[norm_first]] = lambda *args, m=module: _call(name, m, *args)
    probes = _probes(g, c, refs)
    expected = [_outcome(p.ref, p.args) for p in probes]
    learner = [_outcome(runs[p.ref], p.args) for p in probes]
    if not all(isinstance(o, torch.Tensor) and _close(o, e) for o, e in zip(learner, expected)):
        hint = _explain(learner, probes, expected, LAYER_HYPOTHESES)
        if hint is not None:
            raise ExerciseWrong(f"{name}: the output is wrong. Likely bug: {hint}")
        _first_failure(name, learner, probes, expected, LAYER_GENERIC)
    for ref in refs.values():
        _inputs_and_gradients(name, runs[ref], g, c)
        _empty_rows(name, runs[ref], ref, g, c)

        def make_run(reference):
            module = _layer_module(name, cls_or_fn, reference)
            return lambda *args: _call(name, module, *args)

        _low_precision(name, make_run, ref, g, c)
    # dropout: deterministic and equal to the reference in eval, stochastic in training
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    ref = _randomise(Reference(c["D"], c["H"], c["D_FF"], dropout=DROPOUT, norm_first=False), g)
    module = _layer_module(name, cls_or_fn, ref)
    probe = probes[1].args
    _require_dropout_on_sublayers_only(name, cls_or_fn, ref, probe)
    _require_dropout(name, module, ref, lambda m: _call(name, m, *_clones(probe)))
    _passed(name, f"matches the reference, post-LN and pre-LN, B={c['B']}, T={c['T']} != S={c['S']}, "
                  "every mask shape for both masks; empty rows finite; inputs unchanged, gradients "
                  "flow; float16 and bfloat16; dropout only in training.")


# --------------------------------------------------------------------------------------------
# Exercise 8.2: Decoder.forward
# --------------------------------------------------------------------------------------------

SAME_INPUT = (
    "every layer reads the stack's input x instead of the previous layer's output, so only the last "
    "layer counts. Feed each layer the output of the one before it."
)
LAYERS_SKIPPED = "the layers are never applied: the output is the input (after the final norm, if any)."
ONLY_FIRST = "only the first layer is applied: a `return` inside the loop?"
REVERSED = "the layers are applied in reverse order: self.layers[0] comes first."
MEMORY_FROM_PREVIOUS = (
    "the layers get the previous decoder layer's output as their memory. Every layer attends to the "
    "same memory, the encoder's final output."
)
MASKS_NOT_PASSED = "the masks are not passed on to the layers: every layer needs tgt_mask and memory_mask."
MASKS_SWAPPED = (
    "the two masks are swapped: DecoderLayer.forward takes (x, memory, tgt_mask, memory_mask), the "
    "self-attention's mask first. Pass them by name if in doubt."
)
NO_FINAL_NORM = (
    "the final LayerNorm of the pre-LN stack is missing: after the last layer, apply self.norm when "
    "it is not None (post-LN stacks have none)."
)
NORM_EVERY_LAYER = "the final LayerNorm is applied after every layer. It is applied once, after the last layer."
NORM_FIRST_OF_STACK = "the final LayerNorm is applied to the stack's input instead of its output."
STACK_PARAMETERS = "layers (an nn.ModuleList of DecoderLayer) and norm (LayerNorm for pre-LN, None for post-LN)"
STACK_GENERIC = ("Apply the layers in turn, each to the previous output and the same memory and masks; "
                 "then the final norm if self.norm is not None.")


def _stack(layers, memory_of=None, masks=None, norm_each=False, norm=True, norm_input=False):
    """A variant of the stack's forward pass, for the hypotheses."""
    def forward(ref, x, memory, tgt_mask=None, memory_mask=None):
        h = ref.norm(x) if norm_input and ref.norm is not None else x
        for layer in layers(ref):
            args = (tgt_mask, memory_mask) if masks is None else masks(tgt_mask, memory_mask)
            h = layer(h, memory if memory_of is None else h, *args)
            if norm_each and ref.norm is not None:
                h = ref.norm(h)
        if norm and not norm_each and not norm_input and ref.norm is not None:
            h = ref.norm(h)
        return h
    return forward


def _same_input(ref, x, memory, tgt_mask=None, memory_mask=None):
    h = ref.layers[-1](x, memory, tgt_mask, memory_mask)
    return ref.norm(h) if ref.norm is not None else h


def _skipped(ref, x, memory, tgt_mask=None, memory_mask=None):
    return ref.norm(x) if ref.norm is not None else x


STACK_HYPOTHESES = {
    SAME_INPUT: [_same_input],
    LAYERS_SKIPPED: [_skipped, lambda ref, x, *args: x],
    ONLY_FIRST: [_stack(lambda r: r.layers[:1]), _stack(lambda r: r.layers[:1], norm=False)],
    REVERSED: [_stack(lambda r: r.layers[::-1])],
    MEMORY_FROM_PREVIOUS: [_stack(lambda r: r.layers, memory_of="previous")],
    MASKS_NOT_PASSED: [_stack(lambda r: r.layers, masks=lambda t, m: (None, None)),
                       _stack(lambda r: r.layers, masks=lambda t, m: (t, None)),
                       _stack(lambda r: r.layers, masks=lambda t, m: (None, m))],
    MASKS_SWAPPED: [_stack(lambda r: r.layers, masks=lambda t, m: (m, t))],
    NO_FINAL_NORM: [_stack(lambda r: r.layers, norm=False)],
    NORM_EVERY_LAYER: [_stack(lambda r: r.layers, norm_each=True)],
    NORM_FIRST_OF_STACK: [_stack(lambda r: r.layers, norm_input=True)],
}


@exercise("8.2", reference="scratchformer.decoder")
def decoder_stack(cls: type) -> None:
    """Check ``cls(d_model, n_heads, d_ff, n_layers, dropout=..., norm_first=...)`` whose
    ``forward(x, memory, tgt_mask=None, memory_mask=None)`` must equal
    :class:`scratchformer.decoder.Decoder`'s. The learner's stack gets the package's layers, so this
    checks the stack, not Exercise 8.1."""
    __tracebackhide__ = True
    name = "Decoder.forward"
    from scratchformer.decoder import Decoder as Reference

    g = _generator()
    c = _config(g)

    def build(norm_first: bool, dropout: float = 0.0):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        ref = _randomise(Reference(c["D"], c["H"], c["D_FF"], c["L"], dropout=dropout,
                                   norm_first=norm_first), g)
        module = _instantiate(name, cls, ref, c["D"], c["H"], c["D_FF"], c["L"], dropout=dropout,
                              norm_first=norm_first, parameters=STACK_PARAMETERS)
        module.layers = copy.deepcopy(ref.layers)
        return ref, module

    refs, runs = {}, {}
    for norm_first in (False, True):
        ref, module = build(norm_first)
        refs[norm_first] = ref
        runs[ref] = lambda *args, m=module: _call(name, m, *args)
    probes = _probes(g, c, refs)
    expected = [_outcome(p.ref, p.args) for p in probes]
    learner = [_outcome(runs[p.ref], p.args) for p in probes]
    if not all(isinstance(o, torch.Tensor) and _close(o, e) for o, e in zip(learner, expected)):
        hint = _explain(learner, probes, expected, STACK_HYPOTHESES)
        if hint is not None:
            raise ExerciseWrong(f"{name}: the output is wrong ({c['L']} layers). Likely bug: {hint}")
        _first_failure(name, learner, probes, expected, STACK_GENERIC)
    for ref in refs.values():
        _inputs_and_gradients(name, runs[ref], g, c)
        _empty_rows(name, runs[ref], ref, g, c)

        def make_run(reference):
            module = _instantiate(name, cls, reference, c["D"], c["H"], c["D_FF"], c["L"],
                                  norm_first=reference.norm_first, parameters=STACK_PARAMETERS)
            module.layers = reference.layers
            return lambda *args: _call(name, module, *args)

        _low_precision(name, make_run, ref, g, c)
    ref, module = build(False, DROPOUT)
    probe = probes[1].args
    _require_dropout(name, module, ref, lambda m: _call(name, m, *_clones(probe)), samples=200,
                     max_log_ratio=0.1)
    _passed(name, f"{c['L']} layers in turn on the same memory and masks, a final LayerNorm for pre-LN "
                  "only; every mask shape; empty rows finite; inputs unchanged, gradients flow; "
                  "float16 and bfloat16; dropout only in training.")
