"""`make exercises`: write the learner notebooks ``notebooks/exercises/NN_slug.ipynb``.

For every chapter notebook, the learner version is the same chapter with

* each block between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` replaced by a stub that
  raises ``NotImplementedError`` (at the block's indentation), so the checker in the next cell
  reports *not attempted* until the learner writes code;
* outputs and execution counts cleared, and nbdev directives (``#| ...``) removed;
* the ``hide-input`` tag removed from exercise cells, so the stub is visible in the book;
* MyST target labels (a line ``(name)=``) removed from markdown cells: the book renders both
  versions, and a label may be defined once; a ``{ref}`` to it leads to the chapter;
* a title that says it is the exercise version, and a short note on how to check it.

``--check`` writes nothing and exits 1 if a committed learner notebook differs from what would
be generated (CI and tests/test_sync.py use it).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

import nbtools

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
DIRECTIVE = re.compile(r"^#\|.*$")
LABEL = re.compile(r"^\([\w.:-]+\)=\s*$")
STUB = 'raise NotImplementedError("Exercise {number}: write your code here")'


def exercise_number(nb: nbformat.NotebookNode, cell_index: int) -> str:
    """The number of the exercise a solution belongs to: the last 'Exercise N.M' announced in a
    markdown cell above it (so the stub can say which exercise it is)."""
    for cell in reversed(nb.cells[:cell_index]):
        if cell.cell_type == "markdown":
            found = re.findall(r"Exercise (\d+\.\d+)", cell.source)
            if found:
                return found[-1]
    return "?"


def stub_solutions(source: str, number: str) -> str:
    """Replace every solution block in ``source`` by the stub; raise if markers are unbalanced."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"nested {BEGIN} in exercise {number}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# YOUR CODE HERE (Exercise {number})")
            out.append(indent + STUB.format(number=number))
        elif stripped == END:
            if not inside:
                raise ValueError(f"{END} without {BEGIN} in exercise {number}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN} without {END} in exercise {number}")
    return "\n".join(out)


def learner_version(chapter: Path) -> nbformat.NotebookNode:
    nb = nbtools.read(chapter)
    learner = copy.deepcopy(nb)
    cells = []
    for index, cell in enumerate(learner.cells):
        if cell.cell_type == "code":
            lines = [line for line in cell.source.splitlines() if not DIRECTIVE.match(line)]
            source = "\n".join(lines).strip("\n")
            if not source:  # a cell that held only nbdev directives (e.g. default_exp)
                continue
            if BEGIN in source:
                source = stub_solutions(source, exercise_number(nb, index))
                tags = [t for t in cell.metadata.get("tags", []) if t != "hide-input"]
                cell.metadata["tags"] = tags
            cell.source = source
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            lines = [line for line in cell.source.splitlines() if not LABEL.match(line)]
            cell.source = "\n".join(lines).strip("\n")
        cells.append(cell)
    title = cells[0]
    first, _, rest = title.source.partition("\n")
    title.source = (
        f"{first.replace('# ', '# Exercises: ', 1)}\n{rest}\n\n"
        "> **Learner version.** Every exercise in this chapter is a stub marked "
        "`# YOUR CODE HERE`. Replace the `raise NotImplementedError` line with your code and run "
        "the check in the next cell; it says *passed*, *not attempted*, or *wrong* with a hint. "
        "Once an exercise passes, later cells use your code; until then they use the package's "
        "own version (the check says so in one line), so you can do the exercises in any order. "
        f"Check the whole notebook with `scratchformer check {chapter.name[:2]}`."
    )
    learner.cells = cells
    return learner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if out of date")
    args = parser.parse_args()
    nbtools.EXERCISES.mkdir(exist_ok=True)
    stale = []
    expected = set()
    for chapter in nbtools.chapter_paths():
        target = nbtools.EXERCISES / chapter.name
        expected.add(target.name)
        text = nbformat.writes(nbtools.normalise(learner_version(chapter)), version=4) + "\n"
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != text:
            stale.append(target)
            if not args.check:
                target.write_text(text, encoding="utf-8")
    orphans = [p for p in nbtools.EXERCISES.glob("*.ipynb") if p.name not in expected]
    if args.check:
        for path in stale + orphans:
            print(f"out of date: {path.relative_to(nbtools.ROOT)} (run `make exercises`)")
        return 1 if stale or orphans else 0
    for path in orphans:
        path.unlink()
    for path in stale:
        print(f"wrote {path.relative_to(nbtools.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
