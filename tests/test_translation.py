"""scratchformer.translation: the verified download (served from a local HTTP server), the
project's own sample, the subword vocabulary, the task, checkpoint averaging and BLEU."""

import functools
import gzip
import hashlib
import http.server
import json
import socket
import threading
import urllib.error

import pytest
import sacrebleu
import torch

from scratchformer import data, translation
from scratchformer.data import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from scratchformer.translation import DataError

# ---- a local server for the download tests ---------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """The sample written into ``served/``, served on 127.0.0.1: (base URL, hashes, dir)."""
    root = tmp_path / "served"
    hashes = translation.write_sample(root)
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", hashes, root
    server.shutdown()
    server.server_close()


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"            # nothing listens there any more


def test_download_verifies_and_stores(served, tmp_path):
    base, hashes, root = served
    target = tmp_path / "data"
    out = translation.fetch_multi30k(target, base_url=base, hashes=hashes, progress=False)
    assert out == target
    for name, digest in hashes.items():
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in target.iterdir()) == sorted(hashes)   # no temp files left


def test_tampered_file_is_rejected_and_not_kept(served, tmp_path):
    base, hashes, root = served
    (root / "val.en.gz").write_bytes(gzip.compress(b"A tampered line.\n"))
    target = tmp_path / "data"
    with pytest.raises(DataError) as info:
        translation.fetch_multi30k(target, base_url=base, hashes=hashes, progress=False)
    message = str(info.value)
    assert "val.en.gz" in message and base + "val.en.gz" in message
    assert hashes["val.en.gz"] in message                                 # expected digest
    actual = hashlib.sha256((root / "val.en.gz").read_bytes()).hexdigest()
    assert actual in message                                              # actual digest
    assert "--data-dir" in message and str(target) in message            # manual instructions
    assert not (target / "val.en.gz").exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".")]   # no partial file


def test_unreachable_server_gives_instructions(tmp_path):
    base = _closed_port_url()
    with pytest.raises(DataError) as info:
        translation.fetch_multi30k(tmp_path / "d", base_url=base, progress=False, timeout=5)
    message = str(info.value)
    assert "could not download train.de.gz" in message
    for name in translation.MULTI30K_SHA256:                             # every URL listed
        assert base + name in message
    assert "--data-dir" in message


def test_cached_files_need_no_network(served, tmp_path):
    base, hashes, root = served
    target = tmp_path / "data"
    translation.fetch_multi30k(target, base_url=base, hashes=hashes, progress=False)
    out = translation.fetch_multi30k(target, base_url=_closed_port_url(), hashes=hashes,
                                     progress=False, timeout=5)           # offline path
    assert translation.load_split(out, "test") == translation.sample_pairs()["test"]


def test_corrupt_cached_file_is_set_aside_and_fetched_again(served, tmp_path):
    base, hashes, root = served
    target = tmp_path / "data"
    translation.fetch_multi30k(target, base_url=base, hashes=hashes, progress=False)
    (target / "train.en.gz").write_bytes(b"garbage")
    translation.fetch_multi30k(target, base_url=base, hashes=hashes, progress=False)
    assert hashlib.sha256((target / "train.en.gz").read_bytes()).hexdigest() == \
        hashes["train.en.gz"]
    assert (target / "train.en.gz.bad").read_bytes() == b"garbage"


def test_interrupted_download_leaves_no_file(served, tmp_path, monkeypatch):
    base, hashes, root = served

    class Broken:
        headers = {"Content-Length": "1000"}

        def __init__(self):
            self.calls = 0

        def read(self, n):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt           # Ctrl-C in the middle of the file
            return b"x" * 10

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(translation.urllib.request, "urlopen", lambda *a, **k: Broken())
    target = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        translation.fetch_multi30k(target, base_url=base, hashes=hashes, progress=False)
    assert list(target.iterdir()) == []


def test_connection_dropped_mid_file(served, tmp_path, monkeypatch):
    base, hashes, root = served

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(translation.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match="connection reset"):
        translation.fetch_multi30k(tmp_path / "d", base_url=base, hashes=hashes,
                                   progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_file_url_works(tmp_path):
    source = tmp_path / "source"
    hashes = translation.write_sample(source)
    out = translation.fetch_multi30k(tmp_path / "d", base_url=source.as_uri(),
                                     hashes=hashes, progress=False)
    assert translation.load_split(out, "valid") == translation.sample_pairs()["valid"]


def test_pinned_constants():
    assert "a3d2e0d26b56f3846f66a952536ffed4e401d05a" in translation.MULTI30K_BASE_URL
    names = [n for pair in translation.MULTI30K_FILES.values() for n in pair]
    assert sorted(names) == sorted(translation.MULTI30K_SHA256)
    assert all(len(h) == 64 for h in translation.MULTI30K_SHA256.values())


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCHFORMER_DATA", str(tmp_path / "x"))
    assert translation.default_data_dir() == tmp_path / "x"
    monkeypatch.delenv("SCRATCHFORMER_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert translation.default_data_dir() == tmp_path / "cache" / "scratchformer"


# ---- the sample ------------------------------------------------------------------------------

def test_sample_is_deterministic_and_aligned(tmp_path):
    first = translation.write_sample(tmp_path / "a")
    second = translation.write_sample(tmp_path / "b")
    assert first == second                                    # same bytes, same digests
    for split, n in translation.SAMPLE_SIZES.items():
        pairs = translation.load_split(tmp_path / "a", split)
        assert len(pairs) == n
    pairs = translation.sample_pairs()
    train = set(pairs["train"])
    assert not train & set(pairs["test"]) and not train & set(pairs["valid"])
    assert not set(pairs["valid"]) & set(pairs["test"])
    words = {w for _, en in pairs["train"] for w in en.split()}
    assert all(w in words for _, en in pairs["test"] for w in en.split())   # unseen combos


def test_sample_grammar():
    sentence = translation._sentence(("Mann", "m", "man"), ("", ""), ("fährt", "rides"),
                                     ("Fahrrad", "n", "bicycle"), ("rot", "red"),
                                     ("auf der Straße", "on the street"))
    assert sentence == ("Ein Mann fährt ein rotes Fahrrad auf der Straße.",
                        "A man rides a red bicycle on the street.")
    old = translation._sentence(("Frau", "f", "woman"), ("alt", "old"), ("hält", "holds"),
                                ("Ball", "m", "ball"), ("blau", "blue"), ("im Park", "x"))
    assert old[0].startswith("Eine alte Frau hält einen blauen Ball")
    assert old[1].startswith("An old woman holds a blue ball")


def test_load_split_errors(tmp_path):
    with pytest.raises(DataError, match="missing"):
        translation.load_split(tmp_path, "train")
    translation.write_sample(tmp_path)
    (tmp_path / "val.de.gz").write_bytes(gzip.compress(b"Nur eine Zeile.\n"))
    with pytest.raises(DataError, match="not aligned"):
        translation.load_split(tmp_path, "valid")
    with pytest.raises(ValueError, match="unknown split"):
        translation.load_split(tmp_path, "dev")


# ---- the subword vocabulary ------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_vocab():
    pairs = translation.sample_pairs()["train"]
    return translation.train_bpe([t for p in pairs for t in p], 500)


TRICKY = ["Ein Mädchen trägt eine grüne Mütze; Größe: 3½ – „schön“!", "Straße  mit  Doppel",
          " leading and trailing ", "日本語 € ©", "tab\there", "Ümlaut ÄÖÜ äöü ß"]


def test_bpe_round_trips(sample_vocab):
    pairs = translation.sample_pairs()
    for texts in pairs.values():
        for pair in texts:
            for text in pair:
                assert sample_vocab.decode(sample_vocab.encode(text)) == text
    for text in TRICKY:                       # byte fallback: nothing is unknown
        assert sample_vocab.unknown(text) == []
        ids = sample_vocab.encode(text)
        assert UNK_ID not in ids
        assert sample_vocab.decode(ids) == text


def test_bpe_matches_char_vocab_interface(sample_vocab):
    v = sample_vocab
    assert (v.pad_id, v.bos_id, v.eos_id, v.unk_id) == (PAD_ID, BOS_ID, EOS_ID, UNK_ID)
    assert len(v) == 500 and isinstance(v.chars, str) and "ß" in v.chars
    ids = v.encode("Ein Mann.", bos=True, eos=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert v.decode(ids + [7, 8]) == "Ein Mann."                 # stops at </s>
    assert v.decode(torch.tensor([BOS_ID] + ids[1:-1] + [PAD_ID])) == "Ein Mann."
    with pytest.raises(ValueError, match="outside"):
        v.decode([len(v)])
    with pytest.raises(ValueError, match="1-D"):
        v.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown="):
        v.encode("x", unknown="drop")
    dataset = data.PairDataset(translation.sample_pairs()["test"][:5], v, v)   # drop-in
    assert dataset[0][1][0] == BOS_ID


def test_bpe_json_round_trip_and_determinism(sample_vocab):
    d = json.loads(json.dumps(sample_vocab.to_json()))
    assert d["type"] == "BPEVocab"
    assert translation.BPEVocab.from_json(d) == sample_vocab
    pairs = translation.sample_pairs()["train"]
    again = translation.train_bpe([t for p in pairs for t in p], 500)
    assert again == sample_vocab                                 # deterministic
    other = translation.train_bpe([t for p in pairs for t in p], 450)
    assert other != sample_vocab
    with pytest.raises(ValueError, match="not a BPEVocab"):
        translation.BPEVocab.from_json({"type": "CharVocab", "tokens": []})
    with pytest.raises(ValueError, match="not a BPEVocab"):
        translation.BPEVocab.from_json({"type": "BPEVocab", "model": "bm90IGEgbW9kZWw="})


def test_sample_task(tmp_path):
    task = translation.multi30k_task(tmp_path, sample=True)
    assert task.task == "multi30k-sample"
    assert task.src_vocab is task.tgt_vocab                     # one shared vocabulary
    assert len(task.src_vocab) == translation.RECIPES["multi30k-sample"]["vocab_size"]
    assert task.train == translation.sample_pairs()["train"]
    assert (tmp_path / "multi30k-sample" / "train.de.gz").is_file()
    v = task.src_vocab
    longest = max(max(len(v.encode(de)) + 1, len(v.encode(en)) + 2)
                  for de, en in task.train + task.valid + task.test)
    assert task.max_len == longest
    assert task.max_len <= translation.RECIPES["multi30k-sample"]["max_len"]


def test_recipes_have_the_training_keys():
    from scratchformer.training import RECIPES
    keys = set(RECIPES["copy"]) | {"vocab_size", "accumulate", "average_last"}
    for recipe in translation.RECIPES.values():
        assert set(recipe) == keys


# ---- checkpoint averaging --------------------------------------------------------------------

def test_average_checkpoints(tmp_path):
    states = [{"w": torch.full((2, 3), float(k)), "h": torch.full((2,), float(k),
                                                                  dtype=torch.bfloat16),
               "steps": torch.tensor(10 * k)} for k in range(1, 5)]
    before = [{k: v.clone() for k, v in s.items()} for s in states]
    out = translation.average_checkpoints(states)
    assert torch.equal(out["w"], torch.full((2, 3), 2.5))
    assert out["h"].dtype == torch.bfloat16 and torch.equal(out["h"].float(),
                                                           torch.full((2,), 2.5))
    assert out["steps"].dtype == torch.int64 and int(out["steps"]) == 40   # copied, last
    for s, b in zip(states, before):                                      # inputs unchanged
        assert all(torch.equal(s[k], b[k]) for k in s)
    from safetensors.torch import save_file
    paths = []
    for k, s in enumerate(states):
        paths.append(tmp_path / f"m{k}.safetensors")
        save_file(s, paths[-1])
    torch.save({"model": states[0]}, tmp_path / "c.pt")
    from_files = translation.average_checkpoints([tmp_path / "c.pt"] + paths[1:])
    assert torch.equal(from_files["w"], out["w"])
    with pytest.raises(ValueError, match="different parameters"):
        translation.average_checkpoints([states[0], {"w": states[1]["w"]}])
    with pytest.raises(ValueError, match="at least one"):
        translation.average_checkpoints([])


# ---- BLEU ------------------------------------------------------------------------------------

def test_bleu_scores():
    hyps = ["A man rides a red bicycle on the street.", "a girl holds a Ball."]
    refs = ["A man rides a red bicycle on the street.", "A girl holds a blue ball."]
    out = translation.bleu_scores(hyps, refs)
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert out["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    lowered = sacrebleu.corpus_bleu([h.lower() for h in hyps], [[r.lower() for r in refs]])
    assert out["tokenised_bleu"] == pytest.approx(lowered.score)
    assert out["tokenised_bleu"] > out["bleu"]                  # case no longer counts
    assert out["n"] == 2
    with pytest.raises(ValueError, match="references"):
        translation.bleu_scores(hyps, refs[:1])


# ---- the training helpers ----------------------------------------------------------------------

def test_pick_precision_on_cpu():
    assert translation.pick_precision("cpu") == "fp32"


def test_micro_batches_give_the_same_step(sample_vocab):
    from scratchformer.training import model_from_recipe, train_step
    recipe = dict(translation.RECIPES["multi30k-sample"], d_model=16, heads=2, d_ff=32,
                  dropout=0.0, layers=1)
    pairs = data.PairDataset(translation.sample_pairs()["train"][:10], sample_vocab,
                             sample_vocab)
    batch = data.collate([pairs[i] for i in range(10)])
    parts = translation.micro_batches(batch, 3)
    assert [len(s) for s, _ in parts] == [4, 3, 3]
    assert len(translation.micro_batches(batch, 20)) == 10          # none empty
    losses = []
    for micro in ([batch], parts):
        torch.manual_seed(0)
        model = model_from_recipe(recipe, len(sample_vocab), len(sample_vocab))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        losses.append(train_step(model, micro, optimizer)["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_train_translation_averages_the_last_evaluations(tmp_path, monkeypatch):
    task = translation.multi30k_task(tmp_path, sample=True)
    task.valid = task.valid[:8]
    recipe = dict(translation.RECIPES["multi30k-sample"], d_model=16, heads=2, d_ff=32,
                  layers=1, steps=6, eval_every=2, log_every=2, average_last=2,
                  accumulate=2, batch_size=8)
    seen = {}
    real = translation.average_checkpoints

    def spy(states):
        seen["states"] = [{k: v.clone() for k, v in s.items()} for s in states]
        seen["out"] = real(states)
        return seen["out"]

    monkeypatch.setattr(translation, "average_checkpoints", spy)
    model, history = translation.train_translation(task, recipe, progress=False)
    assert [r["step"] for r in history if "valid_bleu" in r] == [2, 4, 6]
    assert len(seen["states"]) == 2                     # the last K = 2 evaluations
    for key, value in model.state_dict().items():
        assert torch.equal(value, seen["out"][key])
    hyps = translation.translate_beam(model, [s for s, _ in task.valid[:3]], task.src_vocab,
                                      task.tgt_vocab, beam_size=2, max_len=5)
    assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps)


def test_ddp_loss_weight_reference():
    counts = [3, 0, 10, 7]
    weights = [translation.ddp_loss_weight(n, sum(counts), 4) for n in counts]
    assert weights[1] == 0
    losses = [[float(i + k) for i in range(n)] for k, n in enumerate(counts)]
    means = [sum(x) / len(x) if x else 0.0 for x in losses]
    ddp = sum(w * m for w, m in zip(weights, means)) / 4
    assert ddp == pytest.approx(sum(map(sum, losses)) / sum(counts))
    with pytest.raises(ValueError, match="n_local"):
        translation.ddp_loss_weight(5, 4, 2)
    with pytest.raises(ValueError, match="world_size"):
        translation.ddp_loss_weight(1, 4, 0)
