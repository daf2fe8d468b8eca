"""Checkers for chapter 14 (``scratchformer.metrics``): clipped n-gram counts (exercise 14.1) and
the brevity penalty of a corpus (exercise 14.2)."""

from __future__ import annotations

import copy
import importlib
import math
import numbers
from collections import Counter

import torch

from scratchformer.checks._common import ExerciseWrong, _call, _generator, _passed
from scratchformer.checks._exercise import exercise
from scratchformer.checks._probes import agreeing_bug, as_int, as_pair

__all__ = ["clipped_counts", "corpus_brevity_penalty"]


def _metrics():
    return importlib.import_module("scratchformer.metrics")


def _draw(g: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _require_unchanged(name: str, labels: tuple[str, ...], before: tuple, after: tuple) -> None:
    """No argument (nested lists) may be modified in place."""
    __tracebackhide__ = True
    for label, old, new in zip(labels, before, after):
        if old != new:
            raise ExerciseWrong(
                f"{name}: your code changed its argument `{label}` in place (it was {old!r}, "
                f"now {new!r}). Likely bug: .sort(), .append(), .pop() or item assignment on a "
                "list the caller passed in; use sorted(...) or build new lists instead.")


# --------------------------------------------------------------------------------------------
# Exercise 14.1: clipped_counts(hypothesis, references, n) -> (matches, total)
# --------------------------------------------------------------------------------------------

NOT_CLIPPED = (
    "the counts are not clipped: every hypothesis n-gram that occurs in some reference counts "
    "as often as it occurs in the hypothesis, so 'the the the the' scores 4/4 against 'the cat'. "
    "Count each n-gram at most as often as it occurs in a single reference: min(count in the "
    "hypothesis, largest count in one reference)."
)
SUM_OF_REFERENCES = (
    "each n-gram is clipped by its count summed over all references. The clip is the largest "
    "count in any *one* reference (Counter's | operator keeps the larger count; + adds them): "
    "two references that each say 'the' twice do not license four."
)
FIRST_REFERENCE = (
    "only the first reference is used. An n-gram may be matched by any reference: clip by the "
    "largest count over all of them."
)
MIN_OF_REFERENCES = (
    "each n-gram is clipped by its smallest count over the references (Counter's & keeps the "
    "smaller count), so an n-gram missing from one reference never matches. Use the largest "
    "count over the references (|), and & only between the hypothesis and that maximum."
)
DISTINCT = (
    "each distinct n-gram is counted once: a set loses the counts. An n-gram that occurs twice "
    "in the hypothesis and twice in a reference matches twice; use Counters, not sets."
)
SWAPPED_COUNTS = (
    "the two numbers are swapped: return (matches, total), the clipped matches first and the "
    "number of hypothesis n-grams second."
)
LAST_NGRAM_MISSED = (
    "the last n-gram of each sentence is missing: a list of L tokens has L - n + 1 n-grams, "
    "starting at positions 0 .. L - n, i.e. range(len(tokens) - n + 1)."
)
JOINED = (
    "n-grams are glued into strings without a separator, so ('a', 'bc') and ('ab', 'c') become "
    "the same key 'abc'. Keep an n-gram as a tuple of tokens (tuple(tokens[i:i + n])) or join "
    "with a separator that tokens cannot contain."
)
ALL_ORDERS = (
    "the counts include every order from 1 to n. clipped_counts counts the n-grams of the one "
    "order n; BLEU calls it once per order."
)


def _counts(tokens, n: int, key=tuple) -> Counter:
    return Counter(key(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _clip(hyp, refs, n, combine="max", key=tuple, distinct=False, last=True):
    """(matches, total) of a counting rule: ``combine`` the references' counts by max, sum, min
    or first; keys tuples or glued strings; distinct n-grams once; the last n-gram kept or not."""
    def grams(tokens):
        stop = len(tokens) - n + (1 if last else 0)
        return Counter(key(tokens[i:i + n]) for i in range(max(stop, 0)))

    counts = grams(hyp)
    ref_counts = [grams(r) for r in refs]
    if combine == "first":
        ref_counts = ref_counts[:1]
    limit = Counter()
    for g in counts:
        values = [c[g] for c in ref_counts]
        limit[g] = {"max": max, "first": max, "sum": sum, "min": min}[combine](values)
    if distinct:
        return sum(1 for g in counts if limit[g] > 0), sum(counts.values())
    return sum(min(c, limit[g]) for g, c in counts.items()), sum(counts.values())


def _clipped_variants(hyp, refs, n) -> dict[str, tuple[int, int]]:
    """hint -> (matches, total) of a known bug."""
    right = _clip(hyp, refs, n)
    return {
        NOT_CLIPPED: (sum(c for g, c in _counts(hyp, n).items()
                          if any(g in _counts(r, n) for r in refs)), right[1]),
        SUM_OF_REFERENCES: _clip(hyp, refs, n, combine="sum"),
        FIRST_REFERENCE: _clip(hyp, refs, n, combine="first"),
        MIN_OF_REFERENCES: _clip(hyp, refs, n, combine="min"),
        DISTINCT: _clip(hyp, refs, n, distinct=True),
        SWAPPED_COUNTS: (right[1], right[0]),
        LAST_NGRAM_MISSED: _clip(hyp, refs, n, last=False),
        JOINED: _clip(hyp, refs, n, key="".join),
        ALL_ORDERS: tuple(map(sum, zip(*[_clip(hyp, refs, k) for k in range(1, n + 1)]))),
    }


_PIECES = ["a", "b", "c", "ab", "bc", "d"]     # glued pieces collide: "a"+"bc" == "ab"+"c"


def _sentence(g: torch.Generator, low: int, high: int) -> list[str]:
    return [_PIECES[int(i)] for i in torch.randint(0, len(_PIECES), (_draw(g, low, high),),
                                                   generator=g)]


def _clipped_probes(g: torch.Generator) -> list[tuple[list[str], list[list[str]], int]]:
    """(hypothesis, references, n): the paper's example, probes that separate the clipping
    rules, glued-key collisions, empty and too-short hypotheses, and random sentences over a
    small vocabulary (so n-grams repeat), every order 1-4, one to three references."""
    the = ["the"] * _draw(g, 5, 8)
    probes = [
        (the, [["the", "cat", "is", "on", "the", "mat"],
               ["there", "is", "a", "cat", "on", "the", "mat"]], 1),
        (["x"] * 4 + ["y", "x"], [["x", "x", "y"], ["x", "x", "x", "z"], ["y", "z"]], 1),
        (["a", "bc", "a", "bc"], [["ab", "c", "a"], ["c", "ab"]], 2),
        (["q", "r", "q", "r", "q"], [["q", "r", "q", "r"], ["r", "q"]], 2),
        ([], [["a", "b"]], 1),
        (["a", "b"], [["a", "b", "c"]], 3),
    ]
    for order in (1, 2, 3, 4, _draw(g, 1, 2), _draw(g, 2, 3)):
        hyp = _sentence(g, order + 2, 14)
        refs = [_sentence(g, 0, 14) for _ in range(_draw(g, 1, 3))]
        refs[0] = refs[0] + hyp[:_draw(g, order, len(hyp))]   # so that some n-grams match
        probes.append((hyp, refs, order))
    return probes


def _describe(hyp, refs, n) -> str:
    return f"hypothesis={hyp!r}, references={refs!r}, n={n}"


def _count_pair(name: str, out) -> tuple[int, int]:
    __tracebackhide__ = True
    if isinstance(out, numbers.Real) or (isinstance(out, torch.Tensor) and out.numel() == 1):
        raise ExerciseWrong(
            f"{name}: you return one number, {out!r}. Return the two counts (matches, total): "
            "BLEU sums each over the corpus before dividing.")
    matches, total = as_pair(name, "the result (matches, total)", out)
    return as_int(name, "matches", matches), as_int(name, "total", total)


@exercise("14.1", reference="scratchformer.metrics")
def clipped_counts(fn) -> None:
    """Check ``clipped_counts(hypothesis, references, n) -> (matches, total)`` on the paper's
    example, probes that separate the clipping rules, empty and too-short hypotheses and random
    sentences with one to three references, orders 1-4."""
    __tracebackhide__ = True
    name = "clipped_counts"
    reference = _metrics().clipped_counts
    results = []
    for hyp, refs, n in _clipped_probes(_generator()):
        before = copy.deepcopy((hyp, refs))
        out = _call(f"{name}(hypothesis, references, n={n})", fn, hyp, refs, n)
        _require_unchanged(name, ("hypothesis", "references"), before, (hyp, refs))
        pair = _count_pair(name, out)
        results.append(((hyp, refs, n), pair, tuple(reference(hyp, refs, n))))
    wrong = [r for r in results if r[1] != r[2]]
    if not wrong:
        _passed(name, f"{len(results)} sentences, orders 1-4, one to three references, the "
                      "paper's 'the the the ...' and empty or too-short hypotheses; arguments "
                      "unchanged.")
        return
    probe, pair, expected = wrong[0]
    where = f"for {_describe(*probe)} you return {pair}; expected {expected}"
    bug = agreeing_bug([(p, _clipped_variants(*q)) for q, p, _ in results],
                       same=lambda a, b: tuple(a) == tuple(b))
    if bug is not None:
        raise ExerciseWrong(f"{name}: {where}. Likely bug: {bug}")
    raise ExerciseWrong(
        f"{name}: {where}. total is the number of n-grams of the hypothesis (tuples of n "
        "consecutive tokens); matches counts those that occur in a reference, each n-gram at "
        "most as often as it occurs in one reference.")


# --------------------------------------------------------------------------------------------
# Exercise 14.2: corpus_brevity_penalty(hyp_lengths, ref_lengths) -> float
# --------------------------------------------------------------------------------------------

PER_SENTENCE = (
    "the penalty is computed per sentence and averaged. BLEU's brevity penalty is one number for "
    "the corpus: sum the hypothesis lengths (c) and the effective reference lengths (r) over all "
    "sentences first, then apply the penalty once to (c, r). Per sentence, one short hypothesis "
    "is punished even when the others are long enough to make up for it."
)
CORPUS_CLOSEST = (
    "the reference length is chosen once for the whole corpus: you sum each reference 'stream' "
    "(the j-th reference of every sentence) and take the total closest to c. The effective "
    "reference length picks, per sentence, the reference length closest to that sentence's "
    "hypothesis length, and sums those choices."
)
SHORTEST = (
    "each sentence contributes its shortest reference length. BLEU (the paper's 'best match "
    "length', and sacrebleu) takes the reference length closest to the hypothesis length."
)
FIRST_LENGTH = (
    "each sentence contributes the length of its first reference only. With several references "
    "take the one closest in length to the hypothesis."
)
AVERAGE = (
    "each sentence contributes the average length of its references. Take the single reference "
    "length closest to the hypothesis length."
)
LONGEST = (
    "each sentence contributes its longest reference length. Take the reference length closest "
    "to the hypothesis length."
)
TIE_LONGER = (
    "when two reference lengths are equally close to the hypothesis length, you take the longer "
    "one. sacrebleu takes the shorter (e.g. min over (|r - c|, r))."
)
TIE_FIRST = (
    "when two reference lengths are equally close, you take whichever is listed first (min with "
    "key=abs(r - c) keeps the first). sacrebleu takes the shorter one: break ties by the length "
    "itself, e.g. key=lambda r: (abs(r - c), r)."
)
INVERTED = (
    "the ratio is inverted: the penalty for c < r is exp(1 - r / c), reference length over "
    "hypothesis length, which is 0 as c goes to 0."
)
NOT_CAPPED = (
    "the penalty is not capped at 1: when the hypotheses are at least as long as the references "
    "(c >= r) it is exactly 1; exp(1 - r / c) only applies for c < r. BLEU punishes short "
    "output and leaves long output to the precisions."
)
VARIABLE_COUNTS = (
    "right when every sentence has the same number of references, wrong when the numbers "
    "differ. Do you zip the sentences' references into streams, or index a fixed position? Work "
    "per sentence with whatever references it has."
)
EMPTY_CORPUS = (
    "for hypotheses of total length 0 the penalty is 0 (the limit of exp(1 - r / c) as c goes "
    "to 0, and sacrebleu's value); do not divide by c = 0."
)


def _bp(c, r) -> float:
    if c >= r:
        return 1.0
    return math.exp(1 - r / c) if c > 0 else 0.0


def _closest(c, lengths, tie="shorter"):
    if tie == "first":
        return min(lengths, key=lambda r: abs(r - c))
    sign = 1 if tie == "shorter" else -1
    return min(lengths, key=lambda r: (abs(r - c), sign * r))


def _bp_variants(hyp_lengths, ref_lengths) -> dict[str, float]:
    """hint -> the penalty of a known bug (every sentence with the same number of references)."""
    c = sum(hyp_lengths)
    closest = [_closest(h, ls) for h, ls in zip(hyp_lengths, ref_lengths)]
    r = sum(closest)
    streams = [sum(s) for s in zip(*ref_lengths)]
    return {
        PER_SENTENCE: sum(_bp(h, x) for h, x in zip(hyp_lengths, closest)) / len(closest),
        CORPUS_CLOSEST: _bp(c, _closest(c, streams)),
        SHORTEST: _bp(c, sum(min(ls) for ls in ref_lengths)),
        FIRST_LENGTH: _bp(c, sum(ls[0] for ls in ref_lengths)),
        AVERAGE: _bp(c, sum(sum(ls) / len(ls) for ls in ref_lengths)),
        LONGEST: _bp(c, sum(max(ls) for ls in ref_lengths)),
        TIE_LONGER: _bp(c, sum(_closest(h, ls, "longer") for h, ls in zip(hyp_lengths,
                                                                           ref_lengths))),
        TIE_FIRST: _bp(c, sum(_closest(h, ls, "first") for h, ls in zip(hyp_lengths,
                                                                         ref_lengths))),
        INVERTED: 1.0 if c >= r else (math.exp(1 - c / r) if r > 0 else 0.0),
        NOT_CAPPED: math.exp(1 - r / c) if c > 0 else 0.0,
    }


def _bp_probes(g: torch.Generator) -> list[tuple[list[int], list[list[int]], bool]]:
    """(hyp_lengths, ref_lengths, same number of references everywhere): hand-made probes that
    separate the rules (per sentence vs corpus, streams vs per sentence, ties listed either way,
    long output), then random corpora of 1, 2 and 3 references per sentence, and corpora whose
    sentences have different numbers of references."""
    probes = [
        ([10, 2], [[5], [5]], True),                         # corpus 1.0; averaged < 1
        ([5, 5, 3], [[4, 9], [9, 4], [7, 3]], True),         # streams vs per sentence
        ([6, 6, 2], [[4, 8], [8, 4], [9, 10]], True),        # ties, shorter listed first/second
        ([12, 15], [[10, 11, 9], [14, 13, 20]], True),       # longer than the references
        ([9, 8, 5], [[4, 10], [3, 9], [6, 2]], True),        # closest is not the shortest
    ]
    for k in (1, 2, 3, 2, 3):
        n = _draw(g, 3, 7)
        refs = [[_draw(g, 3, 20) for _ in range(k)] for _ in range(n)]
        hyps = [max(0, ls[_draw(g, 0, k - 1)] + _draw(g, -4, 3)) for ls in refs]
        probes.append((hyps, refs, True))
    for _ in range(2):
        n = _draw(g, 3, 6)
        refs = [[_draw(g, 2, 16) for _ in range(_draw(g, 1, 4))] for _ in range(n)]
        refs[0], refs[1] = refs[0][:1], refs[1] + [0]                   # counts differ
        for ls in refs[1:]:
            if len(ls) > 1:                  # the last reference is the closest, far from
                ls[-1] = max(ls) + _draw(g, 6, 10)     # the first and from the others
        hyps = [ls[-1] - 1 for ls in refs]
        probes.append((hyps, refs, False))
    return probes


def _as_penalty(name: str, out) -> float:
    __tracebackhide__ = True
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        return float(out)
    if isinstance(out, numbers.Real) and not isinstance(out, bool):
        return float(out)
    raise ExerciseWrong(f"{name}: return the penalty as a float, got {type(out).__name__} "
                        f"{out!r}.")


def _same_penalty(a, b) -> bool:
    return abs(float(a) - float(b)) <= 1e-9 + 1e-7 * abs(float(b))


@exercise("14.2", reference="scratchformer.metrics")
def corpus_brevity_penalty(fn) -> None:
    """Check ``corpus_brevity_penalty(hyp_lengths, ref_lengths) -> float`` on corpora with one to
    four references per sentence (different numbers too), ties, long output, and empty output."""
    __tracebackhide__ = True
    name = "corpus_brevity_penalty"
    reference = _metrics().corpus_brevity_penalty
    results = []
    for hyps, refs, same_count in _bp_probes(_generator()):
        before = copy.deepcopy((hyps, refs))
        out = _call(f"{name}(hyp_lengths={hyps}, ref_lengths={refs})", fn, hyps, refs)
        _require_unchanged(name, ("hyp_lengths", "ref_lengths"), before, (hyps, refs))
        results.append((hyps, refs, same_count, _as_penalty(name, out), reference(hyps, refs)))
    empty = ([0, 0], [[3, 5], [4]])
    try:
        out = _call(f"{name}(hyp_lengths=[0, 0], ref_lengths=[[3, 5], [4]])", fn, *empty)
    except ExerciseWrong as error:
        if isinstance(error.__cause__, ZeroDivisionError):
            raise ExerciseWrong(f"{error} Likely bug: {EMPTY_CORPUS}") from None
        raise
    wrong = [r for r in results if not _same_penalty(r[3], r[4])]
    if not wrong and _same_penalty(_as_penalty(name, out), 0.0):
        _passed(name, f"{len(results) + 1} corpora with one to four references per sentence "
                      "(different numbers too), ties, long and empty output; arguments unchanged.")
        return
    if not wrong:
        raise ExerciseWrong(f"{name}: for hyp_lengths={empty[0]}, ref_lengths={empty[1]} you "
                            f"return {_as_penalty(name, out)!r}; expected 0.0. Likely bug: "
                            f"{EMPTY_CORPUS}")
    hyps, refs, _, got, expected = wrong[0]
    where = (f"for hyp_lengths={hyps}, ref_lengths={refs} you return {got:.6g}; expected "
             f"{expected:.6g}")
    if all(not same for _, _, same, _, _ in wrong):
        raise ExerciseWrong(f"{name}: {where}. Likely bug: {VARIABLE_COUNTS}")
    bug = agreeing_bug([(got, _bp_variants(h, r)) for h, r, same, got, _ in results if same],
                       same=_same_penalty)
    if bug is not None:
        raise ExerciseWrong(f"{name}: {where}. Likely bug: {bug}")
    raise ExerciseWrong(
        f"{name}: {where}. c is the total hypothesis length; r the sum over sentences of the "
        "reference length closest to each hypothesis length (ties: the shorter); the penalty "
        "is 1 if c >= r, else exp(1 - r / c).")
