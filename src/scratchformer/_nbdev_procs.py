"""nbdev export processor: drop the exercise markers from exported code.

Configured in pyproject.toml (``[tool.nbdev] export_procs``), so a plain ``nbdev-export`` and
``make export`` write the same modules. The ``### BEGIN SOLUTION`` / ``### END SOLUTION`` lines
delimit exercises in the chapter notebooks; the code between them stays.
"""

import re

MARKER = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.MULTILINE)


def strip_solution_markers(cell) -> None:
    """Remove the marker lines from a code cell's source (in place)."""
    if cell.get("cell_type") == "code" and "### " in cell.source:
        cell.source = MARKER.sub("", cell.source).rstrip()
