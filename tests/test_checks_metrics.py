"""The chapter 14 checkers bite: the references pass, the stubs are 'not attempted', every
known-buggy clipped_counts and corpus_brevity_penalty fails with its targeted hint, and correct
versions written differently pass."""

import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from checker_testing import fails_with
from scratchformer import checks
from scratchformer.checks import metrics as C
from scratchformer.metrics import brevity_penalty, clipped_counts, corpus_brevity_penalty


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


def test_references_pass_on_fresh_inputs(capsys):
    for _ in range(3):
        checks.clipped_counts(clipped_counts)
        checks.corpus_brevity_penalty(corpus_brevity_penalty)
    assert capsys.readouterr().out.count("✅") == 6


@pytest.mark.parametrize("checker", [checks.clipped_counts, checks.corpus_brevity_penalty],
                         ids=["clipped_counts", "corpus_brevity_penalty"])
def test_stub_is_not_attempted(checker):
    with pytest.raises(checks.ExerciseNotAttempted, match="not attempted"):
        checker(stub)


def test_checkers_are_exported_and_numbered():
    assert {"clipped_counts", "corpus_brevity_penalty"} <= set(checks.__all__)
    assert checks.REGISTRY["clipped_counts"] == ("14.1", "scratchformer.metrics")
    assert checks.REGISTRY["corpus_brevity_penalty"] == ("14.2", "scratchformer.metrics")


# ---- 14.1 clipped_counts ---------------------------------------------------------------------

def grams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def cc_not_clipped(hyp, refs, n):
    counts = grams(hyp, n)
    seen = set().union(*(grams(r, n) for r in refs))
    return sum(c for g, c in counts.items() if g in seen), sum(counts.values())


def cc_not_clipped_loop(hyp, refs, n):          # the same bug, written as a loop
    matches = total = 0
    for i in range(len(hyp) - n + 1):
        g = hyp[i:i + n]
        total += 1
        if any(r[j:j + n] == g for r in refs for j in range(len(r) - n + 1)):
            matches += 1
    return matches, total


def cc_sum_of_refs(hyp, refs, n):
    limit = sum((grams(r, n) for r in refs), Counter())
    counts = grams(hyp, n)
    return sum(min(c, limit[g]) for g, c in counts.items()), sum(counts.values())


def cc_first_ref(hyp, refs, n):
    counts, limit = grams(hyp, n), grams(refs[0], n)
    return sum((counts & limit).values()), sum(counts.values())


def cc_min_of_refs(hyp, refs, n):
    limit = grams(refs[0], n)
    for r in refs[1:]:
        limit &= grams(r, n)
    counts = grams(hyp, n)
    return sum((counts & limit).values()), sum(counts.values())


def cc_distinct(hyp, refs, n):
    hyp_set = {tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1)}
    ref_set = set().union(*(grams(r, n) for r in refs))
    return len(hyp_set & ref_set), len(hyp) - n + 1 if len(hyp) >= n else 0


def cc_swapped(hyp, refs, n):
    matches, total = clipped_counts(hyp, refs, n)
    return total, matches


def cc_last_missed(hyp, refs, n):
    def g(tokens):
        return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n))
    counts, limit = g(hyp), Counter()
    for r in refs:
        limit |= g(r)
    return sum((counts & limit).values()), sum(counts.values())


def cc_joined(hyp, refs, n):
    def g(tokens):
        return Counter("".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    counts, limit = g(hyp), Counter()
    for r in refs:
        limit |= g(r)
    return sum((counts & limit).values()), sum(counts.values())


def cc_all_orders(hyp, refs, n):
    pairs = [clipped_counts(hyp, refs, k) for k in range(1, n + 1)]
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def cc_ratio(hyp, refs, n):
    matches, total = clipped_counts(hyp, refs, n)
    return matches / max(total, 1)


def cc_sorts_references(hyp, refs, n):
    for r in refs:
        r.sort()                                   # "normalise" the references in place
    return clipped_counts(hyp, refs, n)


def cc_crashes(hyp, refs, n):
    counts = grams(hyp, n)
    best = max(grams(r, n)[g] for g in counts for r in refs)   # max() of nothing: ValueError
    return min(best, sum(counts.values())), sum(counts.values())


def cc_float_counts(hyp, refs, n):
    matches, total = clipped_counts(hyp, refs, n)
    return float(matches), float(total)


@pytest.mark.parametrize("implementation, hint", [
    (cc_not_clipped, C.NOT_CLIPPED),
    (cc_not_clipped_loop, C.NOT_CLIPPED),
    (cc_sum_of_refs, C.SUM_OF_REFERENCES),
    (cc_first_ref, C.FIRST_REFERENCE),
    (cc_min_of_refs, C.MIN_OF_REFERENCES),
    (cc_distinct, C.DISTINCT),
    (cc_swapped, C.SWAPPED_COUNTS),
    (cc_last_missed, C.LAST_NGRAM_MISSED),
    (cc_joined, C.JOINED),
    (cc_all_orders, C.ALL_ORDERS),
    (cc_ratio, "Return the two counts (matches, total)"),
    (cc_sorts_references, "changed its argument `references` in place"),
    (cc_crashes, "your code raised ValueError (line"),
    (cc_float_counts, "return an int"),
], ids=lambda x: getattr(x, "__name__", "hint"))
def test_buggy_clipped_counts_fail_with_their_hint(implementation, hint):
    for _ in range(3):                              # fresh draws every time
        fails_with(checks.clipped_counts, implementation, hint)


def test_a_hint_is_not_given_for_an_unknown_bug():
    def off_by_one_match(hyp, refs, n):             # no known bug: the generic explanation
        matches, total = clipped_counts(hyp, refs, n)
        return matches + (total > 3), total
    message = fails_with(checks.clipped_counts, off_by_one_match, "expected")
    assert "Likely bug" not in message


def cc_counter_and(hyp, refs, n):
    counts = grams(hyp, n)
    limit = Counter()
    for r in refs:
        limit = limit | grams(r, n)
    return sum((counts & limit).values()), counts.total()


def cc_dicts_numpy(hyp, refs, n):                   # plain dicts, a list, NumPy ints
    counts = defaultdict(int)
    for i in range(len(hyp) - n + 1):
        counts[" ".join(hyp[i:i + n]) + " "] += 1       # a separator: no collisions
    best = defaultdict(int)
    for r in refs:
        here = defaultdict(int)
        for i in range(len(r) - n + 1):
            here[" ".join(r[i:i + n]) + " "] += 1
        for g, c in here.items():
            best[g] = max(best[g], c)
    matches = np.int64(sum(min(c, best[g]) for g, c in counts.items()))
    return [matches, np.int32(sum(counts.values()))]


def cc_tensors(hyp, refs, n):
    matches, total = clipped_counts(hyp, refs, n)
    return torch.tensor(matches), torch.tensor(total)


@pytest.mark.parametrize("implementation", [cc_counter_and, cc_dicts_numpy, cc_tensors])
def test_correct_clipped_counts_written_differently_pass(implementation):
    for _ in range(3):
        checks.clipped_counts(implementation)


# ---- 14.2 corpus_brevity_penalty --------------------------------------------------------------

def closest(c, lengths):
    return min(lengths, key=lambda r: (abs(r - c), r))


def bp_per_sentence(hyps, refs):
    return sum(brevity_penalty(c, closest(c, ls)) for c, ls in zip(hyps, refs)) / len(hyps)


def bp_corpus_closest(hyps, refs):                 # one reference "stream" for the corpus
    c = sum(hyps)
    totals = [sum(stream) for stream in zip(*refs)]
    return brevity_penalty(c, closest(c, totals))


def bp_shortest(hyps, refs):
    return brevity_penalty(sum(hyps), sum(min(ls) for ls in refs))


def bp_first(hyps, refs):
    return brevity_penalty(sum(hyps), sum(ls[0] for ls in refs))


def bp_average(hyps, refs):
    return brevity_penalty(sum(hyps), sum(sum(ls) / len(ls) for ls in refs))


def bp_longest(hyps, refs):
    return brevity_penalty(sum(hyps), sum(max(ls) for ls in refs))


def bp_tie_longer(hyps, refs):
    r = sum(min(ls, key=lambda x: (abs(x - c), -x)) for c, ls in zip(hyps, refs))
    return brevity_penalty(sum(hyps), r)


def bp_tie_first(hyps, refs):
    r = sum(min(ls, key=lambda x: abs(x - c)) for c, ls in zip(hyps, refs))
    return brevity_penalty(sum(hyps), r)


def bp_inverted(hyps, refs):
    c, r = sum(hyps), sum(closest(h, ls) for h, ls in zip(hyps, refs))
    return 1.0 if c >= r else math.exp(1 - c / r)


def bp_not_capped(hyps, refs):
    c, r = sum(hyps), sum(closest(h, ls) for h, ls in zip(hyps, refs))
    return math.exp(1 - r / c) if c else 0.0


def bp_divides_by_zero(hyps, refs):
    c, r = sum(hyps), sum(closest(h, ls) for h, ls in zip(hyps, refs))
    return min(1.0, math.exp(1 - r / c))


def bp_empty_is_one(hyps, refs):
    c, r = sum(hyps), sum(closest(h, ls) for h, ls in zip(hyps, refs))
    return 1.0 if c == 0 or c >= r else math.exp(1 - r / c)


def bp_sorts_in_place(hyps, refs):
    for ls in refs:
        ls.sort()
    return corpus_brevity_penalty(hyps, refs)


def bp_streams_by_index(hyps, refs):               # right only with equal numbers of references
    r = 0
    for c, ls in zip(hyps, refs):
        candidates = [ls[j] for j in range(min(len(ls), len(refs[0])))]
        r += closest(c, candidates)
    return brevity_penalty(sum(hyps), r)


def bp_string(hyps, refs):
    return f"{corpus_brevity_penalty(hyps, refs):.3f}"


@pytest.mark.parametrize("implementation, hint", [
    (bp_per_sentence, C.PER_SENTENCE),
    (bp_corpus_closest, C.CORPUS_CLOSEST),
    (bp_shortest, C.SHORTEST),
    (bp_first, C.FIRST_LENGTH),
    (bp_average, C.AVERAGE),
    (bp_longest, C.LONGEST),
    (bp_tie_longer, C.TIE_LONGER),
    (bp_tie_first, C.TIE_FIRST),
    (bp_inverted, C.INVERTED),
    (bp_not_capped, C.NOT_CAPPED),
    (bp_divides_by_zero, C.EMPTY_CORPUS),
    (bp_divides_by_zero, "ZeroDivisionError (line"),
    (bp_empty_is_one, C.EMPTY_CORPUS),
    (bp_sorts_in_place, "changed its argument `ref_lengths` in place"),
    (bp_streams_by_index, C.VARIABLE_COUNTS),
    (bp_string, "return the penalty as a float"),
], ids=lambda x: getattr(x, "__name__", "hint"))
def test_buggy_brevity_penalties_fail_with_their_hint(implementation, hint):
    for _ in range(3):
        fails_with(checks.corpus_brevity_penalty, implementation, hint)


def test_no_hint_for_an_unknown_bug():
    def squared(hyps, refs):
        return corpus_brevity_penalty(hyps, refs) ** 2
    message = fails_with(checks.corpus_brevity_penalty, squared, "expected")
    assert "Likely bug" not in message


def bp_sorted_numpy(hyps, refs):                   # sorted copies, NumPy, float64 result
    c = np.sum(np.asarray(hyps))
    r = 0
    for h, ls in zip(hyps, refs):
        ordered = sorted(ls)
        gaps = np.abs(np.asarray(ordered) - h)
        r += ordered[int(np.argmin(gaps))]          # argmin: the first, i.e. the shorter
    return np.float64(1.0 if c >= r else (0.0 if c == 0 else np.exp(1 - r / c)))


def bp_tensor(hyps, refs):
    return torch.tensor(corpus_brevity_penalty(hyps, refs), dtype=torch.float64)


def bp_int_one(hyps, refs):                        # returns the int 1 when there is no penalty
    value = corpus_brevity_penalty(hyps, refs)
    return 1 if value == 1.0 else value


@pytest.mark.parametrize("implementation", [bp_sorted_numpy, bp_tensor, bp_int_one])
def test_correct_brevity_penalties_written_differently_pass(implementation):
    for _ in range(3):
        checks.corpus_brevity_penalty(implementation)
