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
def test_shipped_learner_notebook_fails_only_its_check_cells(chapter):
    """Run the learner notebook as a learner would, top to bottom: every check cell says 'not
    attempted' and says the cells below use the package's reference; every other cell runs."""
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
            printed = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            assert re.search(r"Exercise \d+\.\d+ not solved yet: the cells below use", printed), printed
            assert "Traceback" not in "".join(errors[0].traceback), "a traceback into the checker"
        else:
            assert not errors, (cell.source[:300], [(e.ename, e.evalue) for e in errors])
    assert checked == len(solution_cells(nbtools.read(chapter)))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_solutions_sit_inside_a_function(chapter):
    """A stub at the top level of a cell would fail the exercise cell itself and leave its names
    undefined; inside a function it raises only when called, i.e. in the check."""
    for cell in solution_cells(nbtools.read(chapter)):
        for line in cell.source.splitlines():
            if line.strip() == make_exercises.BEGIN:
                assert line.startswith((" ", "\t")), f"top-level solution block in:\n{cell.source[:300]}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_each_check_cell_names_its_announced_exercise(chapter):
    from scratchformer.checks import REGISTRY

    nb = nbtools.read(chapter)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.source.startswith("checks."):
            name = re.match(r"checks\.(\w+)\(", cell.source).group(1)
            assert name in REGISTRY, f"checks.{name} is not decorated with @exercise"
            assert REGISTRY[name][0] == make_exercises.exercise_number(nb, index), name


# Answers that stubs used to give away in their docstrings; no learner notebook may contain them.
KNOWN_ANSWERS = [
    "j <= i + (S - T)", "4·D²", "4 * D * D", "4*D*D", "j < lengths[b]", "+ 4·D",
    "/ sqrt(var + eps)", "(x - mean) /", "(k - 1) * d", "sum((k - 1)",
]


def _code_lines(text: str) -> set[str]:
    """Significant code lines of a solution: comments and whitespace removed, long enough to be
    an answer rather than a `return out`."""
    lines = set()
    for line in text.splitlines():
        code = re.sub(r"\s+", " ", line.split("  #")[0]).strip()
        if len(code) >= 20 and not code.startswith(("#", "return (", '"""')):
            lines.add(code)
    return lines


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_stubs_state_the_contract_never_the_answer(chapter):
    learner = nbtools.read(nbtools.EXERCISES / chapter.name)
    learner_code = "\n".join(c.source for c in learner.cells if c.cell_type == "code")
    flat = re.sub(r"\s+", " ", learner_code)
    leaked = [a for a in KNOWN_ANSWERS if a in learner_code]
    for cell in solution_cells(nbtools.read(chapter)):
        for body in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source, re.S):
            leaked += [line for line in _code_lines(body) if line in flat]
    assert not leaked, f"the learner notebook gives the answer away: {leaked}"


def test_the_answer_leak_check_bites():
    assert _code_lines("    scores = q @ k.transpose(-2, -1) / d  # (B, T, S)\n    return out") == {
        "scores = q @ k.transpose(-2, -1) / d"}


def test_learner_notebooks_define_no_section_labels():
    """The book renders the chapters and the learner notebooks; a MyST label ``(name)=`` defined
    in both would be a duplicate (a build warning, an error under -W). Chapter 14 defines one."""
    labelled = [p for p in CHAPTERS if any(make_exercises.LABEL.match(line)
                                           for c in nbtools.read(p).cells
                                           if c.cell_type == "markdown"
                                           for line in c.source.splitlines())]
    assert labelled, "no chapter defines a label: this test checks nothing"
    for chapter in labelled:
        learner = make_exercises.learner_version(chapter)
        lines = [line for c in learner.cells if c.cell_type == "markdown"
                 for line in c.source.splitlines()]
        assert not any(make_exercises.LABEL.match(line) for line in lines), chapter.name
