"""Put a chapter's solutions back into its learner notebook (what a learner who solved every
exercise would have)."""

import re

STUB = r"{indent}# YOUR CODE HERE \(Exercise [\d.]+\)\n{indent}raise NotImplementedError\([^\n]*\)"
SOLUTION = re.compile(r"\n([ \t]*)### BEGIN SOLUTION\n(.*?)\n[ \t]*### END SOLUTION", re.S)


def without_directives(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#|")).strip("\n")


def fill_in(learner_source: str, chapter_source: str) -> str:
    """Replace each stub in ``learner_source`` by the matching solution of ``chapter_source``."""
    restored = learner_source
    for indent, body in SOLUTION.findall(chapter_source):
        restored, count = re.subn(STUB.format(indent=indent), lambda _, body=body: body, restored, count=1)
        if count != 1:
            raise ValueError(f"no stub left for the solution:\n{body}")
    return restored


def solved_learner_notebook(learner, chapter):
    """A copy of the learner notebook with every stub filled with the chapter's solution."""
    source_cells = [c for c in chapter.cells if c.cell_type == "code" and without_directives(c.source)]
    learner_cells = [c for c in learner.cells if c.cell_type == "code"]
    if len(source_cells) != len(learner_cells):
        raise ValueError("learner notebook and chapter have different code cells")
    for original, stubbed in zip(source_cells, learner_cells):
        stubbed.source = fill_in(stubbed.source, original.source)
    return learner


def solution_blocks(chapter) -> list[str]:
    """The solution blocks of a chapter notebook, in order."""
    code = "\n".join(c.source for c in chapter.cells if c.cell_type == "code")
    return [body for _, body in SOLUTION.findall(code)]
