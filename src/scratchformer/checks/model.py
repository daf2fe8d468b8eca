"""Checkers for chapter 09 (``scratchformer.model``): the Transformer's ``encode``, ``decode`` and
``forward`` (exercise 9.1) and its parameter count from the configuration (exercise 9.2)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from scratchformer.checks._common import ExerciseWrong, _call, _diagnose, _generator, _passed
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import (
    as_int,
    distinct_ints,
    require_dropout_behaviour,
    require_dtype,
    require_unchanged,
    snapshot,
)

__all__ = ["transformer", "transformer_parameter_count"]


def _model():
    return importlib.import_module("scratchformer.model")


def _draw(g: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


# --------------------------------------------------------------------------------------------
# Exercise 9.1: Transformer.encode / decode / forward
# --------------------------------------------------------------------------------------------

SCALE_MISSING = (
    "the token embeddings are not multiplied by sqrt(d_model). Look tokens up with the modules, "
    "self.src_embed(src) and self.tgt_embed(tgt_in): ScaledEmbedding multiplies by sqrt(D); "
    "indexing their .weight (or F.embedding) skips the factor."
)
SCALE_TWICE = (
    "the token embeddings are multiplied by sqrt(d_model) twice. self.src_embed and "
    "self.tgt_embed are ScaledEmbeddings: they already multiply by sqrt(D); do not scale again."
)
NO_POSITIONS = (
    "the positions are never added: pass the scaled embeddings through self.src_pos and "
    "self.tgt_pos, which add the positions and apply dropout (x = self.src_pos(self.src_embed(src)))."
)
POSITIONS_SWAPPED = (
    "src_pos and tgt_pos are swapped: the source takes its positions from self.src_pos and the "
    "target from self.tgt_pos (with learned positions they are different tables)."
)
NO_CAUSAL = (
    "the default target mask has no causal part: position i may attend to later positions, so "
    "the decoder sees the token it has to predict. Combine the causal mask with the target "
    "padding (chapter 07's causal_padding_mask(tgt_in != pad_id))."
)
NO_TGT_PADDING = (
    "the default target mask is causal only: padded target positions are not masked as keys. "
    "Combine causal and padding: causal_padding_mask(tgt_in != self.config.pad_id), (B, T, T)."
)
TGT_QUERIES = (
    "the target padding masks the queries (rows) instead of the keys (columns): a padded query "
    "row becomes all False and real positions may still read pad tokens. Mask keys, not queries: "
    "keep[:, None, :], as causal_padding_mask does."
)
TGT_QUERIES_AND_KEYS = (
    "the target padding masks the queries (rows) as well as the keys: padded query rows become "
    "all False. Mask keys, not queries (causal_padding_mask); a padded query computes something "
    "harmless that the loss ignores, and an all-False row only invites NaN."
)
TGT_STRICT = (
    "the causal part excludes the diagonal (j < i instead of j <= i): a position may not attend "
    "to itself. Use the lower triangle with its diagonal, chapter 07's causal_mask."
)
TGT_UPPER = (
    "the causal part is the upper triangle: each position attends to itself and the future, not "
    "the past. Use the lower triangle, chapter 07's causal_mask (mask[i, j] true for j <= i)."
)
TGT_FLIPPED = (
    "the default target mask is flipped (True where attending is forbidden). In this book True "
    "means 'may attend'."
)
SRC_FLIPPED = (
    "the default source mask is flipped: it is True at the padding. True means 'may attend', so "
    "the mask is True at the real tokens: src != pad_id, with a query axis, (B, 1, S)."
)
ENCODER_UNMASKED = (
    "the encoder's self-attention gets no mask: padded source positions are attended to. Pass "
    "the source mask to the encoder: self.encoder(x, src_mask)."
)
CROSS_UNMASKED = (
    "decode does not pass src_mask to the decoder, so the cross-attention reads padded memory "
    "positions: self.decoder(y, memory, tgt_mask, src_mask)."
)
SRC_UNUSED = (
    "the source mask is never used, neither in the encoder nor in the cross-attention: padded "
    "source positions are attended to everywhere."
)
FORWARD_DROPS_CROSS = (
    "forward does not pass the source mask on to decode, so the cross-attention reads padded "
    "memory positions: self.decode(tgt_in, memory, src_mask, tgt_mask)."
)
FORWARD_DROPS_ENCODER_MASK = (
    "forward does not pass src_mask on to encode: encode then rebuilds the mask from pad_id and "
    "a mask given by the caller is lost in the encoder: self.encode(src, src_mask)."
)
FORWARD_IGNORES_SRC_MASK = (
    "forward ignores its src_mask argument and always builds the mask from pad_id. Build it only "
    "when the caller passed None: `if src_mask is None: ...`."
)
ENCODE_IGNORES_MASK = (
    "encode ignores its src_mask argument and always builds the mask from pad_id. Build it only "
    "when the caller passed None."
)
DECODE_IGNORES_TGT_MASK = (
    "decode ignores its tgt_mask argument and always builds the causal-and-padding mask. Build "
    "it only when the caller passed None."
)
FORWARD_DROPS_TGT_MASK = (
    "forward does not pass tgt_mask on to decode, so a target mask given by the caller is "
    "replaced by the default one: self.decode(tgt_in, memory, src_mask, tgt_mask)."
)
PAD_ZERO = (
    "the padding id is hard-coded as 0. Use self.config.pad_id: a vocabulary may put <pad> "
    "anywhere, and id 0 is then a real token."
)
SOFTMAX = (
    "the output is probabilities (a softmax): the model returns the logits, h Wᵀ, and the loss "
    "(F.cross_entropy) applies the log-softmax itself."
)
LOG_SOFTMAX = (
    "the output is log-probabilities (a log_softmax): the model returns the logits, h Wᵀ; "
    "F.cross_entropy applies the log-softmax itself."
)
GENERATOR_MISSING = (
    "the generator is missing: decode must end with self.generator(h), which turns the "
    "decoder's vectors (B, T, D) into logits over the target vocabulary (B, T, V_tgt)."
)
EMBEDDINGS_SWAPPED = (
    "Are src_embed and tgt_embed swapped? Source ids go through self.src_embed (V_src rows), "
    "target ids through self.tgt_embed (V_tgt rows)."
)
EVAL_DROPOUT = (
    "in eval mode two forward passes differ. Likely bug: dropout applied in eval mode too. "
    "F.dropout(x, p) drops in eval mode as well (its training argument defaults to True); the "
    "model's modules (self.src_pos, self.tgt_pos, the layers) already apply dropout, and "
    "model.eval() switches them off."
)
INIT_CHANGED = (
    "Keep the given __init__ (src_embed, tgt_embed, src_pos, tgt_pos, encoder, decoder, "
    "generator): the exercise is encode, decode and forward."
)

# hint -> the switches of _Variant that reproduce that bug
_BUGS: dict[str, dict] = {
    SCALE_MISSING: dict(scale="none"),
    SCALE_TWICE: dict(scale="twice"),
    NO_POSITIONS: dict(positions=False),
    POSITIONS_SWAPPED: dict(swap_positions=True),
    NO_CAUSAL: dict(triangle="none"),
    NO_TGT_PADDING: dict(tgt_padding="none"),
    TGT_QUERIES: dict(tgt_padding="queries"),
    TGT_QUERIES_AND_KEYS: dict(tgt_padding="both"),
    TGT_STRICT: dict(triangle="strict"),
    TGT_UPPER: dict(triangle="upper"),
    TGT_FLIPPED: dict(tgt_flipped=True),
    SRC_FLIPPED: dict(src_flipped=True),
    ENCODER_UNMASKED: dict(encoder_unmasked=True),
    CROSS_UNMASKED: dict(cross_unmasked=True),
    SRC_UNUSED: dict(encoder_unmasked=True, cross_unmasked=True),
    FORWARD_DROPS_CROSS: dict(forward_drops_cross=True),
    FORWARD_DROPS_ENCODER_MASK: dict(forward_drops_encoder_mask=True),
    FORWARD_IGNORES_SRC_MASK: dict(forward_ignores_src_mask=True),
    ENCODE_IGNORES_MASK: dict(encode_ignores_mask=True),
    DECODE_IGNORES_TGT_MASK: dict(decode_ignores_tgt_mask=True),
    FORWARD_DROPS_TGT_MASK: dict(forward_drops_tgt_mask=True),
    PAD_ZERO: dict(pad_zero=True),
    SOFTMAX: dict(output="softmax"),
    LOG_SOFTMAX: dict(output="log_softmax"),
}


class _Variant:
    """The reference model's modules driven by an ``encode``/``decode``/``forward`` with the known
    bugs switched on (all off: the reference). Used in eval mode only."""

    def __init__(self, model, scale="once", positions=True, swap_positions=False, triangle="lower",
                 tgt_padding="keys", tgt_flipped=False, src_flipped=False, encoder_unmasked=False,
                 cross_unmasked=False, forward_drops_cross=False, forward_drops_encoder_mask=False,
                 forward_ignores_src_mask=False, encode_ignores_mask=False,
                 decode_ignores_tgt_mask=False, forward_drops_tgt_mask=False, pad_zero=False,
                 output="logits"):
        self.m, self.scale, self.positions, self.swap = model, scale, positions, swap_positions
        self.triangle, self.tgt_padding, self.tgt_flipped = triangle, tgt_padding, tgt_flipped
        self.src_flipped, self.encoder_unmasked = src_flipped, encoder_unmasked
        self.cross_unmasked, self.forward_drops_cross = cross_unmasked, forward_drops_cross
        self.forward_drops_encoder_mask = forward_drops_encoder_mask
        self.forward_ignores_src_mask = forward_ignores_src_mask
        self.encode_ignores_mask = encode_ignores_mask
        self.decode_ignores_tgt_mask = decode_ignores_tgt_mask
        self.forward_drops_tgt_mask = forward_drops_tgt_mask
        self.pad = 0 if pad_zero else model.config.pad_id
        self.output = output

    def _embed(self, embed, positions, tokens):
        D = self.m.config.d_model
        x = embed(tokens) * {"once": 1.0, "none": D**-0.5, "twice": D**0.5}[self.scale]
        return positions(x) if self.positions else x

    def _src_mask(self, src):
        keep = (src != self.pad)[:, None, :]
        return ~keep if self.src_flipped else keep

    def _tgt_mask(self, tgt_in):
        T = tgt_in.size(1)
        ones = torch.ones(T, T, dtype=torch.bool, device=tgt_in.device)
        triangle = {"lower": ones.tril(), "strict": ones.tril(-1), "upper": ones.triu(),
                    "none": ones}[self.triangle]
        keep = tgt_in != self.pad
        padding = {"keys": keep[:, None, :], "queries": keep[:, :, None],
                   "both": keep[:, None, :] & keep[:, :, None],
                   "none": torch.ones_like(keep)[:, None, :]}[self.tgt_padding]
        mask = triangle[None] & padding
        return ~mask if self.tgt_flipped else mask

    def encode(self, src, src_mask=None):
        m = self.m
        if src_mask is None or self.encode_ignores_mask:
            src_mask = self._src_mask(src)
        x = self._embed(m.src_embed, m.tgt_pos if self.swap else m.src_pos, src)
        return m.encoder(x, None if self.encoder_unmasked else src_mask)

    def decode(self, tgt_in, memory, src_mask=None, tgt_mask=None):
        m = self.m
        if tgt_mask is None or self.decode_ignores_tgt_mask:
            tgt_mask = self._tgt_mask(tgt_in)
        y = self._embed(m.tgt_embed, m.src_pos if self.swap else m.tgt_pos, tgt_in)
        h = m.decoder(y, memory, tgt_mask, None if self.cross_unmasked else src_mask)
        logits = m.generator(h)
        if self.output == "softmax":
            return logits.softmax(-1)
        return logits.log_softmax(-1) if self.output == "log_softmax" else logits

    def forward(self, src, tgt_in, src_mask=None, tgt_mask=None):
        if src_mask is None or self.forward_ignores_src_mask:
            src_mask = self._src_mask(src)
        memory = self.encode(src, None if self.forward_drops_encoder_mask else src_mask)
        return self.decode(tgt_in, memory, None if self.forward_drops_cross else src_mask,
                           None if self.forward_drops_tgt_mask else tgt_mask)


@dataclass
class _Case:
    """One configuration: the reference model, the learner's copy of it, and the inputs."""

    config: object
    reference: torch.nn.Module
    learner: torch.nn.Module
    src: torch.Tensor
    tgt_in: torch.Tensor
    src_mask: torch.Tensor          # a caller's source mask: one more real key hidden
    tgt_mask: torch.Tensor          # a caller's target mask: causal (T, T), no padding
    memory: torch.Tensor
    actual: dict[str, torch.Tensor] = field(default_factory=dict)


# what is called -> how (on a model or a _Variant); the keys name the calls in messages
_CALLS: dict[str, Callable] = {
    "forward(src, tgt_in)": lambda m, c: m.forward(c.src, c.tgt_in),
    "forward(src, tgt_in, src_mask, tgt_mask) with the caller's masks":
        lambda m, c: m.forward(c.src, c.tgt_in, c.src_mask, c.tgt_mask),
    "encode(src)": lambda m, c: m.encode(c.src),
    "encode(src, src_mask) with the caller's mask": lambda m, c: m.encode(c.src, c.src_mask),
    "decode(tgt_in, memory, src_mask)": lambda m, c: m.decode(c.tgt_in, c.memory, c.src_mask),
    "decode(tgt_in, memory) without a source mask": lambda m, c: m.decode(c.tgt_in, c.memory),
    "decode(tgt_in, memory, src_mask, tgt_mask) with the caller's masks":
        lambda m, c: m.decode(c.tgt_in, c.memory, c.src_mask, c.tgt_mask),
}


def _padded_ids(g: torch.Generator, lengths: list[int], L: int, vocab: int, pad_id: int,
                middle_pad: bool = False):
    """(B, L) ids in [0, vocab) without pad_id, padded with pad_id after ``lengths``; the
    largest id vocab - 1 and (if it is not padding) id 0 occur among the real tokens. With
    ``middle_pad``, sequence 0 also holds a pad at position 1, between real tokens: with right
    padding alone, a causal mask hides every pad key from the real queries anyway."""
    ids = torch.randint(0, vocab - 1, (len(lengths), L), generator=g)
    ids = ids + (ids >= pad_id).long()                       # skip pad_id
    ids[0, 0] = vocab - 1
    if pad_id != 0:
        ids[0, 2] = 0
    ids[torch.arange(L)[None, :] >= torch.tensor(lengths)[:, None]] = pad_id
    if middle_pad:
        ids[0, 1] = pad_id
    return ids


def _cases(g: torch.Generator, cls: type, name: str) -> list[_Case]:
    """Three configurations in which no two sizes are equal (layers, heads, vocabularies, B, S,
    T), covering post-/pre-LN, tied/untied, sinusoidal/learned/rotary and pad_id 0 or not."""
    M = _model()
    kinds = [("sinusoidal", False, True, 0), ("learned", True, False, 2), ("rotary", False, False, 1)]
    cases = []
    for index, (positional, norm_first, tie, pad_id) in enumerate(kinds):
        n_heads, n_enc, n_dec = distinct_ints(g, 3, 1, 5)
        v_src, v_tgt, d_ff = distinct_ints(g, 3, 25, 45)
        B, S, T = distinct_ints(g, 3, 3, 8)
        config = M.TransformerConfig(
            src_vocab_size=v_src, tgt_vocab_size=v_tgt, d_model=n_heads * 2 * _draw(g, 2, 3),
            n_heads=n_heads, n_encoder_layers=n_enc, n_decoder_layers=n_dec, d_ff=d_ff,
            dropout=0.2, max_len=_draw(g, 50, 60), norm_first=norm_first, tie_embeddings=tie,
            pad_id=pad_id, positional=positional)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
            reference = M.Transformer(config).eval()
        learner = _call(f"{name}(config)", cls, config)
        if not isinstance(learner, torch.nn.Module):
            raise ExerciseWrong(f"{name}(config) returned {type(learner).__name__}, not a module.")
        try:
            learner.load_state_dict(reference.state_dict())
        except Exception as error:
            raise ExerciseWrong(f"{name}: the reference weights do not fit your model ({error}). "
                                + INIT_CHANGED) from error
        learner.eval()
        src_lengths = [S] + [_draw(g, 1, S) for _ in range(B - 1)]
        if index == 1:
            src_lengths[-1] = 0                              # an all-padding source
        tgt_lengths = [T] + [_draw(g, 1, T - 1)] + [_draw(g, 1, T) for _ in range(B - 2)]
        src = _padded_ids(g, src_lengths, S, v_src, pad_id)
        tgt_in = _padded_ids(g, tgt_lengths, T, v_tgt, pad_id, middle_pad=True)
        src_mask = (src != pad_id)[:, None, :].clone()
        src_mask[0, 0, 0] = False                            # the caller hides one more key
        tgt_mask = torch.ones(T, T, dtype=torch.bool).tril()
        with torch.no_grad():
            memory = reference.encode(src, src_mask)
        cases.append(_Case(config, reference, learner, src, tgt_in, src_mask, tgt_mask, memory))
    return cases


def _run(name: str, call: Callable, *args):
    """``_call`` with a hint when the vocabulary check fires (swapped embeddings)."""
    __tracebackhide__ = True
    try:
        return _call(name, call, *args)
    except ExerciseWrong as wrong:
        if "vocabulary size" in str(wrong):
            raise ExerciseWrong(f"{wrong} {EMBEDDINGS_SWAPPED}") from wrong.__cause__
        raise


def _require_output(name: str, what: str, out, expected: torch.Tensor, config) -> None:
    __tracebackhide__ = True
    if not isinstance(out, torch.Tensor):
        raise ExerciseWrong(f"{name}: {what} returned {type(out).__name__}, expected a tensor "
                            f"of shape {tuple(expected.shape)}.")
    if out.shape != expected.shape:
        hint = ""
        if out.shape[:-1] == expected.shape[:-1] and out.size(-1) == config.d_model:
            hint = f" Likely bug: {GENERATOR_MISSING}"
        raise ExerciseWrong(f"{name}: {what} has shape {tuple(out.shape)}, expected "
                            f"{tuple(expected.shape)}.{hint}")
    if not torch.isfinite(out).all():
        raise ExerciseWrong(f"{name}: {what} contains NaN or inf (the reference's output is "
                            "finite, even for an all-padding source).")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4)


def _agreeing_bug(cases: list[_Case]) -> str | None:
    """The first known bug that reproduces the learner's output of every call in every case."""
    for hint, switches in _BUGS.items():
        if all(_close(case.actual[what], call(_Variant(case.reference, **switches), case))
               for case in cases for what, call in _CALLS.items()):
            return hint
    return None


def _require_gradients(name: str, case: _Case) -> None:
    """Backpropagate through the learner's forward: every part of the model gets a gradient."""
    __tracebackhide__ = True
    model = case.learner
    model.zero_grad(set_to_none=True)
    out = _run(name, model, case.src, case.tgt_in)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise ExerciseWrong(f"{name}: the logits do not depend on the weights through autograd. "
                            "Likely bug: `.detach()`, `.item()` or `torch.no_grad()` in your code; "
                            "training needs gradients to flow through it.")
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * weights).sum().backward()
    parts = {"src_embed": model.src_embed, "tgt_embed": model.tgt_embed,
             "encoder": model.encoder, "decoder": model.decoder, "generator": model.generator}
    for part, module in parts.items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not any(bool(grad.abs().sum() > 0) for grad in grads):
            raise ExerciseWrong(f"{name}: no gradient reaches {part}: the logits do not depend on "
                                "it through autograd (a `.detach()` or `torch.no_grad()` on the "
                                "way, or a part of the model that is never used).")
        if not all(torch.isfinite(grad).all() for grad in grads):
            raise ExerciseWrong(f"{name}: the gradient of {part} contains NaN or inf.")
    model.zero_grad(set_to_none=True)


@exercise("9.1", reference="scratchformer.model")
def transformer(cls: type) -> None:
    """Check the learner's ``Transformer`` class (given ``__init__``; ``encode``, ``decode``,
    ``forward`` written by the learner) against ``scratchformer.model.Transformer``, whose weights
    are copied into it."""
    __tracebackhide__ = True
    name = "Transformer"
    g = _generator()
    cases = _cases(g, cls, name)
    # 1. every call, in eval mode: shapes, finiteness, values (a hint only if all calls agree)
    for case in cases:
        before = snapshot(case.src, case.tgt_in, case.src_mask, case.tgt_mask, case.memory)
        with torch.no_grad():
            first, second = (_run(f"{name}.forward", case.learner, case.src.clone(),
                                  case.tgt_in.clone()) for _ in range(2))
        if (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)
                and first.shape == second.shape and not torch.equal(first, second)):
            raise ExerciseWrong(f"{name}: {EVAL_DROPOUT}")
        for what, call in _CALLS.items():
            with torch.no_grad():
                expected = call(case.reference, case)
                actual = _run(f"{name}.{what.split('(')[0]}", call, case.learner, case)
            _require_output(name, what, actual, expected, case.config)
            case.actual[what] = actual
        require_unchanged(name, ["src", "tgt_in", "src_mask", "tgt_mask", "memory"], before,
                          [case.src, case.tgt_in, case.src_mask, case.tgt_mask, case.memory])
    failing = [(case, what) for case in cases for what, call in _CALLS.items()
               if not _close(case.actual[what], call(case.reference, case))]
    if failing:
        case, what = failing[0]
        with torch.no_grad():
            bug = _agreeing_bug(cases)
            error = (case.actual[what] - _CALLS[what](case.reference, case)).abs().max().item()
        where = (f"{what} differs from the reference (largest difference {error:.3g}) for "
                 f"{case.config}")
        if bug is not None:
            raise ExerciseWrong(f"{name}: {where}. Likely bug: {bug}")
        raise ExerciseWrong(f"{name}: {where}. Check, in order: the scaled embeddings and the "
                            "positions, the default masks (source key padding (B, 1, S); target "
                            "causal and padding (B, T, T)), which mask goes to which attention, and "
                            "the generator.")
    # 2. autograd reaches every part of the model
    for case in cases:
        _require_gradients(name, case)
    # 3. dropout (p = 0.2): deterministic in eval, stochastic in train with the reference's mean
    case = cases[0]
    with torch.random.fork_rng(devices=[]):
        require_dropout_behaviour(name, case.learner, case.reference,
                                  lambda m: _run(name, m, case.src, case.tgt_in),
                                  samples=100)
    # 4. bfloat16 weights: the logits stay bfloat16 and finite
    case = cases[1]
    learner = case.learner.to(torch.bfloat16)
    with torch.no_grad():
        out = _run(name, learner, case.src, case.tgt_in)
    require_dtype(name, "the logits", out, torch.bfloat16)
    if not torch.isfinite(out).all():
        raise ExerciseWrong(f"{name}: in bfloat16 the logits contain NaN or inf.")
    _passed(name, f"encode, decode and forward match the reference in {len(cases)} "
                  "configurations (post-/pre-LN, tied/untied, sinusoidal/learned/rotary), with "
                  "default and given masks, dropout in eval and train, gradients and bfloat16.")


# --------------------------------------------------------------------------------------------
# Exercise 9.2: transformer_parameter_count(config) -> int
# --------------------------------------------------------------------------------------------

NO_BIASES = (
    "the biases are missing. Every nn.Linear of the attention (in_proj: 3·D, out_proj: D) and of "
    "the feed-forward network (linear1: d_ff, linear2: D) has a bias; only the generator has none."
)
NO_ATTENTION_BIASES = (
    "the attention biases are missing: in_proj has a bias of 3·D and out_proj one of D, in every "
    "attention block (one per encoder layer, two per decoder layer)."
)
NO_FFN_BIASES = (
    "the feed-forward biases are missing: linear1 has a bias of d_ff and linear2 one of D, in "
    "every layer."
)
ATTENTION_PER_HEAD = (
    "the attention projections are counted with the head size: W_Q, W_K, W_V and W_O are D × D "
    "whatever the number of heads (each head uses a D × D/H slice of them)."
)
NO_NORMS = (
    "the LayerNorms are missing. Each has a weight and a bias, 2·D parameters: 2 per encoder layer, "
    "3 per decoder layer, plus the final norms of a pre-LN model."
)
NO_FINAL_NORMS = (
    "the final LayerNorms of a pre-LN model are missing: with norm_first=True the encoder and the "
    "decoder each end with a LayerNorm, 2 · 2·D parameters in all."
)
FINAL_NORMS_ALWAYS = (
    "final LayerNorms are counted for a post-LN model too. Only a pre-LN stack (norm_first=True) ends "
    "with a final LayerNorm here; a post-LN layer already ends with one (nn.Transformer builds them "
    "for both placements, this model does not)."
)
DECODER_TWO_NORMS = (
    "a decoder layer is counted with two LayerNorms; it has three, one per sublayer (masked "
    "self-attention, cross-attention, feed-forward)."
)
TIED_TWICE = (
    "the tied weight is counted twice. With tie_embeddings=True the generator's weight *is* the target "
    "embedding: V_tgt·D parameters, counted once (model.parameters() lists a shared Parameter once)."
)
TIE_IGNORED = (
    "the generator is never counted: it is shared with the target embedding only when "
    "tie_embeddings=True; untied, it adds its own V_tgt·D weight (no bias)."
)
GENERATOR_BIAS = "a generator bias is counted: the generator is nn.Linear(D, V_tgt, bias=False), weight only."
GENERATOR_SRC_VOCAB = (
    "the untied generator is counted with the source vocabulary: it scores the target "
    "vocabulary, V_tgt·D."
)
NO_CROSS = (
    "the cross-attention of the decoder layers is missing: each decoder layer has two attention "
    "blocks (masked self-attention and cross-attention) and three LayerNorms."
)
DECODER_WITH_ENCODER_LAYERS = (
    "the decoder is counted with n_encoder_layers: it has n_decoder_layers layers."
)
LAYERS_SWAPPED = (
    "the layer counts are swapped: the encoder has n_encoder_layers layers (one attention block "
    "each) and the decoder n_decoder_layers (two attention blocks each)."
)
NOT_LEARNED_COUNTED = (
    "positional parameters are counted for positional='sinusoidal' or 'rotary'. Those are "
    "computed, not learned: they have no parameters. Only positional='learned' adds its tables."
)
NO_LEARNED = (
    "the learned positional tables are missing: with positional='learned' the source and the target "
    "each have a (max_len, D) table."
)
ONE_LEARNED = (
    "only one learned positional table is counted; the source and the target have one each, "
    "(max_len, D) each."
)
ONE_EMBEDDING = (
    "only one token embedding is counted. The source and the target embeddings are separate "
    "tables: (V_src + V_tgt) · D."
)


def _formula(c, *, attention_bias: bool = True, ffn_bias: bool = True, per_head: bool = False,
             norms: bool = True, final: str = "pre-LN", decoder_norms: int = 3, tie: str = "once",
             generator_bias: bool = False, generator_vocab: str = "tgt", cross: bool = True,
             layers: str = "right", positions: str = "right", embeddings: int = 2) -> int:
    """The parameter count of Transformer(c), with switches that reproduce the known bugs."""
    D, F = c.d_model, c.d_ff
    width = D // c.n_heads if per_head else D
    attention = 4 * D * width + (4 * D if attention_bias else 0)
    feed_forward = 2 * D * F + (F + D if ffn_bias else 0)
    norm = 2 * D if norms else 0
    n_enc, n_dec = {"right": (c.n_encoder_layers, c.n_decoder_layers),
                    "decoder=encoder": (c.n_encoder_layers, c.n_encoder_layers),
                    "swapped": (c.n_decoder_layers, c.n_encoder_layers)}[layers]
    encoder = n_enc * (attention + feed_forward + 2 * norm)
    decoder = n_dec * ((2 if cross else 1) * attention + feed_forward
                       + (decoder_norms if cross else 2) * norm)
    final_norms = 2 * norm if (final == "always" or (final == "pre-LN" and c.norm_first)) else 0
    embedding = (c.src_vocab_size + c.tgt_vocab_size) * D if embeddings == 2 else c.tgt_vocab_size * D
    vocab = c.tgt_vocab_size if generator_vocab == "tgt" else c.src_vocab_size
    generator = {"once": 0 if c.tie_embeddings else vocab * D, "twice": vocab * D, "never": 0}[tie]
    generator += c.tgt_vocab_size if generator_bias else 0
    table = c.max_len * D
    learned = c.positional == "learned"
    position = {"right": 2 * table if learned else 0, "always": 2 * table, "never": 0,
                "one": table if learned else 0}[positions]
    return encoder + decoder + final_norms + embedding + generator + position


_COUNT_BUGS = {
    NO_BIASES: dict(attention_bias=False, ffn_bias=False),
    NO_ATTENTION_BIASES: dict(attention_bias=False),
    NO_FFN_BIASES: dict(ffn_bias=False),
    ATTENTION_PER_HEAD: dict(per_head=True),
    NO_NORMS: dict(norms=False),
    NO_FINAL_NORMS: dict(final="never"),
    FINAL_NORMS_ALWAYS: dict(final="always"),
    DECODER_TWO_NORMS: dict(decoder_norms=2),
    TIED_TWICE: dict(tie="twice"),
    TIE_IGNORED: dict(tie="never"),
    GENERATOR_BIAS: dict(generator_bias=True),
    GENERATOR_SRC_VOCAB: dict(generator_vocab="src"),
    NO_CROSS: dict(cross=False),
    DECODER_WITH_ENCODER_LAYERS: dict(layers="decoder=encoder"),
    LAYERS_SWAPPED: dict(layers="swapped"),
    NOT_LEARNED_COUNTED: dict(positions="always"),
    NO_LEARNED: dict(positions="never"),
    ONE_LEARNED: dict(positions="one"),
    ONE_EMBEDDING: dict(embeddings=1),
}


def _count_configs(g: torch.Generator):
    """Six small configurations covering post-/pre-LN, tied/untied and the three kinds of
    positions; in each, no two sizes are equal (layers and heads < D < d_ff, vocabularies, max_len)."""
    M = _model()
    combos = [(False, True, "sinusoidal"), (True, False, "learned"), (True, True, "rotary"),
              (False, False, "learned"), (True, True, "learned"), (False, False, "rotary")]
    configs = []
    for norm_first, tie, positional in combos:
        n_heads, n_enc, n_dec = distinct_ints(g, 3, 1, 5)
        v_src, v_tgt, d_ff, max_len = distinct_ints(g, 4, 35, 99)
        configs.append(M.TransformerConfig(
            src_vocab_size=v_src, tgt_vocab_size=v_tgt, d_model=n_heads * 2 * _draw(g, 3, 4),
            n_heads=n_heads, n_encoder_layers=n_enc, n_decoder_layers=n_dec, d_ff=d_ff,
            dropout=0.0, max_len=max_len, norm_first=norm_first, tie_embeddings=tie, pad_id=0,
            positional=positional))
    return configs


def _meta_count(config) -> int:
    with torch.device("meta"):
        model = _model().Transformer(config)
    return sum(p.numel() for p in model.parameters())


@exercise("9.2", reference="scratchformer.model")
def transformer_parameter_count(fn: Callable) -> None:
    """Check ``fn(config) -> int`` against ``sum(p.numel())`` of ``Transformer(config)`` built on the
    meta device; a missed piece is named only when it explains every configuration."""
    __tracebackhide__ = True
    name = "transformer_parameter_count"
    configs = _count_configs(_generator())
    answers = [as_int(name, "the number of parameters", _call(name, fn, c)) for c in configs]
    expected = [_meta_count(c) for c in configs]
    if answers == expected:
        _passed(name, f"matches sum(p.numel()) of {len(configs)} models built on the meta device "
                      "(post-LN and pre-LN, tied and untied, sinusoidal, learned and rotary "
                      "positions).")
        return
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    candidates = {hint: as_tensor([_formula(c, **switches) for c in configs])
                  for hint, switches in _COUNT_BUGS.items()}
    config, answer, right = next((c, a, e) for c, a, e in zip(configs, answers, expected) if a != e)
    _diagnose(name, "the parameter count", as_tensor(answers), as_tensor(expected), candidates,
              f"For example, for {config} you returned {answer:,d} but the model has {right:,d} "
              f"parameters (difference {answer - right:+,d}). Go through the modules __init__ "
              "builds, down to each nn.Linear (weight and bias) and LayerNorm (weight and bias); "
              "count a shared Parameter once.", atol=0.0, rtol=0.0)
