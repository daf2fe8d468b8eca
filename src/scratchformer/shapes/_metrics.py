"""Chapter 14: the arguments of ``scratchformer.metrics``."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

__all__ = [
    "BLEU_TOKENIZERS",
    "require_ngram_arguments",
    "require_length_lists",
    "require_tokenizer",
    "references_per_sentence",
    "references_of_sentence",
]


# --- chapter 14 ---
# Evaluation (scratchformer.metrics): token lists and n-gram orders for the counts, length lists
# for the brevity penalty, and corpora of strings with one or more references per sentence.

BLEU_TOKENIZERS = ("13a", "intl", "char", "none")


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _require_tokens(name: str, tokens) -> None:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise ValueError(f"{name} must be a list of tokens (strings), got {type(tokens).__name__}"
                         + (": split the sentence into tokens first." if isinstance(tokens, str)
                            else "."))
    bad = next((t for t in tokens if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"{name} must hold strings, got an item of type {type(bad).__name__}.")


def require_ngram_arguments(hypothesis, references, n) -> None:
    """A token list, a non-empty list of token lists and an order ``n >= 1``."""
    _require_tokens("hypothesis", hypothesis)
    if isinstance(references, str) or not isinstance(references, Sequence) or not references:
        raise ValueError("references must be a non-empty list of token lists (one per reference).")
    for j, reference in enumerate(references):
        _require_tokens(f"references[{j}]", reference)
    if not _is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}.")


def require_length_lists(hyp_lengths, ref_lengths) -> None:
    """``hyp_lengths``: one int >= 0 per sentence; ``ref_lengths``: per sentence a non-empty list of
    ints >= 0 (the lengths of its references); the same number of sentences."""
    for name, value in (("hyp_lengths", hyp_lengths), ("ref_lengths", ref_lengths)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"{name} must be a list, got {type(value).__name__}.")
    if len(hyp_lengths) != len(ref_lengths):
        raise ValueError(f"hyp_lengths has {len(hyp_lengths)} sentences, ref_lengths "
                         f"{len(ref_lengths)}: one entry per sentence in each.")
    for i, (c, lengths) in enumerate(zip(hyp_lengths, ref_lengths)):
        if not _is_int(c) or c < 0:
            raise ValueError(f"hyp_lengths[{i}] must be an int >= 0, got {c!r}.")
        if not isinstance(lengths, Sequence) or not lengths:
            raise ValueError(f"ref_lengths[{i}] must be a non-empty list of the lengths of sentence "
                             f"{i}'s references, got {lengths!r}.")
        if not all(_is_int(r) and r >= 0 for r in lengths):
            raise ValueError(f"ref_lengths[{i}] must hold ints >= 0, got {list(lengths)!r}.")


def require_tokenizer(tokenize) -> None:
    if tokenize not in BLEU_TOKENIZERS:
        raise ValueError(f"tokenize must be one of {BLEU_TOKENIZERS}, got {tokenize!r}.")


def references_of_sentence(hypothesis, references) -> list[str]:
    """One sentence: a hypothesis string and a reference string or a non-empty list of them ->
    the list of references."""
    if not isinstance(hypothesis, str):
        raise ValueError(f"hypothesis must be a string, got {type(hypothesis).__name__}.")
    refs = [references] if isinstance(references, str) else references
    if not isinstance(refs, Sequence) or not refs or not all(isinstance(r, str) for r in refs):
        raise ValueError("references must be a string or a non-empty list of strings.")
    return list(refs)


def references_per_sentence(hypotheses, references) -> list[list[str]]:
    """A corpus: ``hypotheses``, a non-empty list of strings; ``references``, either one string
    per sentence or one non-empty list of strings per sentence (sentences may have different
    numbers of references). Returns the references as one list per sentence."""
    if isinstance(hypotheses, str) or not isinstance(hypotheses, Sequence):
        raise ValueError(f"hypotheses must be a list of strings, got {type(hypotheses).__name__}.")
    if not hypotheses:
        raise ValueError("hypotheses is empty: a score needs at least one sentence.")
    if not all(isinstance(h, str) for h in hypotheses):
        raise ValueError("hypotheses must hold strings (detokenised sentences).")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a list, got {type(references).__name__}.")
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: give one reference "
            "(or one list of references) per hypothesis. sacrebleu's layout, one stream per "
            "reference, is the transpose: use list(zip(*streams)) for a full set of streams.")
    if all(isinstance(r, str) for r in references):
        return [[r] for r in references]
    out = []
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError("references must be all strings (one per sentence) or all lists of "
                             f"strings (several per sentence); references[{i}] is "
                             f"{type(refs).__name__}.")
        if not refs:
            raise ValueError(f"sentence {i} has no reference.")
        if not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}] must hold strings.")
        out.append(list(refs))
    return out
