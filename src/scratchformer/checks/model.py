"""Checkers for chapter 09 (``scratchformer.model``): the default masks built from the padding
id, and the parameter count of the full Transformer."""

from __future__ import annotations

from collections.abc import Callable

import torch

from scratchformer.checks._common import (
    ExerciseWrong,
    _call,
    _diagnose,
    _generator,
    _passed,
)

__all__ = ["make_masks", "transformer_parameter_count"]


# --------------------------------------------------------------------------------------------
# Exercise 9.1: make_masks(src, tgt_in, pad_id) -> (src_mask (B, 1, S), tgt_mask (B, T, T))
# --------------------------------------------------------------------------------------------

SRC_POLARITY = (
    "the source mask is flipped: it is True at the padding. In this book True means 'may attend', "
    "so the mask is True at the real tokens: (src != pad_id)[:, None, :]."
)
SRC_NO_QUERY_AXIS = (
    "the source mask has shape (B, S); it needs a query axis so that it broadcasts over the T (or S) "
    "queries of every attention: (src != pad_id)[:, None, :] has shape (B, 1, S)."
)
TGT_POLARITY = (
    "the target mask is flipped (True where attending is forbidden). True means 'may attend': "
    "causal_mask(T) & (tgt_in != pad_id)[:, None, :]."
)
TGT_NO_CAUSAL = (
    "the target mask has no causal part: position i may attend to later positions j > i, so the "
    "decoder sees the token it has to predict (a future leak). Combine with the lower triangle: "
    "causal_mask(T)[None] & keep[:, None, :]."
)
TGT_NO_PADDING = (
    "the target mask is causal only: the padded target positions are not masked as keys. Combine "
    "the causal mask with the padding: causal_mask(T)[None] & (tgt_in != pad_id)[:, None, :]."
)
TGT_QUERY_PADDING = (
    "the target padding masks the queries (rows), keep[:, :, None] (alone or together with the keys): "
    "every padded row becomes all False. Mask keys, not queries: keep[:, None, :], shape (B, 1, T), so "
    "that no query reads a pad token; a padded query row is harmless (the loss ignores it), and an "
    "all-False row only invites NaN."
)
TGT_STRICT = (
    "the causal mask excludes the diagonal (j < i instead of j <= i): a position may not attend to "
    "itself, and position 0 has nothing to attend to. Use the lower triangle including the diagonal: "
    "torch.ones(T, T).tril().bool(), or causal_mask(T)."
)
TGT_UPPER = (
    "the causal mask is the upper triangle (triu): each position attends to itself and the future, "
    "not the past. Use tril: mask[i, j] = j <= i."
)
SRC_FROM_TGT = (
    "the source mask is built from the target (or the target mask from the source). src_mask comes "
    "from src != pad_id, tgt_mask from tgt_in != pad_id."
)


def _reference_masks(src, tgt_in, pad_id):
    T = tgt_in.size(1)
    keep = tgt_in != pad_id
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return (src != pad_id)[:, None, :], causal[None] & keep[:, None, :]


def _padded_tokens(g: torch.Generator, B: int, L: int, pad_id: int, vocab: int) -> torch.Tensor:
    """Random ids in [0, vocab) without pad_id, then padded at the end; sequence 0 has no padding."""
    tokens = torch.randint(0, vocab - 1, (B, L), generator=g)
    tokens = tokens + (tokens >= pad_id).long()                      # skip pad_id
    lengths = torch.randint(1, L, (B,), generator=g)
    lengths[0] = L
    tokens[torch.arange(L)[None, :] >= lengths[:, None]] = pad_id
    return tokens


def make_masks(fn: Callable) -> None:
    """Check ``fn(src (B, S), tgt_in (B, T), pad_id) -> (src_mask (B, 1, S), tgt_mask (B, T, T))``."""
    __tracebackhide__ = True
    name = "make_masks"
    g = _generator()
    for B, S, T, pad_id in ((3, 6, 5, 0), (4, 5, 7, 3)):
        src = _padded_tokens(g, B, S, pad_id, 12)
        tgt_in = _padded_tokens(g, B, T, pad_id, 12)
        result = _call(name, fn, src, tgt_in, pad_id)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise ExerciseWrong(f"{name}: return a tuple (src_mask, tgt_mask), got {type(result).__name__}.")
        src_mask, tgt_mask = result
        expected_src, expected_tgt = _reference_masks(src, tgt_in, pad_id)
        for what, mask in (("src_mask", src_mask), ("tgt_mask", tgt_mask)):
            if not isinstance(mask, torch.Tensor):
                raise ExerciseWrong(f"{name}: {what} should be a torch.Tensor, got {type(mask).__name__}.")
            if mask.dtype != torch.bool:
                raise ExerciseWrong(f"{name}: {what} has dtype {mask.dtype}; masks are boolean, True = may "
                                    "attend (a comparison such as src != pad_id is already boolean).")
        if tuple(src_mask.shape) == (B, S):
            raise ExerciseWrong(f"{name}: src_mask is wrong. Likely bug: {SRC_NO_QUERY_AXIS}")
        if tuple(src_mask.shape) != (B, 1, S) or tuple(tgt_mask.shape) != (B, T, T):
            swapped = tuple(src_mask.shape) == (B, T, T) or tuple(tgt_mask.shape) == (B, 1, S)
            raise ExerciseWrong(
                f"{name}: got src_mask {tuple(src_mask.shape)} and tgt_mask {tuple(tgt_mask.shape)}; expected "
                f"({B}, 1, {S}) and ({B}, {T}, {T})."
                + (f" Likely bug: {SRC_FROM_TGT} Or the two are returned in the wrong order." if swapped else "")
            )
        keep_s, keep_t = src != pad_id, tgt_in != pad_id
        _diagnose(name, f"src_mask (B={B}, S={S}, pad_id={pad_id})", src_mask, expected_src,
                  {SRC_POLARITY: ~expected_src}, "src_mask[b, 0, j] must be True iff src[b, j] != pad_id.")
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        candidates = {
            TGT_POLARITY: ~expected_tgt,
            TGT_NO_CAUSAL: keep_t[:, None, :].expand(B, T, T),
            TGT_NO_PADDING: causal[None].expand(B, T, T),
            TGT_QUERY_PADDING: causal[None] & keep_t[:, :, None],
            TGT_STRICT: torch.ones(T, T, dtype=torch.bool).tril(-1)[None] & keep_t[:, None, :],
            TGT_UPPER: torch.ones(T, T, dtype=torch.bool).triu()[None] & keep_t[:, None, :],
        }
        if S == T:
            candidates[SRC_FROM_TGT] = causal[None] & keep_s[:, None, :]
        _diagnose(name, f"tgt_mask (B={B}, T={T}, pad_id={pad_id})", tgt_mask, expected_tgt, candidates,
                  "tgt_mask[b, i, j] must be True iff j <= i and tgt_in[b, j] != pad_id.")
    _passed(name, "source key padding (B, 1, S) and causal & target padding (B, T, T), True = may attend.")


# --------------------------------------------------------------------------------------------
# Exercise 9.2: transformer_parameter_count(config) -> int
# --------------------------------------------------------------------------------------------

NO_BIASES = (
    "the biases are missing. Every nn.Linear of the attention (in_proj: 3·D, out_proj: D) and of "
    "the feed-forward network (linear1: d_ff, linear2: D) has a bias: attention = 4·D² + 4·D, "
    "feed-forward = 2·D·d_ff + d_ff + D. (Only the generator has none.)"
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
TIED_TWICE = (
    "the tied weight is counted twice. With tie_embeddings=True the generator's weight *is* the target "
    "embedding: V_tgt·D parameters, counted once (model.parameters() lists a shared Parameter once)."
)
TIE_IGNORED = (
    "the generator is never counted: it is shared with the target embedding only when "
    "tie_embeddings=True; untied, it adds its own V_tgt·D weight (no bias)."
)
GENERATOR_BIAS = "a generator bias is counted: the generator is nn.Linear(D, V_tgt, bias=False), weight only."
NO_CROSS = (
    "the cross-attention of the decoder layers is missing: each decoder layer has two attention "
    "blocks (masked self-attention and cross-attention), each 4·D² + 4·D, and three LayerNorms."
)
SINUSOIDAL_COUNTED = (
    "positional parameters are counted for positional='sinusoidal'. The sinusoidal table is computed, "
    "not learned: it has no parameters. Only positional='learned' adds 2 · max_len · D."
)
NO_LEARNED = (
    "the learned positional tables are missing: with positional='learned' the source and the target "
    "each have a (max_len, D) table, 2 · max_len · D parameters."
)
ONE_LEARNED = (
    "only one learned positional table is counted; the source and the target have one each: "
    "2 · max_len · D parameters."
)
ONE_EMBEDDING = (
    "only one token embedding is counted. The source and the target embeddings are separate "
    "tables: (V_src + V_tgt) · D."
)


def _formula(c, *, biases: bool = True, norms: bool = True, final: str = "pre-LN", tie: str = "once",
             generator_bias: bool = False, cross: bool = True, positions: str = "right",
             embeddings: int = 2) -> int:
    """The parameter count of Transformer(c), with switches that reproduce the known bugs."""
    D, F = c.d_model, c.d_ff
    attention = 4 * D * D + (4 * D if biases else 0)
    feed_forward = 2 * D * F + (F + D if biases else 0)
    norm = 2 * D if norms else 0
    encoder = c.n_encoder_layers * (attention + feed_forward + 2 * norm)
    decoder = c.n_decoder_layers * ((2 if cross else 1) * attention + feed_forward + (3 if cross else 2) * norm)
    final_norms = 2 * norm if (final == "always" or (final == "pre-LN" and c.norm_first)) else 0
    if embeddings == 2:
        embedding = (c.src_vocab_size + c.tgt_vocab_size) * D
    else:
        embedding = c.tgt_vocab_size * D
    if tie == "once":
        generator = 0 if c.tie_embeddings else c.tgt_vocab_size * D
    elif tie == "twice":
        generator = c.tgt_vocab_size * D
    else:                                                           # "never": always shared
        generator = 0
    generator += c.tgt_vocab_size if generator_bias else 0
    table = c.max_len * D
    learned = c.positional == "learned"
    position = {"right": 2 * table if learned else 0, "always": 2 * table, "never": 0,
                "one": table if learned else 0}[positions]
    return encoder + decoder + final_norms + embedding + generator + position


def _configs(g: torch.Generator):
    """Random small configurations covering post-/pre-LN, tied/untied, sinusoidal/learned."""
    from scratchformer.model import TransformerConfig

    def r(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=g))

    combos = [(False, True, "sinusoidal"), (True, False, "learned"), (True, True, "sinusoidal"),
              (False, False, "learned"), (True, True, "learned")]
    configs = []
    for norm_first, tie, positional in combos:
        n_heads = r(1, 4)
        configs.append(TransformerConfig(
            src_vocab_size=r(10, 60), tgt_vocab_size=r(10, 60), d_model=n_heads * r(2, 6), n_heads=n_heads,
            n_encoder_layers=r(1, 3), n_decoder_layers=r(1, 3), d_ff=r(5, 40), dropout=0.0,
            max_len=r(8, 40), norm_first=norm_first, tie_embeddings=tie, pad_id=0, positional=positional))
    return configs


def _meta_count(config) -> int:
    from scratchformer.model import Transformer

    with torch.device("meta"):
        model = Transformer(config)
    return sum(p.numel() for p in model.parameters())


def transformer_parameter_count(fn: Callable) -> None:
    """Check ``fn(config) -> int`` against ``sum(p.numel())`` of ``Transformer(config)`` built on the meta device."""
    __tracebackhide__ = True
    name = "transformer_parameter_count"
    g = _generator()
    configs = _configs(g)
    answers = []
    for config in configs:
        answer = _call(name, fn, config)
        if isinstance(answer, torch.Tensor) and answer.numel() == 1:
            answer = answer.item()
        if isinstance(answer, bool) or not isinstance(answer, (int, float)) or answer != int(answer):
            raise ExerciseWrong(f"{name}: return the number of parameters as an int, got {answer!r}.")
        answers.append(int(answer))
    expected = [_meta_count(c) for c in configs]
    if answers == expected:
        _passed(name, f"matches sum(p.numel()) of {len(configs)} models built on the meta device "
                      "(post-LN and pre-LN, tied and untied, sinusoidal and learned positions).")
        return
    variants = {
        NO_BIASES: dict(biases=False),
        NO_NORMS: dict(norms=False),
        NO_FINAL_NORMS: dict(final="never"),
        FINAL_NORMS_ALWAYS: dict(final="always"),
        TIED_TWICE: dict(tie="twice"),
        TIE_IGNORED: dict(tie="never"),
        GENERATOR_BIAS: dict(generator_bias=True),
        NO_CROSS: dict(cross=False),
        SINUSOIDAL_COUNTED: dict(positions="always"),
        NO_LEARNED: dict(positions="never"),
        ONE_LEARNED: dict(positions="one"),
        ONE_EMBEDDING: dict(embeddings=1),
    }
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    candidates = {hint: as_tensor([_formula(c, **switches) for c in configs]) for hint, switches in variants.items()}
    wrong = [(c, a, e) for c, a, e in zip(configs, answers, expected) if a != e]
    config, answer, right = wrong[0]
    _diagnose(name, "the parameter count", as_tensor(answers), as_tensor(expected), candidates,
              f"For example, for {config} you returned {answer:,d} but the model has {right:,d} parameters "
              f"(difference {answer - right:+,d}). Count per piece: attention 4·D² + 4·D, feed-forward "
              "2·D·d_ff + d_ff + D, LayerNorm 2·D; encoder layer = attention + feed-forward + 2 norms, "
              "decoder layer = 2 attentions + feed-forward + 3 norms; final norms if pre-LN; embeddings; "
              "generator unless tied; learned positions.", atol=0.0, rtol=0.0)
