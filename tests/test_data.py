"""Tests of scratchformer.data: vocabularies, the generated tasks and batching."""

from __future__ import annotations

import datetime
import json
import random

import pytest
import torch
from num2words import num2words

from scratchformer import data
from scratchformer.data import (
    ALPHABETS,
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIALS,
    TASKS,
    UNK_ID,
    BatchStream,
    CharVocab,
    PairDataset,
    UnknownCharactersError,
    collate,
    make_task,
)


def value(task, pair):
    """What must not appear in two splits: the string, the number or the date."""
    src, tgt = pair
    return src if task in ("copy", "reverse") else tgt


# --- make_task -----------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_make_task_is_deterministic(task):
    a, b = make_task(task, 300, 50, 50, seed=3), make_task(task, 300, 50, 50, seed=3)
    assert a == b
    other = make_task(task, 300, 50, 50, seed=4)
    assert other.train != a.train and other.test != a.test


@pytest.mark.parametrize("task", TASKS)
def test_splits_are_disjoint_by_value_and_have_the_asked_sizes(task):
    d = make_task(task, 2000, 300, 300, seed=1)
    splits = [{value(task, p) for p in split} for split in (d.train, d.valid, d.test)]
    # no duplicates inside a split either, so the sets have the full sizes
    assert [len(s) for s in splits] == [2000, 300, 300]
    assert not splits[0] & splits[1] and not splits[0] & splits[2] and not splits[1] & splits[2]


def test_disjointness_check_detects_a_shared_value():
    """The test above can fail: the same check on overlapping splits does."""
    d = make_task("de2num", 100, 10, 10)
    leaked = d.train + d.test[:1]
    assert {value("de2num", p) for p in leaked} & {value("de2num", p) for p in d.test}


@pytest.mark.parametrize("task", TASKS)
def test_eval_splits_do_not_depend_on_n_train_and_train_sets_nest(task):
    small, large = make_task(task, 100, 40, 60, seed=2), make_task(task, 1000, 40, 60, seed=2)
    assert small.test == large.test and small.valid == large.valid
    assert large.train[:100] == small.train


@pytest.mark.parametrize("task", TASKS)
def test_vocabularies_are_fixed_by_the_task(task):
    a, b = make_task(task, 20, 5, 5, seed=0), make_task(task, 500, 5, 5, seed=9)
    assert a.src_vocab == b.src_vocab and a.tgt_vocab == b.tgt_vocab
    assert a.src_vocab.chars == "".join(sorted(ALPHABETS[task][0]))
    assert a.tgt_vocab.chars == "".join(sorted(ALPHABETS[task][1]))


def test_copy_and_reverse_content():
    for task in ("copy", "reverse"):
        d = make_task(task, 500, 50, 50, min_len=2, max_len=6)
        for src, tgt in d.train + d.valid + d.test:
            assert 2 <= len(src) <= 6 and set(src) <= set("abcdefghij")
            assert tgt == (src if task == "copy" else src[::-1])
        lengths = {len(s) for s, _ in d.train}
        assert lengths == set(range(2, 7))


def test_de2num_content():
    d = make_task("de2num", 3000, 100, 100, max_value=5000)
    for src, tgt in d.train + d.valid + d.test:
        assert 0 <= int(tgt) <= 5000 and tgt == str(int(tgt))
        assert src == num2words(int(tgt), lang="de")
    assert data._german(84) == "vierundachtzig"


def test_de2num_alphabet_covers_every_number_up_to_9999():
    vocab = CharVocab(ALPHABETS["de2num"][0])
    missing = {c for n in range(10_000) for c in vocab.unknown(num2words(n, lang="de"))}
    assert not missing


def test_date_content():
    d = make_task("date", 2000, 100, 100)
    for src, tgt in d.train + d.valid + d.test:
        day = datetime.date.fromisoformat(tgt)
        assert datetime.date(1900, 1, 1) <= day <= datetime.date(2099, 12, 31)
        assert tgt[:4] in src  # every format carries the four-digit year
        assert src == " ".join(src.split())  # plain, single spaces
    # every locale and format is used
    assert any("März" in s for s, _ in d.train) and any("/" in s for s, _ in d.train)
    assert any(s[0].isupper() and "," in s for s, _ in d.train)  # en


def test_date_alphabet_covers_every_month_and_weekday():
    from babel.dates import format_date

    vocab = CharVocab(ALPHABETS["date"][0])
    day, missing = datetime.date(2024, 1, 1), set()
    while day.year == 2024:  # a leap year: every month, weekday and day number
        for locale, fmt in data.DATE_FORMATS:
            text = data._normalise_space(format_date(day, format=fmt, locale=locale))
            missing |= set(vocab.unknown(text))
        day += datetime.timedelta(days=1)
    assert not missing


def test_date_formats_are_unambiguous():
    from babel.dates import format_date

    for locale, fmt in data.DATE_FORMATS:
        text = format_date(datetime.date(2004, 3, 7), format=fmt, locale=locale)
        assert "2004" in text, (locale, fmt, text)
        assert "3/7" not in text and "7/3" not in text


def test_odd_white_space_becomes_a_plain_space():
    assert data._normalise_space("7\u202fmars\u00a02024\tx") == "7 mars 2024 x"


def test_unknown_task_lists_the_tasks():
    with pytest.raises(ValueError, match="unknown task 'fr2num'.*copy, reverse, de2num, date"):
        make_task("fr2num", 10)


@pytest.mark.parametrize("task, n, options, match", [
    ("de2num", 9981, {}, "only 10000 distinct numbers"),
    ("de2num", 81, {"max_value": 99}, "only 100 distinct numbers"),
    ("date", 80_000, {}, "only 73049 distinct dates"),
    ("copy", 91, {"min_len": 1, "max_len": 2}, "only 110 distinct strings"),
])
def test_too_many_examples_is_a_clear_error(task, n, options, match):
    with pytest.raises(ValueError, match=match):
        make_task(task, n, 10, 10, **options)


def test_exactly_all_values_is_allowed():
    d = make_task("de2num", 80, 10, 10, max_value=99)
    assert sorted(int(t) for _, t in d.train + d.valid + d.test) == list(range(100))


@pytest.mark.parametrize("kwargs, match", [
    ({"n_train": 0}, "n_train must be positive"),
    ({"n_train": -5}, "n_train must be a non-negative integer"),
    ({"n_train": 10, "n_test": 2.5}, "n_test must be a non-negative integer"),
    ({"n_train": 10, "length": 3}, "unknown option.*length.*min_len, max_len"),
    ({"n_train": 10, "min_len": 5, "max_len": 3}, "min_len <= max_len"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_task("copy", **kwargs)


def test_max_len_covers_the_encoded_sequences():
    d = make_task("copy", 100, 10, 10, min_len=3, max_len=7)
    assert d.max_len == 9  # <s> + 7 characters + </s>


# --- CharVocab -------------------------------------------------------------------------------


def test_vocab_layout():
    v = CharVocab("cabca")
    assert v.tokens == [*SPECIALS, "a", "b", "c"] and len(v) == 7
    assert (v.pad_id, v.bos_id, v.eos_id, v.unk_id) == (0, 1, 2, 3) == (
        PAD_ID, BOS_ID, EOS_ID, UNK_ID)
    assert v == CharVocab(["a", "b", "c"]) and v != CharVocab("abd")
    with pytest.raises(ValueError, match="single characters"):
        CharVocab(["ab", "c"])


@pytest.mark.parametrize("task", TASKS)
def test_encode_decode_round_trip(task):
    d = make_task(task, 200, 20, 20)
    for src, tgt in d.train + d.valid + d.test:
        for text, v in ((src, d.src_vocab), (tgt, d.tgt_vocab)):
            ids = v.encode(text, bos=True, eos=True)
            assert ids[0] == BOS_ID and ids[-1] == EOS_ID and len(ids) == len(text) + 2
            assert v.decode(ids) == text
            assert v.decode(torch.tensor(ids + [PAD_ID] * 3)) == text


def test_decode_stops_at_eos_and_drops_bos_and_pad():
    v = CharVocab("ab")
    a, b = v.encode("ab")
    assert v.decode([BOS_ID, a, PAD_ID, b, EOS_ID, a, a]) == "ab"
    assert v.decode([a, UNK_ID]) == "a<unk>"
    with pytest.raises(ValueError, match="outside this vocabulary"):
        v.decode([a, 99])
    with pytest.raises(ValueError, match="1-D"):
        v.decode(torch.zeros(2, 3, dtype=torch.long))


def test_unknown_characters_are_listed():
    v = CharVocab("abc")
    assert v.unknown("axΩbx") == ["x", "Ω"]
    with pytest.raises(UnknownCharactersError, match=r"unknown characters: 'x', 'Ω'") as e:
        v.encode("axΩbx")
    assert isinstance(e.value, ValueError) and e.value.characters == ["x", "Ω"]
    assert "'abc'" in str(e.value)
    assert v.encode("axb", unknown="unk") == [v.encode("a")[0], UNK_ID, v.encode("b")[0]]
    with pytest.raises(ValueError, match="'error' or 'unk'"):
        v.encode("a", unknown="skip")


def test_vocab_json_round_trip(tmp_path):
    v = make_task("date", 10, 1, 1).src_vocab
    assert CharVocab.from_json(json.loads(json.dumps(v.to_json()))) == v
    path = tmp_path / "vocab.json"
    v.save(path)
    assert CharVocab.load(path) == v
    assert "ä" in path.read_text(encoding="utf-8")  # written as UTF-8, not \\u escapes


def test_vocab_load_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        CharVocab.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"tokens": ["<pad>", ', encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read vocabulary file"):
        CharVocab.load(bad)
    bad.write_text(json.dumps({"tokens": ["a", "b"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="corrupt.*must start with"):
        CharVocab.load(bad)
    bad.write_text(json.dumps({"tokens": [*SPECIALS, "b", "a"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="corrupt.*unique and sorted"):
        CharVocab.load(bad)
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="corrupt.*'tokens' list"):
        CharVocab.load(bad)


# --- PairDataset and collate ------------------------------------------------------------------


def test_pair_dataset_items():
    d = make_task("reverse", 50, 5, 5)
    ds = PairDataset(d.train, d.src_vocab, d.tgt_vocab)
    assert len(ds) == 50
    for i, (src, tgt) in enumerate(d.train):
        s, t = ds[i]
        assert s.dtype == t.dtype == torch.long and s.dim() == t.dim() == 1
        assert s.tolist() == d.src_vocab.encode(src) + [EOS_ID]
        assert t.tolist() == [BOS_ID] + d.tgt_vocab.encode(tgt) + [EOS_ID]


def test_pair_dataset_names_the_bad_pair():
    v = CharVocab("abc")
    with pytest.raises(UnknownCharactersError, match="'z' in the target 'az' of pair 1"):
        PairDataset([("ab", "ab"), ("ab", "az")], v, v)


def test_collate_pads_on_the_right():
    items = [(torch.tensor([5, 2]), torch.tensor([1, 5, 6, 2])),
             (torch.tensor([4, 5, 6, 2]), torch.tensor([1, 2]))]
    src, tgt = collate(items)
    assert src.tolist() == [[5, 2, PAD_ID, PAD_ID], [4, 5, 6, 2]]
    assert tgt.tolist() == [[1, 5, 6, 2], [1, 2, PAD_ID, PAD_ID]]
    src, _ = collate(items, pad_id=-1)
    assert src[0].tolist() == [5, 2, -1, -1]
    with pytest.raises(ValueError, match="at least one item"):
        collate([])


# --- BatchStream ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def de2num_dataset():
    d = make_task("de2num", 1000, 10, 10)
    return PairDataset(d.train, d.src_vocab, d.tgt_vocab)


def test_batch_is_a_pure_function_of_the_step(de2num_dataset):
    a = BatchStream(de2num_dataset, 32, seed=5)
    b = BatchStream(de2num_dataset, 32, seed=5)
    steps = [1, 2, 40, 3 * len(a) + 7, 5, 2]  # across epochs and out of order
    for step in steps:
        sa, ta = a.batch(step)
        sb, tb = b.batch(step)
        assert torch.equal(sa, sb) and torch.equal(ta, tb)
    fresh = BatchStream(de2num_dataset, 32, seed=5)
    assert torch.equal(fresh.batch(2)[0], a.batch(2)[0])
    other = BatchStream(de2num_dataset, 32, seed=6)
    assert a.indices(1) != other.indices(1)


def test_batches_leave_the_global_random_state_alone(de2num_dataset):
    torch.manual_seed(0)
    random.seed(0)
    expected = torch.rand(3), random.random()
    torch.manual_seed(0)
    random.seed(0)
    stream = BatchStream(de2num_dataset, 32, seed=1)
    for step in (1, 50, 99):
        stream.batch(step)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


@pytest.mark.parametrize("batch_size, bucket", [(32, 50), (32, 4), (7, 3), (1000, 1), (999, 2)])
def test_every_example_once_per_epoch(de2num_dataset, batch_size, bucket):
    stream = BatchStream(de2num_dataset, batch_size, seed=0, bucket=bucket)
    assert len(stream) == -(-1000 // batch_size)
    orders = []
    for epoch in range(3):
        steps = range(epoch * len(stream) + 1, (epoch + 1) * len(stream) + 1)
        batches = [stream.indices(step) for step in steps]
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1000))
        assert sum(len(b) < batch_size for b in batches) <= 1
        orders.append(flat)
    if len(stream) > 1:
        assert orders[0] != orders[1]  # a new shuffle every epoch


def padding_fraction(stream):
    pad = total = 0
    for step in range(1, len(stream) + 1):
        src, tgt = stream.batch(step)
        pad += int((src == PAD_ID).sum() + (tgt == PAD_ID).sum())
        total += src.numel() + tgt.numel()
    return pad / total


def test_bucketing_reduces_padding(de2num_dataset):
    bucketed = padding_fraction(BatchStream(de2num_dataset, 32, bucket=50))
    random_batches = padding_fraction(BatchStream(de2num_dataset, 32, bucket=1))
    assert random_batches > 0.15
    assert bucketed < 0.5 * random_batches


def test_batch_contents_match_the_dataset(de2num_dataset):
    stream = BatchStream(de2num_dataset, 16, seed=3)
    src, tgt = stream.batch(4)
    for row, i in enumerate(stream.indices(4)):
        s, t = de2num_dataset[i]
        assert torch.equal(src[row, :len(s)], s) and (src[row, len(s):] == PAD_ID).all()
        assert torch.equal(tgt[row, :len(t)], t) and (tgt[row, len(t):] == PAD_ID).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": 8, "bucket": 0}, "bucket must be a positive integer"),
])
def test_batch_stream_bad_arguments(de2num_dataset, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchStream(de2num_dataset, **kwargs)


def test_steps_count_from_one(de2num_dataset):
    stream = BatchStream(de2num_dataset, 32)
    with pytest.raises(ValueError, match="step counts from 1"):
        stream.batch(0)


def test_bucketed_batches_come_in_random_order(de2num_dataset):
    stream = BatchStream(de2num_dataset, 32, bucket=50)  # one window: sorted, then shuffled
    widths = [stream.batch(step)[0].shape[1] for step in range(1, len(stream) + 1)]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
