"""`scratchformer check NN`: fails on the shipped learner notebook, passes once it is solved."""

import subprocess
import sys

import nbtools
import solutions

CHAPTER = nbtools.chapter_paths()[-1]


def run_check(*args, cwd):
    return subprocess.run([sys.executable, "-m", "scratchformer.cli", "check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_check_fails_on_the_shipped_learner_notebook():
    result = run_check(CHAPTER.name[:2], cwd=nbtools.ROOT)
    assert result.returncode != 0
    assert "not attempted" in result.stdout
    assert "some cells failed" in result.stdout


def test_check_passes_once_the_solutions_are_filled_in(tmp_path):
    learner = nbtools.read(nbtools.EXERCISES / CHAPTER.name)
    solved = solutions.solved_learner_notebook(learner, nbtools.read(CHAPTER))
    (tmp_path / "notebooks" / "exercises").mkdir(parents=True)
    nbtools.write(solved, tmp_path / "notebooks" / "exercises" / CHAPTER.name)
    result = run_check(CHAPTER.name[:2], "--root", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "every exercise passes" in result.stdout


def test_unknown_chapter_gives_a_clear_error():
    result = run_check("99", cwd=nbtools.ROOT)
    assert result.returncode == 2
    assert "no learner notebook for chapter 99" in result.stderr and "available: 01" in result.stderr
    assert "Traceback" not in result.stderr


def test_outside_the_repository_gives_a_clear_error(tmp_path):
    result = run_check("02", cwd=tmp_path)
    assert result.returncode == 2
    assert "Run this command from the root of the book's repository" in result.stderr
