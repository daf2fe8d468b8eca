"""Rules every page of the book keeps: it stands alone (no internal references), and every code
line it shows fits the code column (80 characters at 1280 px)."""

from __future__ import annotations

import re

import pytest

import nbtools

ROOT = nbtools.ROOT
# Spelled in pieces so that this file does not match itself.
INTERNAL = re.compile("|".join(["PIT" "FALLS", r"\bDES" r"IGN\b", "shar" "ed/"]))
WIDTH = 80
HIDDEN = {"remove-cell", "remove-input"}


def _book_files():
    yield from sorted(ROOT.glob("notebooks/**/*.ipynb"))
    yield from sorted(ROOT.glob("book/**/*.md"))
    yield from sorted(ROOT.glob("src/scratchformer/**/*.py"))
    yield from sorted(ROOT.glob("tests/*.py"))
    yield ROOT / "README.md"


@pytest.mark.parametrize("path", list(_book_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_internal_references(path):
    """The book, the package and its tests cite public sources, never internal notes."""
    text = path.read_text(encoding="utf-8")
    hits = [m.group(0) for m in INTERNAL.finditer(text)]
    assert not hits, f"{path.name} mentions {sorted(set(hits))}: cite the public source instead"


def test_the_internal_reference_check_bites():
    assert INTERNAL.search("see PIT" "FALLS 1.4") and INTERNAL.search("as DES" "IGN §5 says")
    assert not INTERNAL.search("a careful design of the mask")


def _shown_code(nb):
    """(cell index, line number, line) for every code line the rendered page shows."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            if HIDDEN & set(cell.metadata.get("tags", [])):
                continue
            lines = [line for line in cell.source.splitlines() if not line.startswith("#|")]
        else:
            # fenced code blocks (```python, ```bash, ```text, ```), not ```{directive}
            fenced = re.findall(r"^```(?!\{)[^\n]*\n(.*?)^```", cell.source, re.S | re.M)
            lines = [line for block in fenced for line in block.splitlines()]
        for number, line in enumerate(lines, 1):
            yield index, number, line


NOTEBOOKS = sorted(ROOT.glob("notebooks/**/*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shown_code_line_fits_the_page(path):
    wide = [f"cell {i} line {n} ({len(line)} chars): {line.strip()[:60]}"
            for i, n, line in _shown_code(nbtools.read(path)) if len(line) > WIDTH]
    assert not wide, f"{len(wide)} code lines wider than {WIDTH} characters:\n" + "\n".join(wide[:20])


@pytest.mark.parametrize("path", sorted(ROOT.glob("book/*.md")), ids=lambda p: p.name)
def test_every_code_line_of_the_prose_pages_fits(path):
    import nbformat
    page = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(path.read_text())])
    wide = [line for _, _, line in _shown_code(page) if len(line) > WIDTH]
    assert not wide, wide


def test_the_width_check_bites():
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1  # " + "y" * 80),
                                         nbformat.v4.new_markdown_cell("```python\n" + "z" * 81 + "\n```")])
    assert [n for _, n, line in _shown_code(nb) if len(line) > WIDTH] == [1, 1]
