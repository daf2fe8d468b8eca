"""`scratchformer train / translate / evaluate` and the run directory: its files, weight tying
through safetensors, bit-exact resume, Ctrl-C, and one clear line (exit code 2) for bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_testing import main, scratchformer
from scratchformer import runs

SRC = Path(runs.__file__).parent
# A model small enough that every run below takes about a second on one thread.
TINY = ["--task", "copy", "--d-model", "16", "--heads", "2", "--layers", "1", "--d-ff", "32",
        "--n-train", "200", "--batch-size", "8", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny copy run: 30 steps, a line every step, an evaluation every 10 steps."""
    run = tmp_path_factory.mktemp("runs") / "copy"
    assert main("train", *TINY, "--steps", 30, "--log-every", 1, "--eval-every", 10,
                "--out", run) == 0
    return run


def test_train_writes_every_file_of_the_run_directory(trained):
    assert sorted(p.name for p in trained.iterdir()) == sorted(
        ["config.json", "vocab.json", "model.safetensors", "state.pt", "metrics.jsonl",
         "curves.png"])
    config = json.loads((trained / "config.json").read_text())
    assert config["task"] == "copy" and config["options"]["seed"] == 0
    assert config["options"]["d_model"] == 16 and config["model"]["n_heads"] == 2
    assert config["options"]["lr"] == runs.task_defaults("copy")["lr"]   # from the recipe
    assert {"torch", "scratchformer", "python"} <= set(config["versions"])
    vocab = json.loads((trained / "vocab.json").read_text())
    assert {"source", "target"} <= set(vocab) and "a" in vocab["source"]["tokens"]
    lines = metrics(trained)
    assert [r["step"] for r in lines] == list(range(1, 31))
    assert all({"step", "loss", "lr"} <= set(r) for r in lines)
    assert [r["step"] for r in lines if "exact_match" in r] == [10, 20, 30]
    assert lines[-1]["loss"] < lines[0]["loss"]                      # it learns something
    assert (trained / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = runs.load_state(trained / "state.pt")
    assert state["step"] == 30 and {"torch", "python"} <= set(state["rng"])
    assert {"optimizer", "scheduler"} <= set(state)


def test_the_summary_names_steps_time_exact_match_and_the_run(tmp_path, capsys):
    code, out, err = scratchformer(capsys, "train", *TINY, "--steps", "3", "--out",
                                   tmp_path / "r")
    assert code == 0, err
    assert re.search(rf"done: 3 steps in [\d.]+ s, exact match [\d.]+% \(500 validation "
                     rf"pairs\), run saved in {re.escape(str(tmp_path / 'r'))}$", out)


def test_weights_round_trip_through_safetensors_keeps_the_tying(tmp_path):
    from safetensors import safe_open
    model = runs.build_model({"src_vocab_size": 9, "tgt_vocab_size": 11, "d_model": 8,
                              "n_heads": 2, "n_encoder_layers": 1, "n_decoder_layers": 1,
                              "d_ff": 16, "dropout": 0.0})
    runs.save_weights(model, tmp_path / "m.safetensors", step=7)
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert len(stored) == len(model.state_dict()) - 1               # the tied weight: once
    assert "generator.weight" not in stored
    fresh = runs.build_model(dict(model.config.__dict__))
    assert runs.load_weights(fresh, tmp_path / "m.safetensors") == 7
    assert fresh.generator.weight is fresh.tgt_embed.weight   # still one Parameter
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        fresh.tgt_embed.weight[0, 0] = 123.0
    assert fresh.generator.weight[0, 0] == 123.0


def test_resume_gives_the_losses_of_an_uninterrupted_run_bit_for_bit(tmp_path, capsys):
    options = [*TINY, "--dropout", "0.2", "--log-every", "1", "--eval-every", "0"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert scratchformer(capsys, "train", *options, "--steps", "8", "--out", straight)[0] == 0
    assert scratchformer(capsys, "train", *options, "--steps", "4", "--out", split)[0] == 0
    torch.manual_seed(1234)             # the global generator moved on: resume must restore it
    with open(split / "metrics.jsonl", "a") as handle:   # lines after the checkpoint, as if the
        handle.write('{"step": 5, "loss": 0.0, "lr": 0.0}\n{"step": 6, "lo')   # process died
    code, out, err = scratchformer(capsys, "train", "--resume", split, "--steps", "8",
                                   "--no-progress")
    assert code == 0, err
    a, b = metrics(straight), metrics(split)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]          # exactly, not approximately
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    assert json.loads((split / "config.json").read_text())["options"]["steps"] == 8


def test_state_is_only_ever_loaded_with_weights_only():
    calls = [(path.name, m.start()) for path in SRC.rglob("*.py")
             for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", path.read_text())
             if "weights_only=True" not in m.group(0)]
    assert not calls, f"torch.load without weights_only=True: {calls}"
    assert "torch.load(" in (SRC / "runs.py").read_text()           # the check looks at it


def test_a_state_file_with_pickled_code_is_refused(tmp_path):
    torch.save({"step": 1, "optimizer": {}, "rng": {}, "evil": Path("x")}, tmp_path / "state.pt")
    with pytest.raises(runs.RunError, match="damaged"):
        runs.load_state(tmp_path / "state.pt")


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "scratchformer.cli", "train", *TINY, "--steps", "100000",
         "--log-every", "1", "--eval-every", "0", "--out", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    interrupted = time.monotonic()
    while process.poll() is None:       # Ctrl-C, then more Ctrl-C while it saves
        process.send_signal(signal.SIGINT)
        time.sleep(0.01)
        assert time.monotonic() - interrupted < 15, "no exit within 15 s of Ctrl-C"
    out, err = process.communicate()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    step = int(re.search(r"interrupted at step (\d+) of 100000", out).group(1))
    assert f"--resume {run} --steps 100000" in out
    assert runs.load_state(run / "state.pt")["step"] == step == metrics(run)[-1]["step"] >= 3
    loaded = runs.load_run(run)
    assert loaded.step == step
    assert not [p for p in run.iterdir() if p.name.startswith(".")]   # no temporary files


def test_translate_prints_one_line_per_text_and_saves_the_attention(trained, tmp_path, capsys):
    picture = tmp_path / "attention.png"
    code, out, err = scratchformer(capsys, "translate", "--run", trained, "abc", "jihgf",
                                   "--show-attention", picture)
    assert code == 0, err
    assert len(out.splitlines()) == 2 and set("".join(out.split())) <= set("abcdefghij")
    assert picture.read_bytes()[:4] == b"\x89PNG" and picture.stat().st_size > 10_000


def test_attention_rows_are_the_predicted_tokens_and_columns_the_source(trained, tmp_path,
                                                                        monkeypatch):
    from matplotlib.axes import Axes
    labels = {}
    monkeypatch.setattr(Axes, "set_xticks", lambda self, ticks, names=None, **kw:
                        labels.setdefault("x", list(names)))
    monkeypatch.setattr(Axes, "set_yticks", lambda self, ticks, names=None, **kw:
                        labels.setdefault("y", list(names)))
    from scratchformer.training import greedy_decode
    run = runs.load_run(trained)
    (translation,) = runs.plot_attention(run, ["cab"], tmp_path / "a.png")
    assert labels["x"] == ["c", "a", "b", "</s>"]
    ids = greedy_decode(run.model, torch.tensor([run.src_vocab.encode("cab", eos=True)]),
                        max_len=len(labels["y"]))[0].tolist()
    assert labels["y"] == [run.tgt_vocab.tokens[i] for i in ids]    # one row per output token
    assert runs.translate_texts(run, ["cab"]) == [translation] == [run.tgt_vocab.decode(ids)]


def test_evaluate_prints_exact_match_and_token_accuracy(trained, capsys):
    code, out, _ = scratchformer(capsys, "evaluate", "--run", trained)
    assert code == 0 and re.search(r"exact match [\d.]+%, token accuracy [\d.]+% on the test "
                                   r"split \(500 pairs\)", out)
    code, out, _ = scratchformer(capsys, "evaluate", "--run", trained, "--split", "valid",
                                 "--json")
    result = json.loads(out)
    assert code == 0 and result["split"] == "valid" and result["n"] == 500
    assert 0 <= result["exact_match"] <= 1 and 0 < result["token_accuracy"] <= 1
    logged = [r for r in metrics(trained) if "exact_match" in r][-1]
    assert result["exact_match"] == logged["exact_match"]           # the same model, the same data


def _copy_run(trained: Path, tmp_path: Path) -> Path:
    import shutil
    return Path(shutil.copytree(trained, tmp_path / "copy"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _swap_a_for_k(vocab: dict) -> None:
    tokens = vocab["source"]["tokens"]
    tokens.remove("a")
    tokens.append("k")


BAD = {   # name: (how to break the run (or None), arguments, what the one line must say)
    "unknown task": (None, ["train", "--task", "french", "--out", "{tmp}/x"], "unknown task"),
    "zero steps": (None, ["train", *TINY, "--steps", "0", "--out", "{tmp}/x"],
                   "--steps must be a positive integer"),
    "negative width": (None, ["train", *TINY, "--d-model", "-8", "--out", "{tmp}/x"],
                       "--d-model must be a positive integer"),
    "zero batch": (None, ["train", *TINY, "--batch-size", "0", "--out", "{tmp}/x"],
                   "--batch-size must be a positive integer"),
    "heads": (None, ["train", *TINY, "--d-model", "18", "--heads", "4", "--out", "{tmp}/x"],
              "--d-model 18 is not divisible by --heads 4"),
    "dropout": (None, ["train", *TINY, "--dropout", "1.5", "--out", "{tmp}/x"],
                "--dropout must be in [0, 1)"),
    "learned positions too short": (
        None, ["train", *TINY, "--positional", "learned", "--max-len", "5", "--out", "{tmp}/x"],
        "--max-len 5 is shorter than the longest sequence of the copy data"),
    "not a number": (None, ["train", *TINY, "--steps", "ten"], "invalid int value: 'ten'"),
    "unwritable out": (None, ["train", *TINY, "--out", "{run}/config.json/sub"],
                       "cannot create the run directory"),
    "existing run": (None, ["train", *TINY, "--out", "{run}"], "already holds a run"),
    "out and resume": (None, ["train", "--out", "{tmp}/x", "--resume", "{run}"], "not both"),
    "missing run": (None, ["evaluate", "--run", "{tmp}/nowhere"], "no run directory"),
    "not a run": (None, ["translate", "--run", "{tmp}", "abc"], "is not a run directory"),
    "corrupt config": (lambda run: (run / "config.json").write_text("{not json"),
                       ["evaluate", "--run", "{run}"], "config.json is damaged"),
    "truncated weights": (lambda run: _truncate(run / "model.safetensors"),
                          ["translate", "--run", "{run}", "abc"], "damaged or truncated"),
    "truncated state": (lambda run: _truncate(run / "state.pt"),
                        ["train", "--resume", "{run}", "--steps", "40"], "state.pt is damaged"),
    "weights of another model": (
        lambda run: _edit_json(run / "config.json", lambda c: c["model"].update(d_ff=64)),
        ["evaluate", "--run", "{run}"], "does not match the model"),
    "vocabulary of another size": (
        lambda run: _edit_json(run / "vocab.json", lambda v: v["source"]["tokens"].remove("a")),
        ["translate", "--run", "{run}", "b"], "vocab.json (13 source and 14 target tokens) "
        "does not match"),
    "vocabulary of another task": (
        lambda run: _edit_json(run / "vocab.json", _swap_a_for_k),
        ["evaluate", "--run", "{run}"], "does not match the copy task's"),
    "resume, vocabulary of another task": (
        lambda run: _edit_json(run / "vocab.json", _swap_a_for_k),
        ["train", "--resume", "{run}", "--steps", "40"], "does not match the copy task's"),
    "resume, other width": (None, ["train", "--resume", "{run}", "--d-model", "32"],
                            "--d-model 32 does not match the run"),
    "resume, other task": (None, ["train", "--resume", "{run}", "--task", "reverse"],
                           "--task reverse does not match the run"),
    "resume, done": (None, ["train", "--resume", "{run}", "--steps", "30"],
                     "already at step 30"),
    "unknown characters": (None, ["translate", "--run", "{run}", "abc", "aXbY!"],
                           "unknown characters: 'X', 'Y', '!'"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_and_exit_code_2(name, trained, tmp_path, capsys):
    breaks, arguments, message = BAD[name]
    run = _copy_run(trained, tmp_path)
    if breaks:
        breaks(run)
    arguments = [a.format(tmp=tmp_path, run=run) for a in arguments]
    code, out, err = scratchformer(capsys, *arguments)
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"scratchformer {arguments[0]}: error: ")


def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = scratchformer(capsys, "train", *TINY, "--device", "cuda", "--out", tmp_path)
    assert code == 2 and "CUDA is not available" in err and len(err.splitlines()) == 1


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    for arguments in (["train", "--task", "french"], ["evaluate", "--run", str(tmp_path / "no")]):
        result = subprocess.run([sys.executable, "-m", "scratchformer.cli", *arguments],
                                capture_output=True, text=True, env=ENV, timeout=120)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
