"""benchmarks/train_step.py: the smoke run writes a complete JSON, and the two models it times
compute the same function with the same number of parameters. No timing is asserted."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import nbtools

SCRIPT = nbtools.ROOT / "benchmarks" / "train_step.py"
TINY = ["--d-model", "16", "--heads", "2", "--layers", "1", "--d-ff", "32", "--batch", "4",
        "--length", "6", "--vocab", "20"]


def load_script():
    if str(SCRIPT.parent) not in sys.path:     # the scripts import their shared _common module
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("train_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_every_field(tmp_path):
    out = tmp_path / "train_step.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", *TINY, "--threads", "1", "2",
                             "--out", str(out)], cwd=nbtools.ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio ours/reference" in result.stdout and "load" in result.stdout
    data = json.loads(out.read_text())
    for key in ("ratios", "threads", "results", "config", "torch", "cpu", "command", "date",
                "load_at_end", "eval_max_abs_diff"):
        assert key in data, key
    assert data["threads"] == [1, 2] and set(data["ratios"]) == {"1", "2"}
    assert data["torch"] == torch.__version__ and "--quick" in data["command"]
    assert data["config"]["d_model"] == 16 and data["config"]["quick"] is True
    for threads in ("1", "2"):
        r = data["results"][threads]
        assert r["ratio"] > 0 and r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert len(r["ratio_iqr"]) == 2 and len(r["rounds"]) == data["config"]["rounds"]
        for model in ("ours", "reference"):
            m = r[model]
            assert m["median_s"] > 0 and m["iqr_s"] >= 0 and m["tokens_per_s"] > 0
            assert len(m["block_times_s"]) == m["n_blocks"] >= 1
        for round_ in r["rounds"]:
            assert len(round_["load_before"]) == len(round_["load_after"]) == 3


def test_the_two_models_have_equal_parameters_and_compute_the_same_function():
    bench = load_script()
    args = bench.parse_args(["--quick", *TINY, "--dropout", "0.0"])
    config, ours, reference = bench.build(args)                 # asserts equal counts
    assert bench.parameter_count(ours) == bench.parameter_count(reference)
    assert reference.generator.weight is reference.tgt_embed.weight
    src, tgt_in, labels = bench.make_inputs(args, torch.Generator().manual_seed(0))
    assert src.shape == tgt_in.shape == labels.shape == (4, 6)
    assert (src == 0).any() and (tgt_in[:, 0] == 1).all()       # padded, and <s> first
    assert bench.check_same_function(ours, reference, src, tgt_in) < 1e-5
    losses = [bench.loss_fn(model(src, tgt_in), labels) for model in (ours, reference)]
    torch.testing.assert_close(*losses)                         # dropout 0: the same step


DECODE = nbtools.ROOT / "benchmarks" / "decode.py"


def test_decode_quick_run_writes_every_field_and_the_plot(tmp_path):
    """benchmarks/decode.py --quick: both variants give the same tokens over every step (the
    script asserts it before timing), and the JSON and the plot are complete."""
    out, picture = tmp_path / "decode.json", tmp_path / "decode.png"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(DECODE), "--quick", "--threads", "1", "2",
                             "--out", str(out), "--plot", str(picture)], cwd=nbtools.ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "speed-up at n = 8" in result.stdout and "load" in result.stdout
    data = json.loads(out.read_text())
    for key in ("speedups_at_longest", "longest", "threads", "lengths", "results", "config",
                "torch", "cpu", "command", "date", "load_at_end"):
        assert key in data, key
    assert data["lengths"] == [4, 8] and data["longest"] == 8 and data["threads"] == [1, 2]
    assert data["config"]["d_model"] == 64 and data["config"]["quick"] is True
    assert data["config"]["eos_id"] == data["config"]["tgt_vocab"]     # never produced
    for threads in ("1", "2"):
        r = data["results"][threads]
        assert set(r["slopes"]) == {"cached", "recomputed"}
        for n in ("4", "8"):
            m = r["lengths"][n]
            assert m["speedup"] > 0 and m["speedup_min"] <= m["speedup"] <= m["speedup_max"]
            for variant in ("cached", "recomputed"):
                assert m[variant]["median_s"] > 0 and len(m[variant]["block_times_s"]) >= 1
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# The experiment scripts chapters 11, 12, 14 and 15 read: each smoke run (--fast, seconds) trains,
# writes its JSON with the command that made it, and exits 0. What a full run measures is in the
# JSON the chapters load; no number is asserted here.
EXPERIMENTS = {
    "warmup_experiment.py": ["--quick"],
    "tasks.py": ["--fast"],
    "data_hunger.py": ["--fast"],
    "positional_rope.py": ["--fast"],
    "tips_scheduled_sampling.py": ["--fast"],
    "tips_copy.py": ["--fast"],
    "tips_guided.py": ["--fast"],
    "optimise_metric.py": ["--fast", "--pretrain", "20", "--steps", "4", "--eval-every", "2",
                           "--n-test", "20", "--seeds", "0"],
}


@pytest.mark.parametrize("script", list(EXPERIMENTS))
def test_experiment_smoke_run_writes_its_results(script, tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(nbtools.ROOT / "benchmarks" / script),
                             *EXPERIMENTS[script], "--threads", "1", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=300,
                            cwd=nbtools.ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert script in data["command"] and data["threads"] == 1
