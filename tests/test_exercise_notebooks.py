"""The learner notebooks: generated from the chapters, every stub is 'not attempted', and putting
the solutions back gives the chapter again."""

import copy
import re

import pytest
from nbclient import NotebookClient

import make_exercises
import nbtools
import solutions

CHAPTERS = nbtools.chapter_paths()
IDS = [p.stem for p in CHAPTERS]


def solution_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and make_exercises.BEGIN in c.source]


def test_there_are_chapters():
    assert len(CHAPTERS) >= 2


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_chapter_has_two_to_four_checked_exercises_with_difficulty_and_time(chapter):
    nb = nbtools.read(chapter)
    cells = solution_cells(nb)
    assert 2 <= len(cells) <= 4, f"{chapter.name}: {len(cells)} exercises"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for index, cell in enumerate(nb.cells):
        if cell in cells:
            number = make_exercises.exercise_number(nb, index)
            assert re.search(rf"\*\*Exercise {re.escape(number)} \(★+, \d+ min\)\.\*\*", markdown), number
            assert "hide-input" in cell.metadata.get("tags", []), f"solution {number} is not collapsed in the book"
            following = nb.cells[index + 1].source
            assert following.startswith("checks."), f"exercise {number} is not followed by its check"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_putting_the_solutions_back_gives_the_chapter(chapter):
    """The stubs replace exactly the solution blocks: nothing else of the chapter is lost."""
    original = nbtools.read(chapter)
    learner = nbtools.read(nbtools.EXERCISES / chapter.name)
    solved = solutions.solved_learner_notebook(copy.deepcopy(learner), original)
    source = [c for c in original.cells if c.cell_type == "code" and solutions.without_directives(c.source)]
    solved_code = [c for c in solved.cells if c.cell_type == "code"]
    for original_cell, solved_cell in zip(source, solved_code):
        expected = re.sub(r"\n[ \t]*### (BEGIN|END) SOLUTION", "", solutions.without_directives(original_cell.source))
        assert solved_cell.source == expected
    assert all(c.outputs == [] and c.execution_count is None for c in learner.cells if c.cell_type == "code")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_shipped_learner_notebook_reports_every_exercise_not_attempted(chapter):
    """Run the learner notebook as a learner would, top to bottom: every check cell says 'not
    attempted'; any other failing cell fails only because an earlier stub is unsolved."""
    nb = nbtools.read(nbtools.EXERCISES / chapter.name)
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(chapter.parent)}}).execute()
    checked = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if cell.source.startswith("checks."):
            checked += 1
            assert [e.ename for e in errors] == ["ExerciseNotAttempted"], cell.source
        else:
            assert all(e.ename in ("NotImplementedError", "NameError") for e in errors), (cell.source, errors)
    assert checked == len(solution_cells(nbtools.read(chapter)))
