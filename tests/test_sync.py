"""Generated files stay in sync with their sources, and chapters are committed executed."""

import shutil
import subprocess
import sys

import pytest

import nbtools

ROOT = nbtools.ROOT


def test_nbdev_export_changes_nothing(tmp_path):
    """`make export` on a copy of the repository must leave src/ byte-identical."""
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "tools", tmp_path / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "notebooks").mkdir()
    for chapter in nbtools.chapter_paths():
        shutil.copy(chapter, tmp_path / "notebooks" / chapter.name)
    subprocess.run([sys.executable, "export.py"], cwd=tmp_path / "tools", check=True, capture_output=True)
    before = {p.relative_to(ROOT / "src"): p.read_bytes() for p in (ROOT / "src").rglob("*.py")}
    after = {p.relative_to(tmp_path / "src"): p.read_bytes() for p in (tmp_path / "src").rglob("*.py")}
    changed = sorted(str(p) for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"nbdev export would change {changed}: run `make export` and commit"


def test_exported_modules_have_no_exercise_markers():
    for path in (ROOT / "src" / "scratchformer").glob("*.py"):
        assert "### BEGIN SOLUTION" not in path.read_text(), path.name


def test_learner_notebooks_are_up_to_date():
    result = subprocess.run([sys.executable, "make_exercises.py", "--check"], cwd=ROOT / "tools",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("chapter", nbtools.chapter_paths(), ids=lambda p: p.stem)
def test_chapter_is_committed_executed_top_to_bottom(chapter):
    """Colab and the book show the committed outputs: every code cell ran, in order, in one
    kernel, without errors, and the metadata names the kernel python3."""
    nb = nbtools.read(chapter)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"{chapter.name} is not committed executed top to bottom: run `make outputs`"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert nb.metadata.kernelspec.name == "python3"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "no figure"


@pytest.mark.parametrize("chapter", nbtools.chapter_paths(), ids=lambda p: p.stem)
def test_chapter_structure(chapter):
    """One notebook exports to one module; it opens with a title and a summary line."""
    nb = nbtools.read(chapter)
    exports = [c.source for c in nb.cells if c.cell_type == "code" and "#| default_exp" in c.source]
    assert len(exports) == 1
    module = exports[0].split("#| default_exp", 1)[1].split()[0]
    assert (ROOT / "src" / "scratchformer" / f"{module}.py").exists()
    title = nb.cells[0].source
    assert title.startswith(f"# {int(chapter.name[:2])}. ") and "\n> " in title
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in ("**What you will build.**", "## Summary", "## Exercises"):
        assert heading in markdown, heading
