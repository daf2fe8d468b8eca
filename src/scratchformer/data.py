"""Character vocabularies, the generated tasks (copy, reverse, de2num, date) and batching:
deterministic given a seed, splits disjoint by value, batches a pure function of the step."""

# Hand-written; no chapter exports here. Everything random draws from its own
# ``random.Random`` instance, never from Python's or torch's global generator, so building a
# dataset or a batch never changes the training run's random stream (bit-exact resume relies
# on it).

from __future__ import annotations

import datetime
import functools
import json
import math
import random
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

__all__ = [
    "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "SPECIALS", "TASKS", "ALPHABETS",
    "UnknownCharactersError", "CharVocab", "TaskData", "make_task", "PairDataset",
    "DATE_FORMATS", "collate", "BatchStream",
]

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
TASKS = ("copy", "reverse", "de2num", "date")

# The alphabet of each task, fixed in advance (never read off the sampled data), so that a
# vocabulary does not depend on the seed or on n_train: (source characters, target characters).
_LETTERS = "abcdefghij"  # copy / reverse
_DIGITS = "0123456789"
# num2words(n, lang="de") for 0 <= n <= 999_999 writes only these (ß: dreißig, ö: zwölf,
# ü: fünf); one million becomes "eine Million", with a space and a capital.
_GERMAN = "abcdefghilnrstuvwzßöü"
# babel's month and weekday names in en, de, fr (long and full formats, en medium), digits
# and the separators " ,./"; any other white space babel emits is normalised to " ".
_DATE = " ,./0123456789ADFJMNOSTWabcdefghijklmnoprstuvwyzäéû"
ALPHABETS: dict[str, tuple[str, str]] = {
    "copy": (_LETTERS, _LETTERS),
    "reverse": (_LETTERS, _LETTERS),
    "de2num": (_GERMAN, _DIGITS),
    "date": (_DATE, _DIGITS + "-"),
}

# (locale, babel format) pairs of the date task: every one carries a four-digit year and is
# unambiguous (no en "3/7/24": month/day order and two-digit years are ambiguous).
DATE_FORMATS = (
    ("en", "medium"), ("en", "long"), ("en", "full"),        # Mar 7, 2024 / ... / Thursday, ...
    ("de", "dd.MM.yyyy"), ("de", "long"), ("de", "full"),    # 07.03.2024 / 7. März 2024 / ...
    ("fr", "dd/MM/yyyy"), ("fr", "long"), ("fr", "full"),    # 07/03/2024 / 7 mars 2024 / ...
)
_FIRST_DATE, _LAST_DATE = datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)


class UnknownCharactersError(ValueError):
    """Text holds characters that the vocabulary does not have; ``.characters`` lists them."""

    def __init__(self, characters: Sequence[str], vocab_chars: str, where: str = ""):
        self.characters = list(characters)
        shown = ", ".join(repr(c) for c in self.characters)
        where = f" in {where}" if where else ""
        super().__init__(f"unknown characters: {shown}{where} (the vocabulary of this run "
                         f"has: {vocab_chars!r})")


class CharVocab:
    """Characters -> ids; ids 0..3 are SPECIALS (``<pad>``, ``<s>``, ``</s>``, ``<unk>``).

    The remaining ids are the sorted unique characters given to the constructor. Two
    vocabularies are equal when their token lists are equal.
    """

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"CharVocab takes single characters, got {bad[:5]!r}; pass a "
                             f"string such as 'abc' or a list of one-character strings")
        self.tokens: list[str] = [*SPECIALS, *sorted(set(chars))]
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and self.tokens == other.tokens

    __hash__ = None  # equal by content, so not hashable

    def __repr__(self) -> str:
        return f"CharVocab({self.chars!r})"

    @property
    def chars(self) -> str:
        """The ordinary characters (everything after the specials), as one string."""
        return "".join(self.tokens[len(SPECIALS):])

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of ``text`` missing from the vocabulary, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self._ids))

    def encode(self, text: str, *, bos: bool = False, eos: bool = False,
               unknown: str = "error") -> list[int]:
        """``text`` -> ids (one per character), optionally framed by ``<s>`` / ``</s>``.

        ``unknown="error"`` raises :class:`UnknownCharactersError` listing the characters the
        vocabulary lacks; ``unknown="unk"`` maps them to ``<unk>`` instead.
        """
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown={unknown!r}: use 'error' or 'unk'")
        missing = self.unknown(text)
        if missing and unknown == "error":
            raise UnknownCharactersError(missing, self.chars)
        ids = [self._ids.get(c, UNK_ID) for c in text]
        return [BOS_ID] * bos + ids + [EOS_ID] * eos

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        """ids (a list or a 1-D tensor) -> text: stops at the first ``</s>``, drops ``<s>`` and
        ``<pad>``; ``<unk>`` is written as the string ``"<unk>"``."""
        if isinstance(ids, Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes one sequence (a 1-D tensor), got shape "
                                 f"{tuple(ids.shape)}; decode each row of a batch separately")
            ids = ids.tolist()
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"id {i} is outside this vocabulary (0..{len(self.tokens) - 1})")
            if i == EOS_ID:
                break
            if i not in (BOS_ID, PAD_ID):
                out.append(self.tokens[i])
        return "".join(out)

    def to_json(self) -> dict:
        """A JSON-ready dict: ``{"type": "CharVocab", "tokens": [...]}``."""
        return {"type": "CharVocab", "tokens": list(self.tokens)}

    @classmethod
    def from_json(cls, d: dict) -> CharVocab:
        """Inverse of :meth:`to_json`; a ValueError says what is wrong with ``d``."""
        if not isinstance(d, dict) or not isinstance(d.get("tokens"), list):
            raise ValueError("not a CharVocab: expected a JSON object with a 'tokens' list "
                             "(as written by CharVocab.to_json)")
        tokens = d["tokens"]
        if tuple(tokens[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"not a CharVocab: the tokens must start with {SPECIALS}, "
                             f"got {tokens[:len(SPECIALS)]!r}")
        chars = tokens[len(SPECIALS):]
        vocab = cls(chars)  # validates single characters
        if vocab.tokens != tokens:
            raise ValueError("not a CharVocab: the characters must be unique and sorted")
        return vocab

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as UTF-8 JSON."""
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False) + "\n",
                              encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharVocab:
        """Read a file written by :meth:`save`; a missing or corrupt file is a clear ValueError."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"vocabulary file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read vocabulary file {str(path)!r}: {e}; write it again "
                             f"with CharVocab.save") from None
        try:
            return cls.from_json(d)
        except ValueError as e:
            raise ValueError(f"vocabulary file {str(path)!r} is corrupt: {e}") from None


@dataclass
class TaskData:
    """The three splits of a task (lists of (source, target) strings) and its vocabularies.

    The vocabularies are fixed per task (from its alphabet, :data:`ALPHABETS`), so they do
    not depend on the seed or the split sizes.
    """

    task: str
    train: list[tuple[str, str]]
    valid: list[tuple[str, str]]
    test: list[tuple[str, str]]
    src_vocab: CharVocab
    tgt_vocab: CharVocab

    @property
    def max_len(self) -> int:
        """The longest encoded sequence of any split: source + ``</s>`` or ``<s>`` + target +
        ``</s>``. A model's ``max_len`` must be at least this."""
        pairs = self.train + self.valid + self.test
        return max((max(len(s) + 1, len(t) + 2) for s, t in pairs), default=0)


# --- generators: each returns `total` distinct values in a seeded random order -------------

_OPTIONS = {"copy": {"min_len": 3, "max_len": 10}, "reverse": {"min_len": 3, "max_len": 10},
            "de2num": {"max_value": 9999}, "date": {}}


@functools.cache
def _german(n: int) -> str:
    from num2words import num2words

    return num2words(n, lang="de")


def _normalise_space(text: str) -> str:
    """Every white-space character (no-break space U+00A0, narrow no-break space U+202F, ...)
    becomes a plain space, so a new CLDR release cannot grow the vocabulary."""
    return "".join(" " if c.isspace() or unicodedata.category(c) == "Zs" else c for c in text)


def _strings(rng: random.Random, total: int, min_len: int, max_len: int) -> list[str]:
    """`total` distinct strings over the letters: a uniform length, then uniform letters."""
    k = len(_LETTERS)
    space = sum(k ** n for n in range(min_len, max_len + 1))
    if total > space:
        raise ValueError(f"copy/reverse with lengths {min_len}..{max_len} has only {space} "
                         f"distinct strings, but n_train + n_valid + n_test = {total}; ask "
                         f"for fewer examples or raise max_len")
    seen: dict[str, None] = {}
    tries = 0
    while len(seen) < total:
        tries += 1
        if tries > 50 * total + 1000:
            raise ValueError(f"could not draw {total} distinct strings of lengths "
                             f"{min_len}..{max_len} (too close to all {space}); ask for fewer "
                             f"examples or raise max_len")
        n = rng.randint(min_len, max_len)
        seen.setdefault("".join(rng.choice(_LETTERS) for _ in range(n)))
    return list(seen)


def _copy_pairs(rng, total, *, min_len, max_len, reverse=False):
    if not (isinstance(min_len, int) and isinstance(max_len, int) and 1 <= min_len <= max_len):
        raise ValueError(f"need integers 1 <= min_len <= max_len, got min_len={min_len!r}, "
                         f"max_len={max_len!r}")
    return [(s, s[::-1] if reverse else s) for s in _strings(rng, total, min_len, max_len)]


def _de2num_pairs(rng, total, *, max_value):
    if not isinstance(max_value, int) or not 0 <= max_value <= 999_999:
        raise ValueError(f"max_value must be an integer in 0..999999 (one million is written "
                         f"with a space and a capital), got {max_value!r}")
    if total > max_value + 1:
        raise ValueError(f"de2num has only {max_value + 1} distinct numbers (0..{max_value}), "
                         f"but n_train + n_valid + n_test = {total}; ask for fewer examples "
                         f"or raise max_value")
    numbers = list(range(max_value + 1))
    rng.shuffle(numbers)  # a full permutation: its prefixes do not depend on `total`
    return [(_german(n), str(n)) for n in numbers[:total]]


def _date_pairs(rng, total, seed):
    from babel.dates import format_date

    days = (_LAST_DATE - _FIRST_DATE).days + 1
    if total > days:
        raise ValueError(f"date has only {days} distinct dates ({_FIRST_DATE}..{_LAST_DATE}), "
                         f"but n_train + n_valid + n_test = {total}; ask for fewer examples")
    offsets = list(range(days))
    rng.shuffle(offsets)  # a full permutation: its prefixes do not depend on `total`
    formats = random.Random(f"date-formats:{seed}")  # one format per date, in the same order
    pairs = []
    for offset in offsets[:total]:
        day = _FIRST_DATE + datetime.timedelta(days=offset)
        locale, fmt = formats.choice(DATE_FORMATS)
        text = _normalise_space(format_date(day, format=fmt, locale=locale))
        pairs.append((text, day.isoformat()))
    return pairs


def make_task(task: str, n_train: int, n_valid: int = 500, n_test: int = 500, seed: int = 0,
              **options) -> TaskData:
    """Generate a task's train/valid/test pairs, disjoint by value, deterministic in the arguments.

    Tasks (``options`` with their defaults):

    - ``copy`` / ``reverse`` (``min_len=3, max_len=10``): strings over ``"abcdefghij"``, a
      uniform length then uniform letters; the target is the string, or reversed.
    - ``de2num`` (``max_value=9999``, at most 999999): ``num2words(n, lang="de") -> str(n)``
      for distinct n in 0..max_value, e.g. ``"vierundachtzig" -> "84"``.
    - ``date``: distinct dates 1900-01-01..2099-12-31, each written with babel in one
      :data:`DATE_FORMATS` (en/de/fr, four-digit years; white space normalised to " ")
      -> ISO ``"YYYY-MM-DD"``.

    One seeded stream of distinct values is cut into test, valid, train, in that order: the
    test and valid splits do not depend on ``n_train``, and a smaller training set is a prefix
    of a larger one (learning curves compare like with like). No value (string, number, date)
    is in two splits. Raises ValueError for an unknown task or option, a non-positive or
    negative size, or more examples than the task has distinct values.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    for name, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if n_train == 0:
        raise ValueError("n_train must be positive")
    unknown = sorted(set(options) - set(_OPTIONS[task]))
    if unknown:
        allowed = ", ".join(_OPTIONS[task]) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for task {task!r}; "
                         f"its options: {allowed}")
    opts = {**_OPTIONS[task], **options}
    rng = random.Random(f"{task}:{seed}")  # string seeds hash with SHA-512: stable everywhere
    total = n_train + n_valid + n_test
    if task in ("copy", "reverse"):
        pairs = _copy_pairs(rng, total, reverse=task == "reverse", **opts)
    elif task == "de2num":
        pairs = _de2num_pairs(rng, total, **opts)
    else:
        pairs = _date_pairs(rng, total, seed)
    src_chars, tgt_chars = ALPHABETS[task]
    data = TaskData(task, train=pairs[n_test + n_valid:], valid=pairs[n_test:n_test + n_valid],
                    test=pairs[:n_test], src_vocab=CharVocab(src_chars),
                    tgt_vocab=CharVocab(tgt_chars))
    # Guard against a library release that writes characters outside the fixed alphabet.
    for vocab, side in ((data.src_vocab, 0), (data.tgt_vocab, 1)):
        missing = vocab.unknown("".join(sorted({c for p in pairs for c in p[side]})))
        if missing:
            raise ValueError(f"task {task!r} produced characters outside its fixed alphabet: "
                             f"{missing!r} (a different num2words/babel release?)")
    return data


# --- tensors and batches ----------------------------------------------------------------


class PairDataset(torch.utils.data.Dataset):
    """(source, target) string pairs encoded once, up front.

    Item i -> ``(src_ids, tgt_ids)``: LongTensors ``(S,)`` = characters + ``</s>`` and
    ``(T,)`` = ``<s>`` + characters + ``</s>``. Unknown characters raise
    :class:`UnknownCharactersError` at construction, naming the pair.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], src_vocab: CharVocab,
                 tgt_vocab: CharVocab):
        self.pairs = list(pairs)
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.src: list[Tensor] = []
        self.tgt: list[Tensor] = []
        for k, (s, t) in enumerate(self.pairs):
            for text, vocab, side in ((s, src_vocab, "source"), (t, tgt_vocab, "target")):
                if vocab.unknown(text):
                    raise UnknownCharactersError(vocab.unknown(text), vocab.chars,
                                                 f"the {side} {text!r} of pair {k}")
            self.src.append(torch.tensor(src_vocab.encode(s, eos=True), dtype=torch.long))
            self.tgt.append(torch.tensor(tgt_vocab.encode(t, bos=True, eos=True),
                                         dtype=torch.long))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.src[i], self.tgt[i]


def collate(items: Sequence[tuple[Tensor, Tensor]], pad_id: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """Items of a :class:`PairDataset` -> ``(src (B, S_max), tgt (B, T_max))``, right-padded
    with ``pad_id``."""
    if len(items) == 0:
        raise ValueError("collate needs at least one item")
    src = pad_sequence([s for s, _ in items], batch_first=True, padding_value=pad_id)
    tgt = pad_sequence([t for _, t in items], batch_first=True, padding_value=pad_id)
    return src, tgt


class BatchStream:
    """Length-bucketed, shuffled batches as a pure function of the step: resumable by construction.

    Epoch e (steps ``e * len(self) + 1 ..``) shuffles the indices with a generator seeded by
    ``(seed, e)`` only, cuts them into windows of ``bucket * batch_size``, sorts each window
    by (source length, target length), cuts it into batches and shuffles the batches. Each
    example appears exactly once per epoch; only the last batch may be smaller. Similar
    lengths share a batch, so there is less padding; ``bucket=1`` is plain random batching.
    No global random state is read or changed.
    """

    def __init__(self, dataset: PairDataset, batch_size: int, *, seed: int = 0,
                 bucket: int = 50):
        for name, v in (("batch_size", batch_size), ("bucket", bucket)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if len(dataset) == 0:
            raise ValueError("BatchStream needs a non-empty dataset")
        self.dataset, self.batch_size, self.seed, self.bucket = dataset, batch_size, seed, bucket
        self._lengths = [(len(s), len(t)) for s, t in (dataset[i] for i in range(len(dataset)))]
        self._cached: tuple[int, list[list[int]]] | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def _epoch(self, epoch: int) -> list[list[int]]:
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = random.Random(f"BatchStream:{self.seed}:{epoch}")
        order = list(range(len(self.dataset)))
        rng.shuffle(order)
        window, batches = self.bucket * self.batch_size, []
        for w in range(0, len(order), window):
            part = sorted(order[w:w + window], key=self._lengths.__getitem__)
            batches += [part[b:b + self.batch_size] for b in range(0, len(part), self.batch_size)]
        rng.shuffle(batches)
        self._cached = (epoch, batches)
        return batches

    def indices(self, step: int) -> list[int]:
        """The dataset indices of the batch at ``step`` (counting from 1)."""
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise ValueError(f"step counts from 1, got {step!r}")
        epoch, k = divmod(step - 1, len(self))
        return list(self._epoch(epoch)[k])

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """The batch at ``step`` (counting from 1): ``(src (B, S_max), tgt (B, T_max))``,
        padded with ``<pad>``; epoch = ``(step - 1) // len(self)``."""
        return collate([self.dataset[i] for i in self.indices(step)])
