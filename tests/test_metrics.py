"""scratchformer.metrics: BLEU built by hand equals sacrebleu's on many corpora (empty
hypotheses, longer hypotheses, no 4-gram matches, one sentence, punctuation, unicode, several
references per sentence, different numbers of them); the pieces on worked examples; errors."""

import math
import random

import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchformer import metrics as M

TOLERANCE = 0.01
TOKENIZERS = ("13a", "none", "char", "intl")

# name -> (hypotheses, references: one string or one list of strings per sentence)
CORPORA = {
    "plain": (
        ["The cat sat on the mat.", "There is a cat on the mat.",
         "A quick brown fox jumps over the lazy dog.", "It is raining today in Berlin."],
        ["The cat is on the mat.", "There is a cat on the mat.",
         "The quick brown fox jumped over the lazy dog.", "Today it rains in Berlin."],
    ),
    "empty hypotheses": (
        ["", "the cat is on the mat", "", "a dog barks at the moon tonight"],
        ["a sentence nobody translated", "the cat is on the mat", "another one",
         "a dog barks at the moon"],
    ),
    "every hypothesis empty": (["", "", ""], ["one reference", "two", "three words here"]),
    "hypotheses longer than the references": (
        ["the cat is on the mat and it is very happy there today",
         "a dog barks at the moon and the moon does not answer at all"],
        ["the cat is on the mat", "a dog barks at the moon"],
    ),
    "no 4-gram matches": (
        ["the cat on mat is", "dog a barks moon at the"],
        ["the cat is on the mat", "a dog barks at the moon"],
    ),
    "no 3-gram or 4-gram matches": (
        ["mat the on cat the", "moon the barks dog a"],
        ["the cat is on the mat", "a dog barks at the moon"],
    ),
    "no match at all": (["xyz uvw", "qqq"], ["the cat is on the mat", "a dog"]),
    "shorter than four tokens": (["the cat", "a dog barks"], ["the cat sat", "a dog barks"]),
    "a single sentence": (["the cat sat on a mat"], ["the cat sat on the mat"]),
    "punctuation": (
        ['"Well -- isn\'t it (really) odd?!", she said; 3.14... $5,000/year.',
         "e-mail: a.b@c.de, http://x.y/z?q=1&r=2 -- [ok] {fine} <tags> 50% off!!!",
         "Hello,world!How are you?I'm fine...thanks."],
        ['"Well, isn\'t it odd?" she said: 3.14 ... $ 5,000 per year.',
         "e-mail a.b@c.de; http://x.y/z?q=1&r=2 - [ok] {fine} <tags> 50 % off!",
         "Hello, world! How are you? I'm fine... thanks."],
    ),
    "unicode": (
        ["Über den Wolken muß die Freiheit wohl grenzenlos sein.",
         "« Ça va ? » demanda-t-il, l'air étonné…", "東京は大きい都市です。", "naïve café 😀 — ok"],
        ["Über den Wolken muss die Freiheit grenzenlos sein.",
         "« Ça va ? » demanda-t-il, étonné…", "東京は大きな都市です。", "naive café 😀 - ok"],
    ),
    "two references each": (
        ["the cat is on the mat", "there is a cat on the mat", "a dog barks"],
        [["the cat is on the mat", "there is a cat on the mat"],
         ["a cat is on the mat", "the mat has a cat on it"],
         ["the dog is barking", "a dog is barking loudly at night"]],
    ),
    "different numbers of references": (
        ["the cat is on the mat", "there is a cat on the mat", "a dog barks", "hello world"],
        [["the cat is on the mat"],
         ["a cat is on the mat", "the mat has a cat on it", "there's a cat on a mat"],
         ["the dog is barking", "a dog is barking loudly at night"],
         ["hello there world", "hi world", "hello , world", "greetings world"]],
    ),
    "a tie between two reference lengths": (
        ["one two three four five six"],           # 6 tokens; references of 4 and 8
        [["one two three four", "one two three four five six seven eight"]],
    ),
    "empty references": (["a b c", "d e"], [["", "a b"], ["", "d e f g"]]),
    "task outputs (dates)": (
        ["2024-03-07", "1999-12-31", "2001-01-10", "1950-06-15"],
        ["2024-03-07", "1999-11-30", "2001-10-01", "1950-06-15"],
    ),
}


def sacre_corpus(hypotheses, references, tokenize="13a"):
    return sacrebleu.corpus_bleu(hypotheses, M.reference_streams(references),
                                 tokenize=tokenize).score


def sacre_sentence(hypothesis, references, tokenize="13a"):
    refs = [references] if isinstance(references, str) else references
    return sacrebleu.sentence_bleu(hypothesis, refs, tokenize=tokenize).score


def largest_differences() -> dict[str, float]:
    """Per tokenizer, the largest |ours - sacrebleu| over every corpus above, corpus and
    sentence level (the number the chapter's notes quote)."""
    worst = {}
    for tokenize in TOKENIZERS:
        diffs = []
        for hyps, refs in CORPORA.values():
            diffs.append(abs(M.corpus_bleu(hyps, refs, tokenize) - sacre_corpus(hyps, refs, tokenize)))
            diffs += [abs(M.sentence_bleu(h, r, tokenize) - sacre_sentence(h, r, tokenize))
                      for h, r in zip(hyps, refs)]
        worst[tokenize] = max(diffs)
    return worst


@pytest.mark.parametrize("tokenize", TOKENIZERS)
@pytest.mark.parametrize("name", list(CORPORA))
def test_corpus_bleu_equals_sacrebleu(name, tokenize):
    hyps, refs = CORPORA[name]
    assert abs(M.corpus_bleu(hyps, refs, tokenize) - sacre_corpus(hyps, refs, tokenize)) <= TOLERANCE


@pytest.mark.parametrize("tokenize", TOKENIZERS)
@pytest.mark.parametrize("name", list(CORPORA))
def test_sentence_bleu_equals_sacrebleu(name, tokenize):
    hyps, refs = CORPORA[name]
    for h, r in zip(hyps, refs):
        assert abs(M.sentence_bleu(h, r, tokenize) - sacre_sentence(h, r, tokenize)) <= TOLERANCE


def test_the_largest_difference_is_tiny():
    worst = largest_differences()
    assert max(worst.values()) <= 1e-9, worst


def test_the_corpora_cover_the_edge_cases():
    """The cases are what their names say (so the parity above means something)."""
    hyps, refs = CORPORA["no 4-gram matches"]
    score = sacrebleu.corpus_bleu(hyps, [refs])
    assert score.counts[3] == 0 and score.counts[0] > 0 and score.score > 0   # smoothing path
    assert sacrebleu.corpus_bleu(*CORPORA["hypotheses longer than the references"][:1],
                                 [CORPORA["hypotheses longer than the references"][1]]).bp == 1
    assert sacrebleu.corpus_bleu(*CORPORA["empty hypotheses"][:1],
                                 [CORPORA["empty hypotheses"][1]]).bp < 1
    assert M.corpus_bleu(*CORPORA["every hypothesis empty"]) == 0.0
    assert M.corpus_bleu(*CORPORA["no match at all"]) == 0.0
    assert M.corpus_bleu(*CORPORA["shorter than four tokens"]) == 0.0   # no 4-grams at all
    assert M.sentence_bleu("a dog barks", "a dog barks") == pytest.approx(100.0)
    assert M.corpus_bleu(["the cat is on the mat"], ["the cat is on the mat"]) == pytest.approx(100)


def test_multi_reference_is_the_transpose_of_sacrebleus_streams():
    hyps, refs = CORPORA["two references each"]
    streams = [[r[0] for r in refs], [r[1] for r in refs]]
    assert M.reference_streams(refs) == streams
    assert M.corpus_bleu(hyps, list(zip(*streams))) == pytest.approx(
        sacrebleu.corpus_bleu(hyps, streams).score, abs=TOLERANCE)
    # the wrong layout (streams passed as if they were per-sentence lists) is rejected
    with pytest.raises(ValueError, match="transpose"):
        M.corpus_bleu(hyps, streams)
    hyps, refs = CORPORA["different numbers of references"]
    assert M.reference_streams(refs)[2] == [None, "there's a cat on a mat", None, "hello , world"]


def test_differing_numbers_of_references_match_sacrebleu_with_none():
    hyps, refs = CORPORA["different numbers of references"]
    streams = M.reference_streams(refs)
    assert sum(r is None for s in streams for r in s) == 6
    assert abs(M.corpus_bleu(hyps, refs) - sacrebleu.corpus_bleu(hyps, streams).score) <= TOLERANCE
    metric = sacrebleu.BLEU()
    metric.corpus_score(hyps, streams)
    assert metric.get_signature().format().startswith("nrefs:var|")


def test_chrf_and_exact_match():
    for name in ("plain", "unicode", "different numbers of references", "empty hypotheses"):
        hyps, refs = CORPORA[name]
        expected = sacrebleu.corpus_chrf(hyps, M.reference_streams(refs)).score
        assert M.chrf(hyps, refs) == pytest.approx(expected)
    hyps, refs = CORPORA["different numbers of references"]
    assert M.exact_match(hyps, refs) == 0.25              # the first one only
    assert M.exact_match(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(2 / 3)
    assert M.exact_match(["b"], [["a", "b"]]) == 1.0


def test_an_empty_corpus_is_a_clear_error():
    with pytest.raises(IndexError):                        # sacrebleu does not accept one either
        sacrebleu.corpus_bleu([], [[]])
    for fn in (M.corpus_bleu, M.chrf, M.exact_match):
        with pytest.raises(ValueError, match="empty"):
            fn([], [])


@pytest.mark.parametrize("hyps, refs, match", [
    (["a b"], ["a b", "c d"], "1 hypotheses but 2 references"),
    (["a b"], [[]], "no reference"),
    (["a b"], [["a", 3]], "strings"),
    ("a b", ["a b"], "list of strings"),
    (["a b", "c"], ["a b", ["c"]], "all strings"),
])
def test_bad_corpora_are_clear_errors(hyps, refs, match):
    with pytest.raises(ValueError, match=match):
        M.corpus_bleu(hyps, refs)


def test_unknown_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="tokenize must be one of"):
        M.corpus_bleu(["a"], ["a"], tokenize="moses")
    with pytest.raises(ValueError, match="hypothesis must be a string"):
        M.sentence_bleu(["a"], "a")


# ---- the pieces ------------------------------------------------------------------------------

def test_ngrams_and_the_papers_clipping_example():
    assert M.ngrams(["a", "b", "a", "b"], 2) == {("a", "b"): 2, ("b", "a"): 1}
    assert M.ngrams(["a"], 2) == {}
    # Papineni et al. (2002), section 2.1: "the the the the the the the" scores 2/7
    hyp = "the the the the the the the".split()
    refs = ["the cat is on the mat".split(), "there is a cat on the mat".split()]
    assert M.clipped_counts(hyp, refs, 1) == (2, 7)
    assert M.clipped_counts(hyp, refs, 2) == (0, 6)
    assert M.clipped_counts([], refs, 1) == (0, 0)
    assert M.clipped_counts(["a", "b"], [["a", "b"]], 3) == (0, 0)
    # clipped by the largest count in one reference, not by the sum over references
    assert M.clipped_counts(["x"] * 4, [["x"] * 2, ["x"] * 3], 1) == (3, 4)


def test_clipped_counts_leaves_its_arguments_alone():
    hyp, refs = ["a", "b", "a"], [["a", "b"], ["b"]]
    M.clipped_counts(hyp, refs, 1)
    assert hyp == ["a", "b", "a"] and refs == [["a", "b"], ["b"]]


def test_brevity_penalty():
    assert M.brevity_penalty(10, 10) == 1.0
    assert M.brevity_penalty(12, 10) == 1.0
    assert M.brevity_penalty(5, 10) == pytest.approx(math.exp(-1))
    assert M.brevity_penalty(0, 3) == 0.0
    assert M.brevity_penalty(0, 0) == 1.0


def test_corpus_brevity_penalty_sums_the_closest_lengths_ties_to_the_shorter():
    # per sentence: closest of (4, 8) to 6 is a tie -> 4; closest of (3,) to 2 -> 3
    assert M.corpus_brevity_penalty([6, 2], [[4, 8], [3]]) == 1.0          # c = 8 >= r = 7
    assert M.corpus_brevity_penalty([6, 1], [[8, 4], [5]]) == pytest.approx(math.exp(1 - 9 / 7))
    # over the corpus, not averaged per sentence
    per_sentence = (M.brevity_penalty(10, 5) + M.brevity_penalty(2, 5)) / 2
    assert M.corpus_brevity_penalty([10, 2], [[5], [5]]) == 1.0 != per_sentence
    assert M.corpus_brevity_penalty([0, 0], [[1], [2]]) == 0.0


def test_geometric_mean_smoothing_and_effective_order():
    assert M.geometric_mean([4, 2, 1, 1], [4, 4, 4, 4]) == pytest.approx((1 * .5 * .25 * .25) ** .25)
    # exp smoothing: the first order without a match counts 1/2 a match, the next 1/4
    assert M.geometric_mean([4, 2, 0, 0], [4, 4, 4, 4]) == pytest.approx(
        (1 * .5 * (.5 / 4) * (.25 / 4)) ** .25)
    assert M.geometric_mean([0, 0, 0, 0], [4, 3, 2, 1]) == 0.0
    assert M.geometric_mean([2, 1, 0, 0], [2, 1, 0, 0]) == 0.0             # no 3-grams at all
    assert M.geometric_mean([2, 1, 0, 0], [2, 1, 0, 0], effective_order=True) == 1.0


def test_bleu_is_not_symmetric():
    hyp, ref = ["the cat"], ["the cat is on the mat"]
    assert M.corpus_bleu(hyp, ref, "char") != M.corpus_bleu(ref, hyp, "char")


# ---- property tests: random corpora ---------------------------------------------------------

WORDS = ["the", "cat", "a", "mat", "on", "is", "dog", ",", ".", "don't", "e-mail", "5.0",
         "Über", "ça", "(x)", "x-y", "!", "?", '"']


@st.composite
def corpora(draw):
    n = draw(st.integers(1, 5))
    words = st.lists(st.sampled_from(WORDS), min_size=0, max_size=9).map(" ".join)
    hyps = [draw(words) for _ in range(n)]
    refs = [draw(st.lists(words, min_size=1, max_size=3)) for _ in range(n)]
    if draw(st.booleans()):                                   # one reference per sentence
        refs = [r[0] for r in refs]
    return hyps, refs


@settings(max_examples=80, deadline=None)
@given(corpora(), st.sampled_from(TOKENIZERS))
def test_random_corpora_match_sacrebleu(corpus, tokenize):
    hyps, refs = corpus
    assert abs(M.corpus_bleu(hyps, refs, tokenize) - sacre_corpus(hyps, refs, tokenize)) <= TOLERANCE
    h, r = hyps[0], refs[0]
    assert abs(M.sentence_bleu(h, r, tokenize) - sacre_sentence(h, r, tokenize)) <= TOLERANCE


def test_a_larger_random_corpus_matches_sacrebleu():
    rng = random.Random(0)
    hyps = [" ".join(rng.choices(WORDS, k=rng.randint(0, 25))) for _ in range(300)]
    refs = [[" ".join(rng.choices(WORDS, k=rng.randint(1, 25))) for _ in range(rng.randint(1, 4))]
            for _ in range(300)]
    for tokenize in TOKENIZERS:
        assert abs(M.corpus_bleu(hyps, refs, tokenize) - sacre_corpus(hyps, refs, tokenize)) <= TOLERANCE


@pytest.mark.parametrize("name", list(CORPORA))
def test_the_brevity_penalty_and_reference_length_are_sacrebleus(name):
    """The effective reference length (closest per sentence, ties to the shorter, summed) and
    the penalty are exactly sacrebleu's, including the tie and empty-reference corpora."""
    hyps, refs = CORPORA[name]
    score = sacrebleu.corpus_bleu(hyps, M.reference_streams(refs))
    per_sentence = [[r] if isinstance(r, str) else r for r in refs]
    hyp_lengths = [len(M.to_tokens(h)) for h in hyps]
    ref_lengths = [[len(M.to_tokens(r)) for r in rs] for rs in per_sentence]
    closest = [min(ls, key=lambda r: (abs(r - c), r)) for c, ls in zip(hyp_lengths, ref_lengths)]
    assert (sum(hyp_lengths), sum(closest)) == (score.sys_len, score.ref_len)
    assert M.corpus_brevity_penalty(hyp_lengths, ref_lengths) == pytest.approx(score.bp, abs=1e-12)
