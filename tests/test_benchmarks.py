"""benchmarks/train_step.py: the smoke run writes a complete JSON, and the two models it times
compute the same function with the same number of parameters. No timing is asserted."""

import importlib.util
import json
import os
import subprocess
import sys

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
