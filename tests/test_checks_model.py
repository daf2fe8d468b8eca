"""The chapter 09 checkers bite: references pass, stubs are 'not attempted', and every known-buggy
implementation fails with its targeted hint."""

import pytest
import torch

from scratchformer import checks
from scratchformer.model import make_masks, transformer_parameter_count


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


# ---- references pass, stubs are not attempted --------------------------------------------------

def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(3):  # fresh random inputs every call
        checks.make_masks(make_masks)
        checks.transformer_parameter_count(transformer_parameter_count)
    assert capsys.readouterr().out.count("✅") == 6


@pytest.mark.parametrize("checker", [checks.make_masks, checks.transformer_parameter_count],
                         ids=lambda c: c.__name__)
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(stub)


def test_checkers_are_exported():
    assert {"make_masks", "transformer_parameter_count"} <= set(checks.__all__)


# ---- Exercise 9.1: make_masks -------------------------------------------------------------------

def _masks(src, tgt_in, pad_id, *, src_polarity=True, src_query_axis=True, causal="tril", padding="keys",
           tgt_polarity=True, swap=False, dtype=None):
    T = tgt_in.size(1)
    keep_s, keep_t = src != pad_id, tgt_in != pad_id
    src_mask = keep_s if src_polarity else ~keep_s
    src_mask = src_mask[:, None, :] if src_query_axis else src_mask
    tri = {"tril": torch.ones(T, T, dtype=torch.bool).tril(), "strict": torch.ones(T, T, dtype=torch.bool).tril(-1),
           "triu": torch.ones(T, T, dtype=torch.bool).triu(), "none": torch.ones(T, T, dtype=torch.bool)}[causal]
    pad = {"keys": keep_t[:, None, :], "queries": keep_t[:, :, None], "both": keep_t[:, None, :] & keep_t[:, :, None],
           "none": torch.ones(1, 1, 1, dtype=torch.bool)}[padding]
    tgt_mask = (tri[None] & pad).expand(tgt_in.size(0), T, T)
    tgt_mask = tgt_mask if tgt_polarity else ~tgt_mask
    if dtype is not None:
        src_mask, tgt_mask = src_mask.to(dtype), tgt_mask.to(dtype)
    return (tgt_mask, src_mask) if swap else (src_mask, tgt_mask)


MASK_BUGS = {
    "source polarity flipped": (dict(src_polarity=False), "source mask is flipped"),
    "source mask without query axis": (dict(src_query_axis=False), "needs a query axis"),
    "target polarity flipped": (dict(tgt_polarity=False), "target mask is flipped"),
    "no causal part": (dict(causal="none"), "no causal part"),
    "no target padding": (dict(padding="none"), "causal only"),
    "padding on the queries": (dict(padding="queries"), r"masks the queries \(rows\)"),
    "padding on queries and keys": (dict(padding="both"), r"masks the queries \(rows\), keep\[:, :, None\] \(alone or together with the keys\)"),
    "diagonal excluded": (dict(causal="strict"), "excludes the diagonal"),
    "upper triangle": (dict(causal="triu"), "upper triangle"),
    "float masks": (dict(dtype=torch.float32), "masks are boolean"),
    "returned in the wrong order": (dict(swap=True), "wrong order"),
}


@pytest.mark.parametrize("bug", MASK_BUGS, ids=list(MASK_BUGS))
def test_buggy_make_masks_get_targeted_hints(bug):
    switches, hint = MASK_BUGS[bug]
    with pytest.raises(checks.ExerciseWrong, match=hint):
        checks.make_masks(lambda src, tgt_in, pad_id: _masks(src, tgt_in, pad_id, **switches))


def test_make_masks_from_the_wrong_sequence_is_caught():
    def from_source(src, tgt_in, pad_id):
        src_mask, _ = make_masks(src, tgt_in, pad_id)
        return src_mask, make_masks(tgt_in, src, pad_id)[1][:, :, :]   # tgt mask built from src
    with pytest.raises(checks.ExerciseWrong, match="make_masks"):
        checks.make_masks(from_source)


def test_make_masks_ignoring_pad_id_is_caught():
    with pytest.raises(checks.ExerciseWrong, match="make_masks"):
        checks.make_masks(lambda src, tgt_in, pad_id: make_masks(src, tgt_in, 0))   # pad_id hard-coded


# ---- Exercise 9.2: transformer_parameter_count ----------------------------------------------------

def buggy_count(c, *, biases=True, norms=True, final="pre-LN", tie="once", cross=True, positions="right",
                generator_bias=False):
    """An independent, configurable, deliberately buggy parameter count."""
    D, d_ff = c.d_model, c.d_ff
    attention = 4 * D * D + (4 * D if biases else 0)
    ff = 2 * D * d_ff + (d_ff + D if biases else 0)
    ln = 2 * D if norms else 0
    n = c.n_encoder_layers * (attention + ff + 2 * ln)
    n += c.n_decoder_layers * ((2 * attention + 3 * ln) if cross else (attention + 2 * ln)) + c.n_decoder_layers * ff
    if final == "always" or (final == "pre-LN" and c.norm_first):
        n += 2 * ln
    n += (c.src_vocab_size + c.tgt_vocab_size) * D
    if tie == "twice" or (tie == "once" and not c.tie_embeddings):
        n += c.tgt_vocab_size * D
    n += c.tgt_vocab_size if generator_bias else 0
    learned = c.positional == "learned"
    n += {"right": 2 * c.max_len * D * learned, "always": 2 * c.max_len * D, "never": 0,
          "one": c.max_len * D * learned}[positions]
    return n


def test_the_independent_count_is_right(capsys):
    checks.transformer_parameter_count(buggy_count)
    assert "✅" in capsys.readouterr().out


COUNT_BUGS = {
    "forgetting the biases": (dict(biases=False), "biases are missing"),
    "forgetting the LayerNorms": (dict(norms=False), "LayerNorms are missing"),
    "forgetting the final LayerNorms of pre-LN": (dict(final="never"), "final LayerNorms of a pre-LN model are missing"),
    "final LayerNorms for post-LN too": (dict(final="always"), "counted for a post-LN model too"),
    "tied weights counted twice": (dict(tie="twice"), "tied weight is counted twice"),
    "generator never counted": (dict(tie="never"), "generator is never counted"),
    "generator bias": (dict(generator_bias=True), "generator bias is counted"),
    "forgetting the cross-attention": (dict(cross=False), "cross-attention of the decoder layers is missing"),
    "learned positions counted for sinusoidal": (dict(positions="always"), "counted for positional='sinusoidal'"),
    "forgetting learned positions": (dict(positions="never"), "learned positional tables are missing"),
    "one learned table only": (dict(positions="one"), "only one learned positional table"),
}


@pytest.mark.parametrize("bug", COUNT_BUGS, ids=list(COUNT_BUGS))
def test_buggy_parameter_counts_get_targeted_hints(bug):
    switches, hint = COUNT_BUGS[bug]
    for _ in range(3):   # fresh random configs each time: the hint must not depend on luck
        with pytest.raises(checks.ExerciseWrong, match=hint):
            checks.transformer_parameter_count(lambda c: buggy_count(c, **switches))


def test_one_embedding_only_is_caught():
    with pytest.raises(checks.ExerciseWrong, match="only one token embedding"):
        checks.transformer_parameter_count(lambda c: transformer_parameter_count(c) - c.src_vocab_size * c.d_model)


def test_unknown_wrong_count_gets_the_generic_hint_with_an_example():
    with pytest.raises(checks.ExerciseWrong, match=r"you returned .* Count per piece"):
        checks.transformer_parameter_count(lambda c: transformer_parameter_count(c) + 1)


@pytest.mark.parametrize("answer", [1.5, "12", None])
def test_non_integer_answers_are_refused(answer):
    with pytest.raises(checks.ExerciseWrong, match="as an int"):
        checks.transformer_parameter_count(lambda c: answer)


def test_tensor_and_float_integers_are_accepted(capsys):
    checks.transformer_parameter_count(lambda c: torch.tensor(transformer_parameter_count(c)))
    checks.transformer_parameter_count(lambda c: float(transformer_parameter_count(c)))
    assert capsys.readouterr().out.count("✅") == 2
