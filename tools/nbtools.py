"""Small helpers shared by the maintainer tools: read/write notebooks in one canonical form."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "notebooks"
EXERCISES = CHAPTERS / "exercises"

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
LANGUAGE_INFO = {"name": "python"}


def chapter_paths() -> list[Path]:
    """The chapter notebooks, ``notebooks/NN_slug.ipynb``, in order."""
    return sorted(p for p in CHAPTERS.glob("[0-9][0-9]_*.ipynb"))


def normalise(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Canonical metadata: kernel ``python3`` (nbval and Jupyter Book start the kernel named
    here), no per-machine metadata, only ``tags`` kept on cells."""
    nb.metadata = nbformat.from_dict({"kernelspec": KERNELSPEC, "language_info": LANGUAGE_INFO})
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags")
        cell.metadata = nbformat.from_dict({"tags": tags} if tags else {})
    nb.nbformat, nb.nbformat_minor = 4, 5
    _ensure_ids(nb)
    return nb


def _ensure_ids(nb: nbformat.NotebookNode) -> None:
    """Give every cell a stable id. nbdev names exported cells by id, so a notebook without ids
    would export differently on every run; ids, once written, are kept."""
    seen = set()
    for index, cell in enumerate(nb.cells):
        cell_id = cell.get("id")
        if not cell_id or cell_id in seen:
            digest = hashlib.sha1(f"{index}:{cell.source}".encode()).hexdigest()
            cell_id = digest[:8]
            while cell_id in seen:
                cell_id = hashlib.sha1(cell_id.encode()).hexdigest()[:8]
            cell["id"] = cell_id
        seen.add(cell_id)


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    """Write in canonical form (see :func:`normalise`), so regenerating a file is byte-stable."""
    text = nbformat.writes(normalise(nb), version=4)
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)
