"""The chapter 09 checkers bite: references pass, stubs are 'not attempted', every known-buggy
implementation fails with its targeted hint, and correct implementations written differently
pass."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from scratchformer import checks
from scratchformer.causal import causal_mask
from scratchformer.checks._common import _generator
from scratchformer.checks.model import _count_configs
from scratchformer.model import Transformer, TransformerConfig, transformer_parameter_count


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


# ---- references pass, stubs are not attempted --------------------------------------------------

def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(2):  # fresh random configurations and inputs every call
        checks.transformer(Transformer)
        checks.transformer_parameter_count(transformer_parameter_count)
    assert capsys.readouterr().out.count("✅") == 4


class Stub(Transformer):
    def encode(self, src, src_mask=None):
        raise NotImplementedError("Exercise 9.1: replace this line with your code")

    decode = forward = encode


class OnlyForwardWritten(Transformer):
    """forward solved, encode still a stub: the exercise is not finished."""

    def encode(self, src, src_mask=None):
        raise NotImplementedError("Exercise 9.1: replace this line with your code")


@pytest.mark.parametrize("checker, learner", [(checks.transformer, Stub),
                                              (checks.transformer, OnlyForwardWritten),
                                              (checks.transformer_parameter_count, stub)],
                         ids=["transformer", "transformer-half-done", "parameter-count"])
def test_stub_is_not_attempted(checker, learner):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(learner)


def test_checkers_are_exported_and_numbered():
    assert {"transformer", "transformer_parameter_count"} <= set(checks.__all__)
    assert checks.REGISTRY["transformer"] == ("9.1", "scratchformer.model")
    assert checks.REGISTRY["transformer_parameter_count"] == ("9.2", "scratchformer.model")


# ---- Exercise 9.1: Transformer.encode / decode / forward ----------------------------------------

class Learner(Transformer):
    """A correct solution written as a learner might, independently of the reference; the
    buggy variants below override one piece each."""

    def source_mask(self, src):
        return (src != self.config.pad_id).unsqueeze(1)                 # (B, 1, S)

    def target_mask(self, tgt_in):
        T = tgt_in.size(1)
        lower = torch.tril(torch.ones(T, T, dtype=torch.bool))
        return lower & (tgt_in != self.config.pad_id).unsqueeze(1)      # (B, T, T)

    def embed_source(self, src):
        return self.src_pos(self.src_embed(src))

    def embed_target(self, tgt_in):
        return self.tgt_pos(self.tgt_embed(tgt_in))

    def encode(self, src, src_mask=None):
        if src_mask is None:
            src_mask = self.source_mask(src)
        return self.encoder(self.embed_source(src), src_mask)

    def decode(self, tgt_in, memory, src_mask=None, tgt_mask=None):
        if tgt_mask is None:
            tgt_mask = self.target_mask(tgt_in)
        h = self.decoder(self.embed_target(tgt_in), memory, tgt_mask, src_mask)
        return self.generator(h)

    def forward(self, src, tgt_in, src_mask=None, tgt_mask=None):
        if src_mask is None:
            src_mask = self.source_mask(src)
        memory = self.encode(src, src_mask)
        return self.decode(tgt_in, memory, src_mask, tgt_mask)


class DirectCalls(Transformer):
    """Correct, written differently: forward does not go through encode/decode, 4-D source
    mask, chapter 07's causal_mask, the generator as a matrix product, the scaling by hand."""

    def _embed(self, table, tokens):
        return F.embedding(tokens, table.weight) * math.sqrt(self.config.d_model)

    def encode(self, src, src_mask=None):
        if src_mask is None:
            src_mask = rearrange(src != self.config.pad_id, "b s -> b 1 1 s")
        return self.encoder(self.src_pos(self._embed(self.src_embed, src)), src_mask)

    def decode(self, tgt_in, memory, src_mask=None, tgt_mask=None):
        if tgt_mask is None:
            keep = tgt_in != self.config.pad_id
            tgt_mask = causal_mask(tgt_in.size(1))[None] & keep[:, None, :]
        y = self.tgt_pos(self._embed(self.tgt_embed, tgt_in))
        return torch.einsum("btd,vd->btv", self.decoder(y, memory, tgt_mask, src_mask),
                            self.generator.weight)

    def forward(self, src, tgt_in, src_mask=None, tgt_mask=None):
        if src_mask is None:
            src_mask = rearrange(src != self.config.pad_id, "b s -> b 1 1 s")
        memory = self.encoder(self.src_pos(self._embed(self.src_embed, src)), src_mask)
        return self.decode(tgt_in, memory, src_mask, tgt_mask)


@pytest.mark.parametrize("learner", [Learner, DirectCalls], ids=["learner", "direct-calls"])
def test_correct_implementations_written_differently_pass(learner, capsys):
    checks.transformer(learner)
    assert "✅" in capsys.readouterr().out


# Each bug is one plausible slip, written as a learner would write it.

class NoScale(Learner):
    def embed_source(self, src):
        return self.src_pos(F.embedding(src, self.src_embed.weight))

    def embed_target(self, tgt_in):
        return self.tgt_pos(self.tgt_embed.weight[tgt_in])


class ScaleTwice(Learner):
    def embed_source(self, src):
        return self.src_pos(self.src_embed(src) * math.sqrt(self.config.d_model))

    def embed_target(self, tgt_in):
        return self.tgt_pos(self.tgt_embed(tgt_in) * math.sqrt(self.config.d_model))


class NoPositions(Learner):
    def embed_source(self, src):
        return self.src_embed(src)

    def embed_target(self, tgt_in):
        return self.tgt_embed(tgt_in)


class PositionsSwapped(Learner):
    def embed_source(self, src):
        return self.tgt_pos(self.src_embed(src))

    def embed_target(self, tgt_in):
        return self.src_pos(self.tgt_embed(tgt_in))


class NoCausal(Learner):
    def target_mask(self, tgt_in):
        T = tgt_in.size(1)
        return (tgt_in != self.config.pad_id)[:, None, :].expand(-1, T, -1)


class NoTargetPadding(Learner):
    def target_mask(self, tgt_in):
        return causal_mask(tgt_in.size(1))


class QueryPadding(Learner):
    def target_mask(self, tgt_in):
        return causal_mask(tgt_in.size(1)) & (tgt_in != self.config.pad_id)[:, :, None]


class QueryAndKeyPadding(Learner):
    def target_mask(self, tgt_in):
        keep = tgt_in != self.config.pad_id
        return causal_mask(tgt_in.size(1)) & keep[:, :, None] & keep[:, None, :]


class StrictCausal(Learner):
    def target_mask(self, tgt_in):
        T = tgt_in.size(1)
        return torch.ones(T, T).tril(-1).bool() & (tgt_in != self.config.pad_id)[:, None, :]


class UpperTriangle(Learner):
    def target_mask(self, tgt_in):
        T = tgt_in.size(1)
        return torch.ones(T, T).triu().bool() & (tgt_in != self.config.pad_id)[:, None, :]


class TargetFlipped(Learner):
    def target_mask(self, tgt_in):
        return ~super().target_mask(tgt_in)


class SourceFlipped(Learner):
    def source_mask(self, src):
        return (src == self.config.pad_id)[:, None, :]


class EncoderUnmasked(Learner):
    def encode(self, src, src_mask=None):
        return self.encoder(self.embed_source(src))


class CrossUnmasked(Learner):
    def decode(self, tgt_in, memory, src_mask=None, tgt_mask=None):
        return super().decode(tgt_in, memory, None, tgt_mask)


class SourceUnused(EncoderUnmasked, CrossUnmasked):
    pass


class ForwardDropsCross(Learner):
    def forward(self, src, tgt_in, src_mask=None, tgt_mask=None):
        return self.decode(tgt_in, self.encode(src, src_mask), tgt_mask=tgt_mask)


class ForwardDropsEncoderMask(Learner):
    def forward(self, src, tgt_in, src_mask=None, tgt_mask=None):
        if src_mask is None:
            src_mask = self.source_mask(src)
        return self.decode(tgt_in, self.encode(src), src_mask, tgt_mask)


class ForwardIgnoresSourceMask(Learner):
    def forward(self, src, tgt_in, src_mask=None, tgt_mask=None):
        return super().forward(src, tgt_in, None, tgt_mask)


class EncodeIgnoresMask(Learner):
    def encode(self, src, src_mask=None):
        return super().encode(src)


class DecodeIgnoresTargetMask(Learner):
    def decode(self, tgt_in, memory, src_mask=None, tgt_mask=None):
        return super().decode(tgt_in, memory, src_mask)


class ForwardDropsTargetMask(Learner):
    def forward(self, src, tgt_in, src_mask=None, tgt_mask=None):
        return super().forward(src, tgt_in, src_mask)


class PadIsZero(Learner):
    def source_mask(self, src):
        return (src != 0)[:, None, :]

    def target_mask(self, tgt_in):
        T = tgt_in.size(1)
        return causal_mask(T) & (tgt_in != 0)[:, None, :]


class Probabilities(Learner):
    def decode(self, tgt_in, memory, src_mask=None, tgt_mask=None):
        return super().decode(tgt_in, memory, src_mask, tgt_mask).softmax(dim=-1)


class LogProbabilities(Learner):
    def decode(self, tgt_in, memory, src_mask=None, tgt_mask=None):
        return F.log_softmax(super().decode(tgt_in, memory, src_mask, tgt_mask), dim=-1)


class NoGenerator(Learner):
    def decode(self, tgt_in, memory, src_mask=None, tgt_mask=None):
        if tgt_mask is None:
            tgt_mask = self.target_mask(tgt_in)
        return self.decoder(self.embed_target(tgt_in), memory, tgt_mask, src_mask)


class EmbeddingsSwapped(Learner):
    def embed_source(self, src):
        return self.src_pos(self.tgt_embed(src))

    def embed_target(self, tgt_in):
        return self.tgt_pos(self.src_embed(tgt_in))


class SourceMaskWithoutQueryAxis(Learner):
    def source_mask(self, src):
        return src != self.config.pad_id                                 # (B, S)


class Crashes(Learner):
    def decode(self, tgt_in, memory, src_mask=None, tgt_mask=None):
        return {}["logits"]


class DetachedMemory(Learner):
    def forward(self, src, tgt_in, src_mask=None, tgt_mask=None):
        if src_mask is None:
            src_mask = self.source_mask(src)
        memory = self.encode(src, src_mask).detach()
        return self.decode(tgt_in, memory, src_mask, tgt_mask)


class DropoutAlwaysOn(Learner):
    def embed_source(self, src):
        return F.dropout(super().embed_source(src), p=0.2)              # training=True: always


class EditsTokensInPlace(Learner):
    def encode(self, src, src_mask=None):
        if src_mask is None:
            src_mask = self.source_mask(src)
        src[src == self.config.pad_id] = 0                               # "make pads id 0"
        return self.encoder(self.embed_source(src), src_mask)


class Float32Logits(Learner):
    def decode(self, tgt_in, memory, src_mask=None, tgt_mask=None):
        return super().decode(tgt_in, memory, src_mask, tgt_mask).float()


class InitChanged(Learner):
    def __init__(self, config):
        super().__init__(config)
        from scratchformer.decoder import Decoder
        c = config
        self.decoder = Decoder(c.d_model, c.n_heads, c.d_ff, c.n_encoder_layers, c.dropout,
                               c.norm_first)


TRANSFORMER_BUGS = {
    NoScale: r"not multiplied by sqrt\(d_model\)",
    ScaleTwice: r"multiplied by sqrt\(d_model\) twice",
    NoPositions: "positions are never added",
    PositionsSwapped: "src_pos and tgt_pos are swapped",
    NoCausal: "no causal part",
    NoTargetPadding: "causal only",
    QueryPadding: r"masks the queries \(rows\) instead of the keys",
    QueryAndKeyPadding: r"masks the queries \(rows\) as well as the keys",
    StrictCausal: "excludes the diagonal",
    UpperTriangle: "upper triangle",
    TargetFlipped: "default target mask is flipped",
    SourceFlipped: "default source mask is flipped",
    EncoderUnmasked: "encoder's self-attention gets no mask",
    CrossUnmasked: "decode does not pass src_mask to the decoder",
    SourceUnused: "source mask is never used",
    ForwardDropsCross: "forward does not pass the source mask on to decode",
    ForwardDropsEncoderMask: "forward does not pass src_mask on to encode",
    ForwardIgnoresSourceMask: "forward ignores its src_mask argument",
    EncodeIgnoresMask: "encode ignores its src_mask argument",
    DecodeIgnoresTargetMask: "decode ignores its tgt_mask argument",
    ForwardDropsTargetMask: "forward does not pass tgt_mask on to decode",
    PadIsZero: "hard-coded as 0",
    Probabilities: r"output is probabilities",
    LogProbabilities: "output is log-probabilities",
    NoGenerator: "generator is missing",
    EmbeddingsSwapped: "src_embed and tgt_embed swapped",
    SourceMaskWithoutQueryAxis: r"raised ValueError \(line \d+: `.*`\): mask of shape",
    Crashes: r"raised KeyError \(line \d+: `return \{\}\[\"logits\"\]`\)",
    DetachedMemory: "no gradient reaches src_embed",
    DropoutAlwaysOn: "in eval mode two forward passes differ",
    EditsTokensInPlace: "changed its input `src` in place",
    Float32Logits: "dtype torch.float32; it must be torch.bfloat16",
    InitChanged: r"(?s)do not fit your model .* Keep the given __init__",
}


@pytest.mark.parametrize("bug", TRANSFORMER_BUGS, ids=lambda c: c.__name__)
def test_buggy_transformers_get_targeted_hints(bug):
    with pytest.raises(checks.ExerciseWrong, match=TRANSFORMER_BUGS[bug]):
        checks.transformer(bug)


def test_a_bug_in_one_method_only_gets_no_misleading_hint():
    """Scaling missing in encode only: no single known bug explains every call, so the hint is
    the generic one (the calls that differ are named), not 'not multiplied by sqrt(d_model)'."""
    class HalfScaled(Learner):
        def embed_source(self, src):
            return self.src_pos(F.embedding(src, self.src_embed.weight))

    with pytest.raises(checks.ExerciseWrong, match="Check, in order") as wrong:
        checks.transformer(HalfScaled)
    assert "Likely bug" not in str(wrong.value)


# ---- Exercise 9.2: transformer_parameter_count ----------------------------------------------------

def buggy_count(c, *, attention_bias=True, ffn_bias=True, per_head=False, norms=True,
                final="pre-LN", decoder_norms=3, tie="once", generator_bias=False,
                generator_vocab="tgt", cross=True, decoder_layers="own", positions="right",
                embeddings=2):
    """An independent, configurable, deliberately buggy parameter count."""
    D, d_ff = c.d_model, c.d_ff
    qkvo = 4 * D * (D // c.n_heads if per_head else D)
    attention = qkvo + (4 * D if attention_bias else 0)
    ff = 2 * D * d_ff + (d_ff + D if ffn_bias else 0)
    ln = 2 * D if norms else 0
    n_enc, n_dec = c.n_encoder_layers, c.n_decoder_layers
    if decoder_layers == "encoder's":
        n_dec = n_enc
    elif decoder_layers == "swapped":
        n_enc, n_dec = n_dec, n_enc
    n = n_enc * (attention + ff + 2 * ln)
    n += n_dec * ((2 * attention + decoder_norms * ln) if cross else (attention + 2 * ln))
    n += n_dec * ff
    if final == "always" or (final == "pre-LN" and c.norm_first):
        n += 2 * ln
    n += (c.src_vocab_size + c.tgt_vocab_size) * D if embeddings == 2 else c.tgt_vocab_size * D
    vocab = c.tgt_vocab_size if generator_vocab == "tgt" else c.src_vocab_size
    if tie == "twice" or (tie == "once" and not c.tie_embeddings):
        n += vocab * D
    n += c.tgt_vocab_size if generator_bias else 0
    learned = c.positional == "learned"
    n += {"right": 2 * c.max_len * D * learned, "always": 2 * c.max_len * D, "never": 0,
          "one": c.max_len * D * learned}[positions]
    return n


def test_the_independent_count_is_right(capsys):
    checks.transformer_parameter_count(buggy_count)
    assert "✅" in capsys.readouterr().out


COUNT_BUGS = {
    "forgetting the biases": (dict(attention_bias=False, ffn_bias=False), "biases are missing"),
    "forgetting the attention biases": (dict(attention_bias=False), "attention biases are missing"),
    "forgetting the feed-forward biases": (dict(ffn_bias=False), "feed-forward biases are missing"),
    "attention counted per head": (dict(per_head=True), "counted with the head size"),
    "forgetting the LayerNorms": (dict(norms=False), "LayerNorms are missing"),
    "forgetting the final LayerNorms of pre-LN": (dict(final="never"),
                                                  "final LayerNorms of a pre-LN model are missing"),
    "final LayerNorms for post-LN too": (dict(final="always"), "counted for a post-LN model too"),
    "two LayerNorms per decoder layer": (dict(decoder_norms=2), "counted with two LayerNorms"),
    "tied weights counted twice": (dict(tie="twice"), "tied weight is counted twice"),
    "generator never counted": (dict(tie="never"), "generator is never counted"),
    "generator bias": (dict(generator_bias=True), "generator bias is counted"),
    "generator with the source vocabulary": (dict(generator_vocab="src"),
                                             "counted with the source vocabulary"),
    "forgetting the cross-attention": (dict(cross=False),
                                       "cross-attention of the decoder layers is missing"),
    "decoder with n_encoder_layers": (dict(decoder_layers="encoder's"),
                                      "decoder is counted with n_encoder_layers"),
    "layer counts swapped": (dict(decoder_layers="swapped"), "layer counts are swapped"),
    "positions counted when not learned": (dict(positions="always"),
                                           "counted for positional='sinusoidal' or 'rotary'"),
    "forgetting learned positions": (dict(positions="never"), "learned positional tables are missing"),
    "one learned table only": (dict(positions="one"), "only one learned positional table"),
    "one token embedding only": (dict(embeddings=1), "only one token embedding"),
}


@pytest.mark.parametrize("bug", COUNT_BUGS, ids=list(COUNT_BUGS))
def test_buggy_parameter_counts_get_targeted_hints(bug):
    switches, hint = COUNT_BUGS[bug]
    for _ in range(3):   # fresh random configs each time: the hint must not depend on luck
        with pytest.raises(checks.ExerciseWrong, match=hint):
            checks.transformer_parameter_count(lambda c: buggy_count(c, **switches))


def test_unknown_wrong_count_gets_the_generic_hint_with_an_example():
    with pytest.raises(checks.ExerciseWrong, match=r"you returned .* Go through the modules"):
        checks.transformer_parameter_count(lambda c: transformer_parameter_count(c) + 1)


def test_a_count_that_is_right_only_for_some_configurations_gets_no_hint():
    """Biases forgotten only for pre-LN models: no single bug explains every configuration."""
    def count(c):
        wrong = buggy_count(c, attention_bias=False, ffn_bias=False)
        return wrong if c.norm_first else transformer_parameter_count(c)
    with pytest.raises(checks.ExerciseWrong, match="differs from the reference") as wrong:
        checks.transformer_parameter_count(count)
    assert "Likely bug" not in str(wrong.value)


def test_crash_is_wrong_with_the_line():
    def count(c):
        return c.n_layers * 2          # no such field
    with pytest.raises(checks.ExerciseWrong, match=r"raised AttributeError \(line \d+: `return c.n_layers \* 2`\)"):
        checks.transformer_parameter_count(count)


@pytest.mark.parametrize("answer, message", [
    (lambda c: float(transformer_parameter_count(c)), r"float .* return an int \(use // not /\)"),
    (lambda c: str(transformer_parameter_count(c)), "should be an int, got str"),
    (lambda c: None, "should be an int, got NoneType"),
])
def test_non_integer_answers_are_refused(answer, message):
    with pytest.raises(checks.ExerciseWrong, match=message):
        checks.transformer_parameter_count(answer)


def test_equivalent_integer_types_are_accepted(capsys):
    checks.transformer_parameter_count(lambda c: np.int64(transformer_parameter_count(c)))
    checks.transformer_parameter_count(lambda c: torch.tensor(transformer_parameter_count(c)))
    assert capsys.readouterr().out.count("✅") == 2


def test_count_configurations_have_no_two_equal_sizes():
    for config in _count_configs(_generator()):
        sizes = [config.src_vocab_size, config.tgt_vocab_size, config.d_model, config.d_ff,
                 config.max_len]
        layers = [config.n_heads, config.n_encoder_layers, config.n_decoder_layers]
        assert len(set(sizes)) == len(sizes) and len(set(layers)) == len(layers)
        assert max(layers) < config.d_model


def test_the_checked_configurations_cover_every_case():
    configs = _count_configs(_generator())
    assert {(c.norm_first, c.tie_embeddings) for c in configs} >= {
        (False, True), (False, False), (True, True), (True, False)}
    assert {c.positional for c in configs} == {"sinusoidal", "learned", "rotary"}
    assert isinstance(TransformerConfig, type)
