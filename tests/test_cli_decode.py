"""`scratchformer translate --beam N / --sample`: beam search's best output with its score and
alpha, reproducible sampling, and one clear line (exit code 2) for every bad combination."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_testing import main, scratchformer
from scratchformer import decoding, runs

# A model small enough to train in a few seconds on one thread (as in test_cli_train.py).
TINY = ["--task", "copy", "--d-model", "16", "--heads", "2", "--layers", "1", "--d-ff", "32",
        "--n-train", "200", "--batch-size", "16", "--no-progress"]
TEXTS = ["abc", "jihgf", "deed", "a"]
LINE = re.compile(r"^(?P<text>[a-j]*)\tscore (?P<score>-?\d+\.\d{4}) \(beam (?P<beam>\d+), "
                  r"length penalty alpha (?P<alpha>[\d.]+)\)$")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny copy run, 200 steps: far from perfect (about 2% exact match), but its outputs
    are neither empty nor all alike, so greedy, beam and samples differ, and so do the
    length penalties (checked below)."""
    run = tmp_path_factory.mktemp("runs") / "copy"
    assert main("train", *TINY, "--steps", 200, "--eval-every", 0, "--out", run) == 0
    return run


def test_the_run_gives_outputs_that_tell_the_options_apart(trained, capsys):
    beams = {}
    for alpha in ("0", "1"):
        code, out, _ = scratchformer(capsys, "translate", "--run", trained, *TEXTS, "--beam", 3,
                                     "--length-penalty", alpha)
        beams[alpha] = [LINE.match(line) for line in out.splitlines()]
    assert all(len(m["text"]) >= 2 for m in beams["1"])        # not just </s>
    assert [m["score"] for m in beams["0"]] != [m["score"] for m in beams["1"]]
    _, greedy, _ = scratchformer(capsys, "translate", "--run", trained, *TEXTS)
    assert [m["text"] for m in beams["1"]] != greedy.splitlines()


def source(run, texts):
    return runs._source_batch(run, texts)


def test_beam_prints_the_best_output_its_score_and_alpha(trained, capsys):
    code, out, err = scratchformer(capsys, "translate", "--run", trained, *TEXTS, "--beam", 4)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(TEXTS)
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert {m["beam"] for m in matches} == {"4"} and {m["alpha"] for m in matches} == {"0.6"}
    run = runs.load_run(trained)
    best = decoding.beam_search(run.model, source(run, TEXTS), 4, runs._decode_limit(run, TEXTS),
                                length_penalty=0.6)
    for m, (tokens, score) in zip(matches, best):
        assert m["text"] == run.tgt_vocab.decode(tokens.tolist())
        assert float(m["score"]) == pytest.approx(score, abs=1e-4)


def test_the_score_is_the_log_probability_over_gnmts_penalty(trained, capsys):
    run = runs.load_run(trained)
    src = source(run, TEXTS)
    limit = runs._decode_limit(run, TEXTS)
    for alpha in ("0", "1"):
        code, out, err = scratchformer(capsys, "translate", "--run", trained, *TEXTS, "--beam",
                                       3, "--length-penalty", alpha)
        assert code == 0, err
        best = decoding.beam_search(run.model, src, 3, limit, length_penalty=float(alpha))
        for line, (tokens, _), row in zip(out.splitlines(), best, range(len(TEXTS))):
            m = LINE.match(line)
            assert m["alpha"] == alpha
            log_p = float(decoding.sequence_log_prob(run.model, src[row:row + 1], tokens[None]))
            expected = log_p / ((5 + len(tokens)) / 6) ** float(alpha)
            assert float(m["score"]) == pytest.approx(expected, abs=2e-4)


def test_beam_1_and_top_k_1_print_the_greedy_translations(trained, capsys):
    code, greedy, _ = scratchformer(capsys, "translate", "--run", trained, *TEXTS)
    assert code == 0
    code, beam, _ = scratchformer(capsys, "translate", "--run", trained, *TEXTS, "--beam", 1)
    assert code == 0
    assert [line.split("\t")[0] for line in beam.splitlines()] == greedy.splitlines()
    code, sampled, err = scratchformer(capsys, "translate", "--run", trained, *TEXTS, "--sample",
                                       "--top-k", 1, "--seed", 5)
    assert code == 0 and sampled == greedy
    assert err.strip() == "sampled with temperature 1, top-k 1, seed 5"


def test_sampling_with_a_seed_is_reproducible_and_the_seed_matters(trained, capsys):
    options = ["--sample", "--temperature", "0.8", "--top-k", "5"]
    many = TEXTS * 4
    outputs = {}
    for seed in (1, 1, 2):
        code, out, err = scratchformer(capsys, "translate", "--run", trained, *many, *options,
                                       "--seed", seed)
        assert code == 0, err
        assert len(out.splitlines()) == len(many)
        assert err.strip() == f"sampled with temperature 0.8, top-k 5, seed {seed}"
        outputs.setdefault(seed, []).append(out)
    assert outputs[1][0] == outputs[1][1]
    assert outputs[2][0] != outputs[1][0]
    run = runs.load_run(trained)                 # the same draws as decoding.sample's
    direct = decoding.sample(run.model, source(run, many), runs._decode_limit(run, many),
                             temperature=0.8, top_k=5,
                             generator=torch.Generator().manual_seed(1))
    assert [run.tgt_vocab.decode(row) for row in direct] == outputs[1][0].splitlines()


def test_sampling_is_reproducible_across_processes(trained):
    command = [sys.executable, "-m", "scratchformer.cli", "translate", "--run", str(trained),
               *TEXTS * 3, "--sample", "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9",
               "--seed", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first, second = (subprocess.run(command, capture_output=True, text=True, env=env,
                                    timeout=300) for _ in range(2))
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout == second.stdout and len(first.stdout.splitlines()) == 12
    assert "top-p 0.9" in first.stderr


def test_the_default_seed_is_0(trained, capsys):
    runs_ = [scratchformer(capsys, "translate", "--run", trained, *TEXTS, *extra)
             for extra in (["--sample"], ["--sample", "--seed", "0"])]
    assert runs_[0][1] == runs_[1][1] and runs_[0][0] == 0


BAD = {   # name: (arguments after the run and the texts, what the one line must say)
    "beam and sample": (["--beam", "4", "--sample"], "--beam and --sample exclude each other"),
    "beam 0": (["--beam", "0"], "--beam must be a positive integer"),
    "beam -3": (["--beam", "-3"], "--beam must be a positive integer"),
    "beam not a number": (["--beam", "four"], "argument --beam: invalid int value: 'four'"),
    "negative alpha": (["--beam", "2", "--length-penalty", "-0.5"],
                       "--length-penalty must be a number >= 0"),
    "alpha nan": (["--beam", "2", "--length-penalty", "nan"],
                  "--length-penalty must be a number >= 0"),
    "alpha without beam": (["--length-penalty", "0.6"], "--length-penalty applies to beam "
                           "search only: add --beam N"),
    "top-k 0": (["--sample", "--top-k", "0"], "--top-k must be a positive integer"),
    "top-p 0": (["--sample", "--top-p", "0"], "--top-p must be in (0, 1]"),
    "top-p 1.5": (["--sample", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    "temperature 0": (["--sample", "--temperature", "0"], "--temperature must be a number > 0"),
    "temperature -1": (["--sample", "--temperature", "-1"], "--temperature must be a number > 0"),
    "temperature inf": (["--sample", "--temperature", "inf"],
                        "--temperature must be a number > 0"),
    "temperature without sample": (["--temperature", "0.8"],
                                   "--temperature applies to sampling only: add --sample"),
    "top-k without sample": (["--top-k", "5"], "--top-k applies to sampling only"),
    "top-p with beam": (["--beam", "2", "--top-p", "0.9"], "--top-p applies to sampling only"),
    "seed without sample": (["--seed", "1"], "--seed applies to sampling only"),
    "negative seed": (["--sample", "--seed", "-1"], "--seed must be an integer >= 0"),
    "attention with beam": (["--beam", "2", "--show-attention", "{tmp}/a.png"],
                            "--show-attention shows greedy decoding"),
    "attention with sample": (["--sample", "--show-attention", "{tmp}/a.png"],
                              "--show-attention shows greedy decoding"),
    "unknown characters, beam": (["aXb", "--beam", "2"], "unknown characters: 'X'"),
    "unknown characters, sample": (["aXb", "--sample"], "unknown characters: 'X'"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_decoding_options_are_one_line_and_exit_code_2(name, trained, tmp_path, capsys):
    arguments, message = BAD[name]
    arguments = [a.format(tmp=tmp_path) for a in arguments]
    code, out, err = scratchformer(capsys, "translate", "--run", trained, "abc", *arguments)
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("scratchformer translate: error: ") and out == ""
    assert not (tmp_path / "a.png").exists()


def test_bad_options_are_rejected_before_the_run_is_loaded(tmp_path, capsys):
    code, _, err = scratchformer(capsys, "translate", "--run", tmp_path / "nowhere", "abc",
                                 "--beam", "0")
    assert code == 2 and "--beam must be a positive integer" in err


def test_check_decoding_accepts_the_documented_ranges():
    runs.check_decoding(beam=1, length_penalty=0.0)
    runs.check_decoding(beam=8, length_penalty=2.0)
    runs.check_decoding(sample=True, temperature=1e-3, top_k=1, top_p=1.0, seed=0)
    runs.check_decoding(sample=True, top_p=1e-9)
    runs.check_decoding()
    with pytest.raises(runs.RunError, match="--beam must"):
        runs.check_decoding(beam=True)
