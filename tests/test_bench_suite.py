"""The benchmark suite: attention.py, memory.py, time_to_accuracy.py, suite.py, gpu.sh, and the
appendix page that renders their JSON. Smoke runs only; no timing is asserted."""

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import nbformat
import pytest
import torch

import nbtools

BENCH = nbtools.ROOT / "benchmarks"
PAGE = nbtools.ROOT / "book" / "appendix" / "benchmarks.ipynb"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def load_script(name):
    if str(BENCH) not in sys.path:         # the scripts import _common and each other
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args, **kwargs):
    return subprocess.run([*args], cwd=nbtools.ROOT, env={**ENV, **kwargs.pop("env", {})},
                          capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    """One quick suite run of the three new benchmarks: its output directory."""
    out = tmp_path_factory.mktemp("suite")
    result = run(sys.executable, "benchmarks/suite.py", "--quick", "--out-dir", str(out),
                 "--only", "attention", "memory", "time_to_accuracy")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_suite_quick_writes_every_json_and_its_own_record(quick_suite):
    suite = json.loads((quick_suite / "suite.json").read_text())
    assert list(suite["runs"]) == ["attention", "memory", "time_to_accuracy"]
    for name, r in suite["runs"].items():
        assert r["returncode"] == 0 and r["seconds"] > 0 and r["output"] == f"{name}.json"
        assert len(r["load_before"]) == len(r["load_after"]) == 3
        assert r["command"].startswith(f".venv/bin/python benchmarks/{name}.py --quick")
        assert json.loads((quick_suite / f"{name}.json").read_text())["benchmark"] == name
    assert suite["quick"] is True and suite["torch"] == torch.__version__


def test_attention_quick_json(quick_suite):
    data = json.loads((quick_suite / "attention.json").read_text())
    assert set(data["implementations"]) == {"explicit", "fused", "reference", "sdpa"}
    assert data["modes"] == ["forward", "forward_backward"] and data["lengths"] == [16, 32]
    assert data["max_abs_diff"] < 1e-4                   # the four compute the same function
    assert data["config"]["quick"] is True and data["torch"] == torch.__version__
    for mode in data["modes"]:
        for T in ("16", "32"):
            r = data["results"]["1"][mode][T]
            assert r["ratios"]["reference"] == pytest.approx(1.0)
            for name in data["implementations"]:
                t = r["times"][name]
                assert t["median_s"] > 0 and len(t["block_times_s"]) == t["n_blocks"] >= 1
                assert r["ratios"][name] > 0
            assert len(r["rounds"]) == data["config"]["rounds"]


def test_attention_implementations_agree_under_padding():
    """The check run before timing: same outputs at the real positions, and a deliberately
    different reference is caught."""
    attention = load_script("attention")
    args = attention.parse_args(["--quick"])
    modules = attention.build(args, torch.device("cpu"), torch.float32)
    x, valid = attention.make_inputs(args, 12, "cpu", torch.float32,
                                     torch.Generator().manual_seed(1))
    assert (~valid).any() and valid[:, 0].all()          # padded, never empty
    assert attention.check_same_output(modules, x, valid) < 1e-5
    with torch.no_grad():
        modules["sdpa"].out_proj.bias.add_(1.0)
    with pytest.raises(AssertionError, match="disagree"):
        attention.check_same_output(modules, x, valid)


def test_memory_quick_json_and_method_check(quick_suite):
    data = json.loads((quick_suite / "memory.json").read_text())
    check = data["method_check"]
    assert check["measured_peak_bytes"] == check["expected_peak_bytes"] == 12_000_000
    assert check["measured_end_bytes"] == check["expected_end_bytes"] == 1_000_000
    assert data["lengths"] == [6, 12]
    for r in data["results"].values():
        assert r["ours"]["peak_bytes"] > 0 and r["reference"]["peak_bytes"] > 0
        assert r["ratio"] == pytest.approx(r["ours"]["peak_bytes"] / r["reference"]["peak_bytes"])
    longer = data["results"]["12"]["ours"]["peak_bytes"]
    assert longer > data["results"]["6"]["ours"]["peak_bytes"]   # more tokens, more activations


def test_profiled_peak_measures_what_is_allocated():
    memory = load_script("memory")
    small, _ = memory.profiled_peak(lambda: torch.ones(1000, 250).sum())        # 1 MB
    large, _ = memory.profiled_peak(lambda: torch.ones(1000, 2500).sum())       # 10 MB
    assert 1_000_000 <= small < 1_100_000 and 10_000_000 <= large < 10_100_000
    kept = []
    peak, end = memory.profiled_peak(lambda: kept.append(torch.empty(3_000_000,
                                                                     dtype=torch.uint8)))
    assert peak == end == 3_000_000


def test_time_to_accuracy_quick_json(quick_suite):
    data = json.loads((quick_suite / "time_to_accuracy.json").read_text())
    r = data["tasks"]["copy"]
    assert r["reached"] is False and r["seconds"] is None and r["steps_run"] == 20
    assert [p["step"] for p in r["curve"]] == [10, 20] and r["evaluations"] == 2
    assert 0 <= r["test_exact_match"] <= 1 and r["target_exact_match"] == 1.0


def test_time_to_accuracy_stops_at_the_first_evaluation_that_reaches_the_target(monkeypatch):
    tta = load_script("time_to_accuracy")
    monkeypatch.setitem(tta.TARGETS, "copy", 0.0)       # any evaluation reaches it
    args = tta.parse_args(["--quick", "--tasks", "copy", "--eval-every", "5", "--no-progress"])
    r = tta.run_task("copy", args)
    assert r["reached"] is True and r["steps"] == 5 and r["steps_run"] == 5
    assert 0 < r["seconds"] <= r["seconds_with_evaluation"]
    assert r["evaluations"] == 1 and len(r["curve"]) == 1


def test_suite_settings_parse_and_quick_needs_an_out_dir():
    suite = load_script("suite")
    assert list(suite.BENCHMARKS) == ["attention", "train_step", "decode", "memory",
                                      "time_to_accuracy"]
    for script, full, smoke in suite.BENCHMARKS.values():
        module = load_script(script.removesuffix(".py"))
        for args in (full, smoke):
            module.parse_args([*args, "--out", "/tmp/unused.json"])   # exits on a bad option
    result = run(sys.executable, "benchmarks/suite.py", "--quick")
    assert result.returncode == 2 and "--out-dir" in result.stderr


def test_gpu_script_refuses_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.fail("this test checks the refusal on a machine without CUDA")
    out = tmp_path / "gpu"
    result = run("bash", "benchmarks/gpu.sh", env={"OUT_DIR": str(out)})
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr and "make bench" in result.stderr
    assert not out.exists()                              # nothing written


# --- the appendix page -----------------------------------------------------------------------

def test_report_tables_follow_the_json(quick_suite):
    report = load_script("report")
    results = report.load_results(quick_suite)
    attention = results["attention"]
    before = report.attention_table(attention, "1", "forward")
    changed = copy.deepcopy(attention)
    changed["results"]["1"]["forward"]["16"]["ratios"]["fused"] = 12.34
    after = report.attention_table(changed, "1", "forward")
    assert before != after and "(12.34x)" in after and "(12.34x)" not in before
    memory = copy.deepcopy(results["memory"])
    memory["results"]["6"]["ratio"] = 0.4321
    assert "**0.432**" in report.memory_table(memory)
    tta = copy.deepcopy(results["time_to_accuracy"])
    tta["tasks"]["copy"].update(reached=True, steps=140, seconds=98.76)
    assert "**98.8 s**" in report.time_to_accuracy_table(tta)
    assert "smoke run" in report.machine_line(attention)
    assert attention["date"][:10] in report.machine_line(attention)


def test_the_page_renders_the_json_it_finds(quick_suite, tmp_path):
    """Executed in a copy of the layout with a changed number, the page shows that number: its
    numbers come from the JSON, none is typed in the page."""
    root = tmp_path / "repo"
    (root / "book" / "appendix").mkdir(parents=True)
    shutil.copy(PAGE, root / "book" / "appendix")
    (root / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy(BENCH / "report.py", root / "benchmarks")
    shutil.copytree(quick_suite, root / "benchmarks" / "results" / "cpu")
    path = root / "benchmarks" / "results" / "cpu" / "attention.json"
    data = json.loads(path.read_text())
    data["results"]["1"]["forward_backward"]["32"]["ratios"]["fused"] = 7.654
    path.write_text(json.dumps(data))
    nb = nbformat.read(root / "book" / "appendix" / "benchmarks.ipynb", as_version=4)
    from nbclient import NotebookClient
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(root / "book" / "appendix")}}).execute()
    shown = "\n".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells
                      if c.cell_type == "code" for o in c.outputs)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "error"]
    assert "(7.65x)" in shown                                     # the changed number
    assert "`train_step` has not been measured here yet" in shown  # not in this run
    assert "Not yet run on a GPU" in shown
    assert sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs) == 2                           # attention, time to accuracy


def test_page_code_lines_fit_the_book():
    nb = nbformat.read(PAGE, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert all(len(line) <= 80 for line in cell.source.splitlines()), cell.source


def gpu_script_commands() -> list[list[str]]:
    """The benchmark commands of gpu.sh (continuation lines joined), split like the shell."""
    import shlex
    text = (BENCH / "gpu.sh").read_text().replace("\\\n", " ")
    return [shlex.split(line.strip())[1:] for line in text.splitlines()
            if line.strip().startswith('"$PY" benchmarks/')]


def test_gpu_script_options_are_valid(tmp_path):
    """Every benchmark command of gpu.sh parses (on the CPU: --device cuda -> cpu)."""
    commands = gpu_script_commands()
    assert [c[0] for c in commands] == ["benchmarks/attention.py", "benchmarks/attention.py",
                                        "benchmarks/train_step.py", "benchmarks/decode.py",
                                        "benchmarks/memory.py"]
    for script, *args in commands:
        args = [str(tmp_path / "x.json") if a.startswith("$OUT") else
                ("cpu" if a == "cuda" else a) for a in args]
        assert "--out" in args
        load_script(script.split("/")[1].removesuffix(".py")).parse_args(args)


def test_gpu_script_collects_a_training_run(tmp_path):
    """The collector at the end of gpu.sh, on a short CPU run of the same CLI."""
    run_dir, out = tmp_path / "run", tmp_path / "multi30k.json"
    result = run(sys.executable, "-m", "scratchformer", "train", "--task", "copy", "--steps",
                 "3", "--d-model", "16", "--heads", "2", "--layers", "1", "--d-ff", "32",
                 "--n-train", "50", "--log-every", "1", "--no-progress", "--device", "cpu",
                 "--out", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    text = (BENCH / "gpu.sh").read_text()
    collector = text.split("<<'PYTHON'\n", 1)[1].split("\nPYTHON\n", 1)[0]
    result = run(sys.executable, "-", str(run_dir), str(out), "10.0", "12.5", "3", "",
                 input=collector)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["seconds"] == pytest.approx(2.5) and data["steps"] == 3
    assert data["config"] and data["metrics"] and data["last"]["step"] == 3
    assert data["torch"] == torch.__version__
