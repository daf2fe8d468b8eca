"""`scratchformer train --task multi30k` on the project's own sample (no network): the run
directory with its BPE vocabulary, BLEU, resume, --accumulate, --average-last, and one clear
message with instructions (exit code 2) when the data cannot be had."""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import pytest
import torch

from cli_testing import main, scratchformer
from scratchformer import runs, translation

# A model small enough that a step takes a few milliseconds on one thread.
TINY = ["--task", "multi30k", "--sample", "--d-model", "16", "--heads", "2", "--layers", "1",
        "--d-ff", "32", "--batch-size", "8", "--no-progress", "--device", "cpu"]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> Path:
    """6 steps on the sample, a line every step, BLEU every 3 steps, the last 2 averaged."""
    run = tmp_path_factory.mktemp("runs") / "m"
    assert main("train", *TINY, "--data-dir", data_dir, "--steps", 6, "--log-every", 1,
                "--eval-every", 3, "--average-last", 2, "--out", run) == 0
    return run


def test_a_sample_run_stores_its_bpe_vocabulary_and_scores_bleu(trained, data_dir):
    assert {"config.json", "vocab.json", "model.safetensors", "state.pt", "metrics.jsonl",
            "curves.png", "averaged.safetensors", "checkpoints"} == {
                p.name for p in trained.iterdir()}
    config = json.loads((trained / "config.json").read_text())
    assert config["task"] == "multi30k-sample"
    assert config["options"]["data_dir"] == str(data_dir.resolve())
    assert config["options"]["vocab_size"] == translation.RECIPES["multi30k-sample"]["vocab_size"]
    vocab = json.loads((trained / "vocab.json").read_text())
    assert vocab["source"]["type"] == vocab["target"]["type"] == "BPEVocab"
    assert (data_dir / "multi30k-sample" / "train.de.gz").is_file()     # the sample, written
    lines = records(trained)
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    scored = [r for r in lines if "bleu" in r]
    assert [r["step"] for r in scored] == [3, 6]
    assert all(0 <= r["bleu"] <= 100 and r["n"] == 200 for r in scored)
    assert scored[0]["signature"].startswith("nrefs:1|")


def test_load_run_reads_the_bpe_vocabulary_and_translates(trained):
    run = runs.load_run(trained)
    assert isinstance(run.src_vocab, translation.BPEVocab) and run.src_vocab == run.tgt_vocab
    text = "Ein Mann fährt ein rotes Fahrrad auf der Straße."
    assert run.src_vocab.decode(run.src_vocab.encode(text)) == text
    assert len(runs.translate_texts(run, [text, "Zwei Hunde."])) == 2


def test_evaluate_prints_beam_bleu_and_the_sacrebleu_signature(trained, data_dir, capsys):
    code, out, err = scratchformer(capsys, "evaluate", "--run", trained, "--split", "valid",
                                   "--beam", 2)
    assert code == 0, err
    assert "on the valid split (200 sentences) of multi30k-sample; beam 2" in out
    assert "(averaged.safetensors)" in out
    assert "SacreBLEU signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out
    code, out, _ = scratchformer(capsys, "evaluate", "--run", trained, "--json",
                                 "--data-dir", data_dir)
    result = json.loads(out)
    assert result["split"] == "test" and result["beam"] == 4 and result["n"] == 200
    assert {"bleu", "tokenised_bleu", "chrf", "signature", "exact_match"} <= set(result)


def test_average_last_writes_the_mean_of_the_last_checkpoints(trained):
    from safetensors.torch import load_file
    kept = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert kept == ["step-0000003.safetensors", "step-0000006.safetensors"]
    a, b = (load_file(trained / "checkpoints" / name) for name in kept)
    mean = load_file(trained / "averaged.safetensors")
    assert mean.keys() == a.keys()
    for name in mean:
        torch.testing.assert_close(mean[name], (a[name] + b[name]) / 2)
    assert any(not torch.equal(mean[name], b[name]) for name in mean)  # not just the last
    assert runs.load_run(trained).weights == "averaged.safetensors"
    assert runs.load_run(trained).step == 6


def test_resume_continues_the_same_run_bit_for_bit(tmp_path, data_dir, trained):
    run = tmp_path / "r"
    assert main("train", *TINY, "--data-dir", data_dir, "--steps", 4, "--log-every", 1,
                "--eval-every", 3, "--average-last", 2, "--out", run) == 0
    assert main("train", "--resume", run, "--steps", 6, "--no-progress") == 0
    assert [r["loss"] for r in records(run)] == [r["loss"] for r in records(trained)]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-0000003.safetensors", "step-0000006.safetensors"]


def test_accumulate_takes_the_same_step_in_micro_batches(tmp_path, data_dir):
    def first_step(*extra) -> tuple[dict, dict]:
        from safetensors.torch import load_file
        run = tmp_path / f"acc{len(extra)}"
        assert main("train", *TINY, "--data-dir", data_dir, "--steps", 1, "--dropout", 0,
                    "--batch-size", 7, *extra, "--out", run) == 0
        return records(run)[0], load_file(run / "model.safetensors")

    one, weights = first_step()
    three, weights3 = first_step("--accumulate", 3)       # micro-batches of 3, 2 and 2 rows
    assert three["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert three["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    # Adam's first update is about lr * sign(gradient): where a gradient is ~0, rounding can
    # flip it, so the weights agree to 2 lr.
    for name in weights:
        torch.testing.assert_close(weights3[name], weights[name], rtol=0, atol=2 * one["lr"])


def _unreachable(monkeypatch):
    """Downloads go to a closed port on this machine (never to the internet)."""
    fetch = functools.partial(translation.fetch_multi30k, base_url="http://127.0.0.1:9/",
                              timeout=5)
    monkeypatch.setattr(translation, "fetch_multi30k", fetch)


def test_unreachable_data_exits_2_with_manual_instructions(tmp_path, capsys, monkeypatch):
    _unreachable(monkeypatch)
    code, out, err = scratchformer(capsys, "train", "--task", "multi30k", "--data-dir",
                                   tmp_path / "data", "--steps", 1, "--no-progress",
                                   "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err
    assert "could not download train.de.gz from http://127.0.0.1:9/train.de.gz" in err
    assert "To get the data by hand" in err and str(tmp_path / "data" / "multi30k") in err
    assert translation.MULTI30K_SHA256["train.de.gz"] in err


def test_a_file_with_the_wrong_digest_is_not_used(tmp_path, capsys, monkeypatch):
    _unreachable(monkeypatch)
    folder = tmp_path / "data" / "multi30k"
    folder.mkdir(parents=True)
    (folder / "train.de.gz").write_bytes(gzip.compress(b"Ein Mann.\n", mtime=0))  # tampered
    code, _, err = scratchformer(capsys, "train", "--task", "multi30k", "--data-dir",
                                 tmp_path / "data", "--steps", 1, "--no-progress",
                                 "--out", tmp_path / "run")
    assert code == 2 and "To get the data by hand" in err and "Traceback" not in err
    assert not (folder / "train.de.gz").exists()              # moved aside, never used


@pytest.mark.parametrize("args, message", [
    (["--task", "copy", "--sample"], "--sample goes with --task multi30k"),
    (["--task", "copy", "--vocab-size", "100"], "--vocab-size applies to --task multi30k"),
    (["--task", "copy", "--accumulate", "0"], "--accumulate must be a positive integer"),
])
def test_misused_options_are_one_line_errors(tmp_path, capsys, args, message):
    code, out, err = scratchformer(capsys, "train", *args, "--out", tmp_path / "r")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_beam_is_for_translation_runs(tmp_path, capsys):
    run = tmp_path / "copy"
    assert main("train", "--task", "copy", "--d-model", "16", "--heads", "2", "--layers", "1",
                "--d-ff", "32", "--n-train", "50", "--steps", "1", "--no-progress",
                "--out", run) == 0
    code, _, err = scratchformer(capsys, "evaluate", "--run", run, "--beam", "2")
    assert code == 2 and "--beam, --length-penalty and --data-dir apply to translation" in err
