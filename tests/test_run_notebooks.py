"""tools/run_notebooks.py and `make book` execute with one thread, so that the stored outputs,
the built book and the numbers the prose quotes agree (a training run's numbers depend on the
thread count: chapter 10's checks of its own claims fail at two threads)."""

import os
import sys

import nbformat

import nbtools

sys.path.insert(0, str(nbtools.ROOT / "tools"))
import run_notebooks  # noqa: E402


def test_outputs_are_saved_with_one_thread_whatever_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    path = tmp_path / "threads.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os, torch\nprint(os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")]
    nbtools.write(nb, path)
    run_notebooks.execute(path)
    out = nbtools.read(path).cells[0].outputs[0]["text"]
    assert out.split() == ["1", "1"]
    assert os.environ["OMP_NUM_THREADS"] == "2"          # the caller's environment is restored


def test_make_book_executes_with_one_thread():
    makefile = (nbtools.ROOT / "Makefile").read_text()
    recipe = makefile.split("\nbook:", 1)[1].split("\n\n", 1)[0]
    assert "OMP_NUM_THREADS=1" in recipe and "jupyter-book build" in recipe
