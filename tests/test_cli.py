"""`scratchformer check`: one line per exercise, fails on the shipped learner notebook, passes
once it is solved, reports a wrong answer with its hint, and gives clear errors."""

import re
import subprocess
import sys

import pytest

import nbtools
import solutions

CHAPTER = nbtools.chapter_paths()[1]          # chapter 02: quick, several exercises


def run_check(*args, cwd):
    return subprocess.run([sys.executable, "-m", "scratchformer.cli", "check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def copy_learner(tmp_path, nb):
    (tmp_path / "notebooks" / "exercises").mkdir(parents=True)
    nbtools.write(nb, tmp_path / "notebooks" / "exercises" / CHAPTER.name)


def test_check_fails_on_the_shipped_learner_notebook_with_one_line_per_exercise():
    result = run_check(CHAPTER.name[:2], cwd=nbtools.ROOT)
    assert result.returncode == 1
    lines = re.findall(r"^  ⏳ Exercise (\d+\.\d+) \(\w+\): not attempted$", result.stdout, re.M)
    n = len(solutions.solution_blocks(nbtools.read(CHAPTER)))
    assert len(lines) == n >= 2, result.stdout
    assert f"0 of {n} exercises passed, {n} not attempted, 0 wrong" in result.stdout
    assert "Traceback" not in result.stdout


def test_check_passes_once_the_solutions_are_filled_in(tmp_path):
    learner = nbtools.read(nbtools.EXERCISES / CHAPTER.name)
    copy_learner(tmp_path, solutions.solved_learner_notebook(learner, nbtools.read(CHAPTER)))
    result = run_check(CHAPTER.name[:2], "--root", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "every exercise passes" in result.stdout


def test_a_wrong_answer_is_reported_with_its_hint_and_only_it_fails(tmp_path):
    learner = nbtools.read(nbtools.EXERCISES / CHAPTER.name)
    solved = solutions.solved_learner_notebook(learner, nbtools.read(CHAPTER))
    first = next(c for c in solved.cells if c.cell_type == "code" and "def padding_mask" in c.source)
    solution = "positions[None, :] < lengths[:, None]"
    assert solution in first.source, "the chapter's padding_mask changed: update this test"
    first.source = first.source.replace(solution, "positions[None, :] <= lengths[:, None]")
    copy_learner(tmp_path, solved)
    result = run_check(CHAPTER.name[:2], "--root", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert re.search(r"❌ Exercise 2\.1 \(padding_mask\): wrong — .*off by one", result.stdout), result.stdout
    assert "other failing cells" not in result.stdout


def test_check_without_a_chapter_prints_a_progress_table(tmp_path):
    learner = nbtools.read(nbtools.EXERCISES / CHAPTER.name)
    copy_learner(tmp_path, solutions.solved_learner_notebook(learner, nbtools.read(CHAPTER)))
    result = run_check("--root", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert re.search(rf"{CHAPTER.stem}\s+(\d+)\s+\1\s+0\s+0\s+0", result.stdout), result.stdout
    assert "(100% done)" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["99"], "no learner notebook for chapter 99"),
    (["x1"], "chapter must be a number"),
])
def test_bad_chapter_gives_a_clear_error(args, message):
    result = run_check(*args, cwd=nbtools.ROOT)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_outside_the_repository_gives_a_clear_error(tmp_path):
    result = run_check("02", cwd=tmp_path)
    assert result.returncode == 2
    assert "Run this command from the root of the book's repository" in result.stderr
