"""Checkers for chapter 08 (``scratchformer.decoder``): the forward pass of a decoder layer
(self-attention, cross-attention, feed-forward) and of the decoder stack."""

from __future__ import annotations

import copy

import torch

from scratchformer.checks._common import (
    NAN_FROM_EMPTY_ROW,
    ExerciseNotAttempted,
    ExerciseWrong,
    _call,
    _close,
    _diagnose,
    _generator,
    _passed,
    _randn,
    _require_finite,
    _require_tensor,
)

__all__ = ["decoder_layer", "decoder_stack"]

B, H, D, D_FF = 2, 2, 8, 12


def _randomise(module: torch.nn.Module, g: torch.Generator) -> torch.nn.Module:
    """Random weights everywhere, LayerNorm gains around 1, so that every missing piece shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = 0.4 * _randn(g, *p.shape)
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)
    return module.eval()


def _masks(g: torch.Generator, T: int, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal tgt_mask (T, T) and a source padding memory_mask (B, 1, S); sequence 1 is padded."""
    from scratchformer.causal import causal_mask

    length = int(torch.randint(1, S, (1,), generator=g))            # 1 <= length < S: some padding
    memory_mask = torch.ones(B, 1, S, dtype=torch.bool)
    memory_mask[1, 0, length:] = False
    return causal_mask(T), memory_mask


def _instantiate(name: str, cls: type, ref: torch.nn.Module, *args, parameters: str, **kwargs):
    """Build the learner's module with the reference's constructor arguments and load its weights."""
    __tracebackhide__ = True
    try:
        module = cls(*args, **kwargs)
    except NotImplementedError:
        raise ExerciseNotAttempted(f"{name}: not attempted yet.") from None
    except Exception as error:
        raise ExerciseWrong(f"{name}: constructing {cls.__name__}{args} raised {type(error).__name__}: {error}") from error
    try:
        module.load_state_dict(ref.state_dict())
    except Exception as error:
        raise ExerciseWrong(f"{name}: could not load the reference weights ({error}). Keep the chapter's "
                            f"parameters: {parameters}.") from error
    return module.eval()


# --------------------------------------------------------------------------------------------
# Exercise 8.1: DecoderLayer.forward
# --------------------------------------------------------------------------------------------

KV_FROM_DECODER = (
    "the cross-attention takes its keys and values from the decoder instead of the memory: "
    "self.cross_attn(h, h, h) is a second self-attention, and the source is never read. Keys and "
    "values come from the encoder's output: self.cross_attn(h, memory, memory, mask=memory_mask)."
)
Q_FROM_MEMORY = (
    "the cross-attention takes its queries from the memory instead of the decoder. The queries are "
    "the target positions (the decoder's h), the keys and values the source positions; the first "
    "argument is the query: self.cross_attn(h, memory, memory, mask=memory_mask). With queries from "
    "the memory there is one output row per source position, (B, S, D), not per target position."
)
CAUSAL_ON_CROSS = (
    "the causal mask is applied to the cross-attention instead of the self-attention. tgt_mask "
    "(causal, T x T) belongs to the self-attention: the target must not see its own future. "
    "memory_mask (the source padding, (B, 1, S)) belongs to the cross-attention, which may read the "
    "whole source."
)
MEMORY_MASK_IGNORED = (
    "the memory padding mask is ignored: padded source positions get attention weight. Pass it to "
    "the cross-attention: self.cross_attn(h, memory, memory, mask=memory_mask)."
)
TGT_MASK_IGNORED = (
    "the target mask is ignored: every target position sees its own future. Pass tgt_mask to the "
    "self-attention: self.self_attn(h, h, h, mask=tgt_mask)."
)
WRONG_ORDER = (
    "the sublayers are in the wrong order: cross-attention before self-attention. A decoder layer "
    "first attends to the target so far (masked self-attention, norm1), then to the source "
    "(cross-attention, norm2), then applies the feed-forward network (norm3)."
)
NORM_FIRST_IGNORED = (
    "norm_first is ignored: pass self.norm_first on to residual(x, sublayer, norm, self.norm_first, "
    "dropout), so that a pre-LN layer normalises each sublayer's input and a post-LN layer the sum."
)
MEMORY_NORMALISED = (
    "the memory goes through the decoder's LayerNorm. Only the decoder's own stream is normalised "
    "inside the layer; the memory enters the cross-attention as it is (in a pre-LN model the "
    "encoder's final LayerNorm has already normalised it)."
)
MASK_MISPLACED = (
    "a mask reached an attention it does not fit. tgt_mask (T x T keys) belongs to the "
    "self-attention, memory_mask (S keys, the memory) to the cross-attention; and the cross-attention's "
    "keys and values must be the memory. Likely bug: " + CAUSAL_ON_CROSS
)
LAYER_PARAMETERS = ("self_attn, cross_attn (MultiHeadAttention), feed_forward (FeedForward), norm1, norm2, "
                    "norm3 (LayerNorm), dropout1, dropout2, dropout3")


def _layer_forward(layer, x, memory, tgt_mask=None, memory_mask=None, *, kv="memory", q="decoder",
                   self_mask="tgt", cross_mask="memory", order=("self", "cross", "ff"), norm_first=None,
                   norm_memory=False):
    """The reference forward pass of ``layer``, with one switch per classic bug."""
    from scratchformer.encoder import residual

    masks = {"tgt": tgt_mask, "memory": memory_mask, None: None}
    norm_first = layer.norm_first if norm_first is None else norm_first

    def self_attend(h):
        return layer.self_attn(h, h, h, mask=masks[self_mask])[0]

    def cross_attend(h):
        mem = layer.norm2(memory) if norm_memory else memory
        keys = h if kv == "decoder" else mem
        queries = mem if q == "memory" else h
        return layer.cross_attn(queries, keys, keys, mask=masks[cross_mask])[0]

    sublayers = {"self": (self_attend, layer.norm1, layer.dropout1),
                 "cross": (cross_attend, layer.norm2, layer.dropout2),
                 "ff": (layer.feed_forward, layer.norm3, layer.dropout3)}
    for part in order:
        sublayer, norm, dropout = sublayers[part]
        x = residual(x, sublayer, norm, norm_first, dropout)
    return x


def _layer_runner(name: str, cls_or_fn, ref):
    """(x, memory, tgt_mask, memory_mask) -> the learner's output, for a class or a forward function."""
    if isinstance(cls_or_fn, type):
        module = _instantiate(name, cls_or_fn, ref, D, H, D_FF, norm_first=ref.norm_first,
                              parameters=LAYER_PARAMETERS)
        return lambda *args: _call(name, module, *args)
    return lambda *args: _call(name, cls_or_fn, ref, *args)


def _run_layer(name: str, run, what: str, x, memory, tgt_mask=None, memory_mask=None):
    __tracebackhide__ = True
    try:
        out = run(x, memory, tgt_mask, memory_mask)
    except ExerciseWrong as error:
        cause = error.__cause__
        if isinstance(cause, ValueError) and "mask" in str(cause):
            raise ExerciseWrong(f"{name}: {what}: your code raised ValueError: {cause} {MASK_MISPLACED}") from error
        if isinstance(cause, RuntimeError) and "size of tensor" in str(cause) and x.size(1) != memory.size(1):
            raise ExerciseWrong(f"{name}: {what}: your code raised RuntimeError: {cause}. Likely bug: "
                                f"{Q_FROM_MEMORY}") from error
        raise
    if isinstance(out, tuple):
        raise ExerciseWrong(f"{name}: return only the output tensor (B, T, D), not a tuple. "
                            "MultiHeadAttention returns (out, weights): keep [0].")
    if isinstance(out, torch.Tensor) and tuple(out.shape) == (B, memory.size(1), D) and x.size(1) != memory.size(1):
        raise ExerciseWrong(f"{name}: {what}: the output has shape (B, S, D) = {tuple(out.shape)}, one row per "
                            f"source position. Likely bug: {Q_FROM_MEMORY}")
    _require_tensor(name, f"the output ({what})", out, tuple(x.shape))
    _require_finite(name, f"the output ({what})", out)
    return out


def decoder_layer(cls_or_fn) -> None:
    """Check a decoder layer's forward pass against the chapter's reference.

    ``cls_or_fn``: a class built as ``cls(d_model, n_heads, d_ff, norm_first=...)`` with the parameters
    of :class:`scratchformer.decoder.DecoderLayer`, whose ``forward(x, memory, tgt_mask=None,
    memory_mask=None)`` returns (B, T, D); or a function with that signature whose first argument
    is the layer (an unbound ``forward``).
    """
    __tracebackhide__ = True
    name = "DecoderLayer.forward"
    from scratchformer.decoder import DecoderLayer as Reference

    g = _generator()
    for norm_first in (False, True):
        placement = "pre-LN" if norm_first else "post-LN"
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        ref = _randomise(Reference(D, H, D_FF, norm_first=norm_first), g)
        run = _layer_runner(name, cls_or_fn, ref)
        with torch.no_grad():
            # 1. T == S, no masks: where the queries, keys and values come from; sublayer order; norms
            T = S = 5
            x, memory = _randn(g, B, T, D), _randn(g, B, S, D)
            what = f"{placement}, T = S, no masks"
            out = _run_layer(name, run, what, x, memory)
            variants = {KV_FROM_DECODER: [{"kv": "decoder"}],
                        Q_FROM_MEMORY: [{"q": "memory"}, {"q": "memory", "kv": "decoder"}],
                        WRONG_ORDER: [{"order": ("cross", "self", "ff")}],
                        NORM_FIRST_IGNORED: [{"norm_first": not norm_first}],
                        MEMORY_NORMALISED: [{"norm_memory": True}]}
            _diagnose_variants(name, f"the output ({what})", out, ref, x, memory, None, None, variants)

            # 2. T == S, causal tgt_mask and a padded memory: which mask goes where
            tgt_mask, memory_mask = _masks(g, T, S)
            what = f"{placement}, T = S, causal tgt_mask (T, T) and memory_mask (B, 1, S)"
            out = _run_layer(name, run, what, x, memory, tgt_mask, memory_mask)
            variants = {CAUSAL_ON_CROSS: [{"self_mask": "memory", "cross_mask": "tgt"},
                                          {"self_mask": None, "cross_mask": "tgt"},
                                          {"self_mask": "memory", "cross_mask": None}],
                        MEMORY_MASK_IGNORED: [{"cross_mask": None}],
                        TGT_MASK_IGNORED: [{"self_mask": None}]}
            _diagnose_variants(name, f"the output ({what})", out, ref, x, memory, tgt_mask, memory_mask, variants)

            # 3. T != S with masks: the output has one row per target position
            T, S = 4, 6
            x, memory = _randn(g, B, T, D), _randn(g, B, S, D)
            tgt_mask, memory_mask = _masks(g, T, S)
            what = f"{placement}, T = {T} != S = {S}, with masks"
            out = _run_layer(name, run, what, x, memory, tgt_mask, memory_mask)
            _diagnose_variants(name, f"the output ({what})", out, ref, x, memory, tgt_mask, memory_mask,
                               {MEMORY_MASK_IGNORED: [{"cross_mask": None}], TGT_MASK_IGNORED: [{"self_mask": None}]})

            # 4. padding and the future are invisible
            noisy = memory.clone()
            noisy[~memory_mask[:, 0]] = 100 * _randn(g, int((~memory_mask).sum()), D)
            if not _close(_run_layer(name, run, what, x, noisy, tgt_mask, memory_mask), out):
                raise ExerciseWrong(f"{name}: changing the memory at padded source positions changed the output. "
                                    f"Likely bug: {MEMORY_MASK_IGNORED}")
            changed = x.clone()
            changed[:, 2] = 100 * _randn(g, B, D)
            if not _close(_run_layer(name, run, what, changed, memory, tgt_mask, memory_mask)[:, :2], out[:, :2]):
                raise ExerciseWrong(f"{name}: changing target position 2 changed the outputs at positions 0 and 1: "
                                    f"the future leaks. Likely bug: {TGT_MASK_IGNORED}")

        # 5. an empty source and a fully padded target: finite outputs and gradients
        empty_memory = memory_mask.clone()
        empty_memory[1] = False
        empty_target = tgt_mask[None].repeat(B, 1, 1)
        empty_target[1] = False
        xg, mg = x.clone().requires_grad_(True), memory.clone().requires_grad_(True)
        what = f"{placement}, sequence 1 with an empty source and nothing to attend to in the target"
        out = run(xg, mg, empty_target, empty_memory)
        _require_finite(name, f"the output ({what})", out.detach(), NAN_FROM_EMPTY_ROW)
        with torch.no_grad():
            expected = _layer_forward(ref, x, memory, empty_target, empty_memory)
        _diagnose(name, f"the output ({what})", out.detach(), expected, {}, "")
        out.sum().backward()
        for label, t in (("x", xg), ("memory", mg)):
            _require_finite(name, f"the gradient with respect to {label} ({what})", t.grad, NAN_FROM_EMPTY_ROW)
    _passed(name, "matches the reference, post-LN and pre-LN, T = S and T != S, with causal and memory "
                  "padding masks; padding and the future are invisible; no NaN for empty rows.")


def _diagnose_variants(name, what, out, ref, x, memory, tgt_mask, memory_mask, variants) -> None:
    __tracebackhide__ = True
    expected = _layer_forward(ref, x, memory, tgt_mask, memory_mask)
    for hint, switch_sets in variants.items():
        for switches in switch_sets:
            try:
                candidate = _layer_forward(ref, x, memory, tgt_mask, memory_mask, **switches)
            except (ValueError, RuntimeError):
                continue                                # this variant cannot run on these shapes
            if not _close(candidate, expected) and _close(out, candidate):
                raise ExerciseWrong(f"{name}: {what} is wrong. Likely bug: {hint}")
    _diagnose(name, what, out, expected, {}, "Each sublayer goes through residual(x, sublayer, norm_k, "
              "self.norm_first, dropout_k): self-attention on x with tgt_mask, cross-attention with queries "
              "from the decoder and keys/values from memory with memory_mask, then feed_forward.")


# --------------------------------------------------------------------------------------------
# Exercise 8.2: Decoder.forward
# --------------------------------------------------------------------------------------------

SAME_INPUT = (
    "every layer reads the stack's input x instead of the previous layer's output, so only the last "
    "layer counts. Update x in the loop: for layer in self.layers: x = layer(x, memory, tgt_mask, memory_mask)."
)
MEMORY_FROM_PREVIOUS = (
    "the layers get the previous decoder layer's output as their memory. Every layer attends to the "
    "same memory, the encoder's final output: x = layer(x, memory, tgt_mask, memory_mask)."
)
MASKS_NOT_PASSED = (
    "the masks are not passed on to the layers: x = layer(x, memory, tgt_mask, memory_mask)."
)
MASKS_SWAPPED = (
    "the two masks are swapped: DecoderLayer.forward takes (x, memory, tgt_mask, memory_mask), the "
    "self-attention's mask first. Pass them by name if in doubt: layer(x, memory, tgt_mask=tgt_mask, "
    "memory_mask=memory_mask)."
)
NO_FINAL_NORM = (
    "the final LayerNorm of the pre-LN stack is missing: after the last layer, x = self.norm(x) when "
    "self.norm is not None (post-LN stacks have none)."
)
NORM_EVERY_LAYER = (
    "the final LayerNorm is applied after every layer. It is applied once, after the last layer."
)
STACK_PARAMETERS = "layers (an nn.ModuleList of DecoderLayer) and norm (LayerNorm for pre-LN, None for post-LN)"


def _stack_candidates(ref, x, memory, tgt_mask, memory_mask) -> dict[str, torch.Tensor]:
    def finish(h, norm=True):
        return ref.norm(h) if (norm and ref.norm is not None) else h

    def loop(memory_of=lambda h: memory, masks=(tgt_mask, memory_mask), norm_each=False):
        h = x
        for layer in ref.layers:
            h = layer(h, memory_of(h), *masks)
            if norm_each and ref.norm is not None:
                h = ref.norm(h)
        return h

    candidates = {}
    attempts = [
        (SAME_INPUT, lambda: finish(ref.layers[-1](x, memory, tgt_mask, memory_mask))),
        (SAME_INPUT, lambda: finish(x)),
        (MEMORY_FROM_PREVIOUS, lambda: finish(loop(memory_of=lambda h: h))),
        (MASKS_NOT_PASSED, lambda: finish(loop(masks=(None, None)))),
        (MASKS_NOT_PASSED, lambda: finish(loop(masks=(tgt_mask, None)))),
        (MASKS_NOT_PASSED, lambda: finish(loop(masks=(None, memory_mask)))),
        (MASKS_SWAPPED, lambda: finish(loop(masks=(memory_mask, tgt_mask)))),
        (NORM_EVERY_LAYER, lambda: loop(norm_each=True)),
    ]
    if ref.norm is not None:
        attempts.append((NO_FINAL_NORM, lambda: loop()))
    for hint, make in attempts:
        try:
            candidates.setdefault(hint, []).append(make())
        except (ValueError, RuntimeError):
            continue
    return candidates


def decoder_stack(cls: type) -> None:
    """Check ``cls(d_model, n_heads, d_ff, n_layers, norm_first=...)`` whose ``forward(x, memory,
    tgt_mask=None, memory_mask=None)`` must equal :class:`scratchformer.decoder.Decoder`'s."""
    __tracebackhide__ = True
    name = "Decoder.forward"
    from scratchformer.decoder import Decoder as Reference

    g = _generator()
    for norm_first in (False, True):
        placement = "pre-LN" if norm_first else "post-LN"
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        ref = _randomise(Reference(D, H, D_FF, 3, norm_first=norm_first), g)
        module = _instantiate(name, cls, ref, D, H, D_FF, 3, norm_first=norm_first, parameters=STACK_PARAMETERS)
        module.layers = copy.deepcopy(ref.layers)   # the package's layers: this checks the stack, not Exercise 8.1
        for T, S in ((5, 5), (4, 6)):
            x, memory = _randn(g, B, T, D), _randn(g, B, S, D)
            tgt_mask, memory_mask = _masks(g, T, S)
            what = f"the output ({placement}, 3 layers, T = {T}, S = {S}, causal and memory padding masks)"
            with torch.no_grad():
                try:
                    out = _call(name, module, x, memory, tgt_mask, memory_mask)
                except ExerciseWrong as error:
                    if isinstance(error.__cause__, ValueError) and "mask" in str(error.__cause__):
                        raise ExerciseWrong(f"{name}: your code raised ValueError: {error.__cause__} Likely bug: "
                                            f"{MASKS_SWAPPED} Or: {MEMORY_FROM_PREVIOUS}") from error
                    raise
                _require_tensor(name, what, out, (B, T, D))
                _require_finite(name, what, out)
                expected = ref(x, memory, tgt_mask, memory_mask)
                if not _close(out, expected):
                    for hint, outputs in _stack_candidates(ref, x, memory, tgt_mask, memory_mask).items():
                        if any(_close(out, c) and not _close(c, expected) for c in outputs):
                            raise ExerciseWrong(f"{name}: {what} is wrong. Likely bug: {hint}")
                _diagnose(name, what, out, expected, {},
                          "Apply the layers in turn, each to the previous output and the same memory and masks; "
                          "then the final norm if self.norm is not None.")
    _passed(name, "the layers in turn on the same memory and masks, with a final LayerNorm for pre-LN only.")
